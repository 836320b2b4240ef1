"""Long traces on SmolLM2 (CPU), all 270 heads: every part of the product at 2k–32k tokens.

For each length T (a prompt of T - new tokens, then ``--new-tokens`` generated), in fresh
processes so peaks do not mix:

  * capture on SDPA / plain SDPA ``generate`` (time ratio, goal <= 1.20 at 8192), and the extra
    peak RSS each adds above the loaded model (goal: capture <= 2.5 GB at 8192);
  * ``head_scores`` over all 270 heads (goal <= 120 s at 8192), and its extra peak RSS;
  * the widget: first payload bytes and build time (goals <= 8 MB, <= 2 s), the kernel's answer
    for a never-shown head and for a 512-token zoom region (goal <= 1 s each);
  * a snapshot: its size and build time, and with ``--paint N`` its first paint in Chromium
    (bench_snapshot.py's harness, N loads from file://).

Prints numbers measured in this one run (machines are noisy: nothing is asserted). SmolLM2 is
trained to 8192 positions; 32768 runs past it (the attention is still captured exactly, the text
is not meaningful).

Usage: python benchmarks/bench_long.py [--tokens 2048,8192] [--new-tokens 32]
                                       [--parts capture,analysis,widget,snapshot] [--paint 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procmem import reset_peak, rss_kib  # benchmarks/procmem.py, beside this script

TEXT = ("Attention maps show which tokens a model looks at when it writes each new token. When the "
        "model fails, they help tell apart a fact it never looked at from one it saw and ignored. "
        "The capital of France is Paris, and the river that runs through it is the Seine. ")


def _timed(fn):
    base = reset_peak()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    return result, seconds, (rss_kib("VmHWM") - base) / 1024


def child(mode: str, n_tokens: int, n_new: int, parts: list[str], snapshot_out: str | None) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    import torch

    import attn_widget as aw

    torch.set_num_threads(os.cpu_count() or 1)
    model, tok = aw.load_model("smollm2", attn_implementation="sdpa")
    ids = tok(TEXT * (n_tokens // 20 + 2), return_tensors="pt")["input_ids"][:, :n_tokens - n_new]
    gen = {"max_new_tokens": n_new, "min_new_tokens": n_new, "do_sample": False}
    with torch.no_grad():  # warm up kernels and the allocator
        model.generate(ids[:, :16], max_new_tokens=2, do_sample=False, pad_token_id=tok.eos_token_id)
    out: dict = {"mode": mode, "tokens": n_tokens}
    if mode == "sdpa":
        def plain():
            with torch.no_grad():
                return model.generate(ids, pad_token_id=tok.eos_token_id, temperature=None, top_p=None,
                                      top_k=None, **gen)
        _, out["seconds"], out["extra_mib"] = _timed(plain)
        print(json.dumps(out))
        return
    trace, out["seconds"], out["extra_mib"] = _timed(
        lambda: aw.capture(model, tok, ids[0].tolist(), progress=False, **gen))
    out["form"], out["trace_mib"] = trace.block().form, trace.block().nbytes / 2**20
    if "analysis" in parts:
        _, out["head_scores_s"], out["head_scores_mib"] = _timed(lambda: aw.analysis.head_scores(trace))
    if "widget" in parts:
        out.update(_widget(aw, trace))
    if "snapshot" in parts:
        with tempfile.TemporaryDirectory() as d:
            path = snapshot_out or os.path.join(d, "long.html")
            snap, out["snapshot_s"], out["snapshot_mib"] = _timed(lambda: aw.save_snapshot(trace, path))
            out["snapshot_bytes"] = os.path.getsize(path)
            out["snapshot_note"] = (f"heads pooled 1 px = {snap.pool_side}×{snap.pool_side} tokens, "
                                    f"{len(snap.heads)} heads, step rows of {len(snap.step_rows)} "
                                    f"heads/means at full resolution, budget {snap.budget_mb} MB"
                                    if snap.pool_side else f"{len(snap.heads)} heads at full resolution")
    print(json.dumps(out))


def _widget(aw, trace) -> dict:
    """First payload and two fetches through the widget's own protocol (the kernel side of
    what the browser asks for)."""
    from attn_widget.encoding import decode_payload
    from attn_widget.protocol import FOREGROUND

    w, seconds, _ = _timed(lambda: aw.AttentionWidget(trace))
    vd = w.view_data
    header, _ = decode_payload(vd.payload)
    res = {"payload_bytes": len(vd.payload), "payload_s": seconds, "pool_side": header.get("pool_side") or 1}
    layer, head = trace.layers[-1], trace.heads[-1]  # not the first view's head
    side = header.get("pool_side") or 1  # the resolution the view's pooled heads are asked at
    t = trace.n_tokens
    keys = {"head_s": f"pool/{layer}/{head}/{side}",
            "region_s": f"region/{layer}/{head}/{max(0, t - 512)}/{t}/{max(0, t - 512)}/{t}"}
    for name, key in keys.items():
        # As the widget answers a fetch a view waits for: counted in FOREGROUND, so the grid
        # being computed meanwhile on its worker thread starts nothing new until it is answered.
        t0 = time.perf_counter()
        FOREGROUND.begin()
        try:
            reply, _ = vd.answer({"type": "fetch", "key": key, "source": 0, "trace_id": vd.trace_id, "id": 1})
        finally:
            FOREGROUND.end()
        res[name] = time.perf_counter() - t0
        if reply.get("type") != "data":
            res[name + "_error"] = reply.get("message")
    w.close()
    return res


def run_child(mode: str, n_tokens: int, n_new: int, parts: list[str],
              snapshot_out: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--tokens", str(n_tokens), "--new-tokens", str(n_new),
           "--parts", ",".join(parts)] + (["--snapshot-out", snapshot_out] if snapshot_out else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{mode} at {n_tokens} tokens failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="2048,8192", help="comma-separated lengths (32768 is long)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--parts", default="capture,analysis,widget,snapshot")
    ap.add_argument("--paint", type=int, default=0, metavar="LOADS",
                    help="open each snapshot LOADS times in Chromium and time its first paint")
    ap.add_argument("--child")
    ap.add_argument("--snapshot-out")
    a = ap.parse_args()
    parts = a.parts.split(",")
    if a.child:
        child(a.child, int(a.tokens), a.new_tokens, parts, a.snapshot_out)
        return
    print(f"SmolLM2-135M on SDPA, all 30 layers × 9 heads, {a.new_tokens} generated tokens, CPU "
          f"({os.cpu_count()} cores); each line from fresh processes")
    for n in (int(x) for x in a.tokens.split(",")):
        plain = run_child("sdpa", n, a.new_tokens, parts)
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "long.html") if a.paint and "snapshot" in parts else None
            cap = run_child("capture", n, a.new_tokens, parts, out)
            if out:
                from bench_snapshot import first_paint_ms  # beside this script

                cap["paint_ms"] = first_paint_ms(Path(out), a.paint)
        print(f"T = {n}: SDPA generate {plain['seconds']:.1f} s (+{plain['extra_mib']:.0f} MiB), capture "
              f"{cap['seconds']:.1f} s (+{cap['extra_mib']:.0f} MiB, trace {cap['trace_mib']:.0f} MiB "
              f"as {cap['form']}); capture / generate = {cap['seconds'] / plain['seconds']:.2f} "
              f"(goal <= 1.20 at 8192); capture's extra peak {cap['extra_mib'] / 1024:.2f} GiB "
              f"(goal <= 2.5 GB at 8192)")
        if "head_scores_s" in cap:
            print(f"  head_scores, 270 heads: {cap['head_scores_s']:.1f} s, "
                  f"+{cap['head_scores_mib']:.0f} MiB (goal <= 120 s at 8192)")
        if "payload_bytes" in cap:
            print(f"  widget: first payload {cap['payload_bytes'] / 2**20:.2f} MiB in "
                  f"{cap['payload_s']:.2f} s (goals <= 8 MB, <= 2 s); a never-shown head pooled at "
                  f"{cap['pool_side']}×{cap['pool_side']} tokens a pixel "
                  f"{cap['head_s']:.2f} s, a 512-token zoom region {cap['region_s']:.2f} s "
                  "(kernel side; goal <= 1 s each)"
                  + "".join(f"; {k}: {v}" for k, v in cap.items() if k.endswith("_error")))
        if "snapshot_bytes" in cap:
            print(f"  snapshot: {cap['snapshot_bytes'] / 2**20:.1f} MiB written in {cap['snapshot_s']:.1f} s "
                  f"(+{cap['snapshot_mib']:.0f} MiB); {cap['snapshot_note']}")
        if "paint_ms" in cap:
            ms = cap["paint_ms"]
            print(f"  snapshot opened from file:// → first painted heatmap, Chromium: median "
                  f"{statistics.median(ms):.0f} ms (min {min(ms):.0f}, max {max(ms):.0f}, {len(ms)} loads)")


if __name__ == "__main__":
    main()
