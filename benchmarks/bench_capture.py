"""Capture cost on SmolLM2 (CPU): time and extra peak memory against plain Hugging Face.

Prints ratios measured in this one run (machines are noisy; nothing here is asserted):
  * capture time on the model's SDPA kernel / plain SDPA ``generate`` (target <= 1.10), and
    capture of an eager model / plain eager ``generate``;
  * peak memory capture adds on top of plain SDPA ``generate``, divided by what HF
    ``generate(output_attentions=True, return_dict_in_generate=True)`` adds on top of plain eager
    ``generate`` (target <= 0.25); each measured in a fresh process with the peak reset after
    loading;
  * the longest prompt that captures all 270 heads within 24 GiB, from the memory estimate, and
    one real capture at 4096 prompt tokens on SDPA (``--long``).

Usage: python benchmarks/bench_capture.py [--prompt-tokens 512] [--new-tokens 32] [--long]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from procmem import reset_peak, rss_kib  # benchmarks/procmem.py, beside this script

TEXT = ("Attention maps show which tokens a model looks at when it writes each new token. When the "
        "model fails, they help tell apart a fact it never looked at from one it saw and ignored. "
        "The capital of France is Paris, and the river that runs through it is the Seine. ")


def prompt_of(tokenizer, n: int) -> str:
    ids = tokenizer(TEXT * (n // 20 + 2))["input_ids"][:n]
    return tokenizer.decode(ids)


def child(mode: str, n_prompt: int, n_new: int) -> None:
    """Run one operation in this fresh process and print its extra peak RSS as JSON."""
    import torch

    import attn_widget as aw

    torch.set_num_threads(os.cpu_count() or 1)
    model, tok = aw.load_model("smollm2")
    if mode in ("sdpa", "capture"):
        model.set_attn_implementation("sdpa")
    prompt = prompt_of(tok, n_prompt)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    gen = {"max_new_tokens": n_new, "min_new_tokens": n_new, "do_sample": False,
           "temperature": None, "top_p": None, "top_k": None, "pad_token_id": tok.eos_token_id}
    with torch.no_grad():  # warm up allocator and kernels on a short run
        model.generate(ids[:, :16], max_new_tokens=2, do_sample=False, pad_token_id=tok.eos_token_id)
    base = reset_peak()
    t0 = time.perf_counter()
    if mode == "capture":
        result = aw.capture(model, tok, prompt, **{k: v for k, v in gen.items() if k not in (
            "temperature", "top_p", "top_k", "pad_token_id")})
        T = len(result)
    elif mode == "hf_attentions":
        with torch.no_grad():
            result = model.generate(ids, output_attentions=True, return_dict_in_generate=True, **gen)
        T = result.sequences.shape[1]
    elif mode in ("eager", "sdpa"):
        with torch.no_grad():
            result = model.generate(ids, **gen)
        T = result.shape[1]
    else:
        raise ValueError(mode)
    seconds = time.perf_counter() - t0
    peak = rss_kib("VmHWM")
    print(json.dumps({"mode": mode, "extra_mib": (peak - base) / 1024, "seconds": seconds,
                      "tokens": int(T), "prompt": int(ids.shape[1])}))


def measure_memory(mode: str, n_prompt: int, n_new: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--prompt-tokens", str(n_prompt),
                          "--new-tokens", str(n_new)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_time(n_prompt: int, n_new: int, repeats: int) -> dict[str, float]:
    import torch

    import attn_widget as aw

    model, tok = aw.load_model("smollm2")
    sdpa, _ = aw.load_model("smollm2")
    sdpa.set_attn_implementation("sdpa")
    prompt = prompt_of(tok, n_prompt)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    gen = {"max_new_tokens": n_new, "min_new_tokens": n_new, "do_sample": False, "temperature": None,
           "top_p": None, "top_k": None, "pad_token_id": tok.eos_token_id}

    def eager():
        with torch.no_grad():
            model.generate(ids, **gen)

    def sdpa_gen():
        with torch.no_grad():
            sdpa.generate(ids, **gen)

    def cap():
        aw.capture(sdpa, tok, prompt, max_new_tokens=n_new, min_new_tokens=n_new)

    def cap_eager():
        aw.capture(model, tok, prompt, max_new_tokens=n_new, min_new_tokens=n_new)

    runs = {"eager": [], "sdpa": [], "capture": [], "capture_eager": []}
    eager(), sdpa_gen(), cap(), cap_eager()  # warm-up
    for _ in range(repeats):  # interleaved, so drift hits all alike
        for name, fn in (("eager", eager), ("capture", cap), ("sdpa", sdpa_gen),
                         ("capture_eager", cap_eager)):
            t0 = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in runs.items()}


def longest_prompt(budget_bytes: int) -> int:
    from attn_widget.capturing import estimate_bytes

    lo, hi = 1, 1 << 20
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_bytes(30, 9, mid, mid, qk_dims=(64, 3)) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long", action="store_true", help="also capture a 4096-token prompt")
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        child(a.child, a.prompt_tokens, a.new_tokens)
        return
    print(f"SmolLM2-135M, {a.prompt_tokens}-token prompt + {a.new_tokens} new tokens, all 30 layers × 9 "
          f"heads, CPU ({os.cpu_count()} cores)")
    t = measure_time(a.prompt_tokens, a.new_tokens, a.repeats)
    print(f"time (median of {a.repeats}): SDPA generate {t['sdpa']:.2f} s, capture on SDPA "
          f"{t['capture']:.2f} s; eager generate {t['eager']:.2f} s, capture of the eager model "
          f"{t['capture_eager']:.2f} s")
    print(f"  capture / SDPA generate  = {t['capture'] / t['sdpa']:.3f}  (target <= 1.10)")
    print(f"  capture of an eager model / eager generate = {t['capture_eager'] / t['eager']:.3f}")
    mem = {m: measure_memory(m, a.prompt_tokens, a.new_tokens) for m in ("sdpa", "eager", "hf_attentions",
                                                                         "capture")}
    print("extra peak RSS above the loaded model (fresh process each): " + ", ".join(
        f"{m} {v['extra_mib']:.0f} MiB" for m, v in mem.items()))
    added = mem["capture"]["extra_mib"] - mem["sdpa"]["extra_mib"]
    hf_added = mem["hf_attentions"]["extra_mib"] - mem["eager"]["extra_mib"]
    print(f"  added by capture over SDPA generate: {added:.0f} MiB; added by HF output_attentions over "
          f"eager generate: {hf_added:.0f} MiB; ratio = {added / hf_added:.3f}  (target <= 0.25)")
    gib24 = 24 * 2**30
    print(f"longest prompt capturing all 270 heads within 24 GiB (estimate, queries and keys on a fast "
          f"kernel): {longest_prompt(gib24)} tokens (SmolLM2 is trained to 8192)")
    if a.long:
        r = measure_memory("capture", 4096, 0)
        print(f"  measured: 4096-token forward capture of all 270 heads on SDPA: {r['seconds']:.1f} s, "
              f"extra peak RSS {r['extra_mib'] / 1024:.2f} GiB")


if __name__ == "__main__":
    main()
