"""What keeping value norms costs a capture, on SmolLM2 (CPU, SDPA): time and memory with and
without them (``capture(values=False | "norms" | "layer")``).

Prints ratios measured in this one run (machines are noisy; nothing here is asserted):
  * capture time with the norms / without (goal <= 1.05), and with the layer-level Gram too:
    interleaved runs in one process (each mode's once-per-class checks done first), on the wall
    clock and in this process's CPU time (which other jobs on a shared machine disturb less),
    medians and minimums; and the time spent inside the value-norm code itself during those
    runs (:class:`attn_widget.values.ValueRecorder`), as a share of the capture without norms;
  * extra peak memory of a capture with the norms / without (goal <= 1.15), medians over fresh
    processes, each with the peak reset after loading and a warm-up capture;
  * the bytes the trace holds with the norms / without.

Usage: python benchmarks/bench_values.py [--prompt-tokens 512] [--new-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_capture import prompt_of  # noqa: E402
from procmem import reset_peak, rss_kib  # noqa: E402

MODES = {"none": False, "norms": "norms", "layer": "layer"}


def _model():
    import torch

    import attn_widget as aw

    torch.set_num_threads(os.cpu_count() or 1)
    model, tok = aw.load_model("smollm2")
    model.set_attn_implementation("sdpa")
    return model, tok


def child(mode: str, n_prompt: int, n_new: int) -> None:
    """One capture in this fresh process; prints its extra peak RSS and the trace's bytes as JSON."""
    import attn_widget as aw

    model, tok = _model()
    prompt = prompt_of(tok, n_prompt)
    aw.capture(model, tok, prompt_of(tok, 16), max_new_tokens=2, values=MODES[mode])  # warm-up, checks
    base = reset_peak()
    t0 = time.perf_counter()
    trace = aw.capture(model, tok, prompt, max_new_tokens=n_new, min_new_tokens=n_new, values=MODES[mode])
    seconds = time.perf_counter() - t0
    peak = rss_kib("VmHWM")
    print(json.dumps({"mode": mode, "extra_mib": (peak - base) / 1024, "seconds": seconds,
                      "trace_bytes": sum(b.nbytes for b in trace.blocks.values()), "tokens": len(trace),
                      "kept": trace.options["values"]}))


def measure_memory(mode: str, n_prompt: int, n_new: int, repeats: int) -> dict:
    """The child's numbers, ``extra_mib`` the median over ``repeats`` fresh processes."""
    found = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--prompt-tokens", str(n_prompt),
                              "--new-tokens", str(n_new)], capture_output=True, text=True, check=True)
        found.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {**found[0], "extra_mib": statistics.median(f["extra_mib"] for f in found),
            "each_mib": [f["extra_mib"] for f in found]}


def _timed_recorder(spent: dict[str, float]) -> None:
    """Add the wall time spent in the value recorder's work to ``spent[current mode]``."""
    from attn_widget import values

    for name in ("take", "result"):
        method = getattr(values.ValueRecorder, name)

        def timed(self, *args, _method=method):
            t0 = time.perf_counter()
            try:
                return _method(self, *args)
            finally:
                spent[spent["mode"]] += time.perf_counter() - t0

        setattr(values.ValueRecorder, name, timed)


def measure_time(n_prompt: int, n_new: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """``{clock: {mode: [seconds of each run]}}`` for the wall clock, this process's CPU time and
    the wall time inside the value recorder."""
    import attn_widget as aw

    model, tok = _model()
    prompt = prompt_of(tok, n_prompt)
    clocks = ("wall", "cpu", "in value norms")
    runs: dict[str, dict[str, list[float]]] = {c: {m: [] for m in MODES} for c in clocks}
    spent = {"mode": "none", **dict.fromkeys(MODES, 0.0)}
    _timed_recorder(spent)
    for values in MODES.values():  # warm-up, and each mode's once-per-class checks
        aw.capture(model, tok, prompt_of(tok, 16), max_new_tokens=2, values=values)
    for _ in range(repeats):  # interleaved, so drift hits all alike
        for mode, values in MODES.items():
            spent["mode"], spent[mode] = mode, 0.0
            t0, c0 = time.perf_counter(), time.process_time()
            trace = aw.capture(model, tok, prompt, max_new_tokens=n_new, min_new_tokens=n_new, values=values)
            runs["wall"][mode].append(time.perf_counter() - t0)
            runs["cpu"][mode].append(time.process_time() - c0)
            runs["in value norms"][mode].append(spent[mode])
            assert len(trace) == len(tok(prompt)["input_ids"]) + n_new and trace.options["values"] == (
                "none" if values is False else values)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed captures per mode")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per mode for memory")
    parser.add_argument("--child", choices=list(MODES))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.prompt_tokens, args.new_tokens)
        return
    n, new = args.prompt_tokens, args.new_tokens
    print(f"SmolLM2 on SDPA, {n}-token prompt + {new} new tokens, all 30 layers × 9 heads, "
          f"{os.cpu_count()} CPU threads")
    runs = measure_time(n, new, args.repeats)
    for clock in ("wall", "cpu"):
        by_mode = runs[clock]
        each = {mode: ", ".join(f"{x:.2f}" for x in v) for mode, v in by_mode.items()}
        print(f"capture {clock} time of {args.repeats} interleaved runs (s): " + "; ".join(
            f"{mode} {each[mode]}" for mode in MODES))
        for name, stat in (("medians", statistics.median), ("minimums", min)):
            t = {mode: stat(v) for mode, v in by_mode.items()}
            print(f"  {name}: with norms / without {t['norms'] / t['none']:.3f}× (goal <= 1.05); with the "
                  f"layer Gram too / without {t['layer'] / t['none']:.3f}×")
    # the share of each run spent in the value-norm code: other jobs slow both alike
    inside = {mode: statistics.median(runs["in value norms"][mode]) for mode in ("norms", "layer")}
    share = {mode: statistics.median(x / t for x, t in zip(runs["in value norms"][mode], runs["wall"][mode]))
             for mode in ("norms", "layer")}
    print(f"wall time inside the value-norm code, medians: norms {inside['norms']:.3f} s, "
          f"{share['norms']:.1%} of its run (goal <= 5%); layer {inside['layer']:.3f} s, "
          f"{share['layer']:.1%} of its run")
    memory = {mode: measure_memory(mode, n, new, args.processes) for mode in MODES}
    print(f"extra peak memory of one capture (medians of {args.processes} fresh processes): " + ", ".join(
        f"{mode} {m['extra_mib']:.1f} MiB ({', '.join(f'{x:.1f}' for x in m['each_mib'])})"
        for mode, m in memory.items()))
    print(f"  with norms / without: {memory['norms']['extra_mib'] / memory['none']['extra_mib']:.3f}× "
          f"(goal <= 1.15); with the layer Gram too / without: "
          f"{memory['layer']['extra_mib'] / memory['none']['extra_mib']:.3f}×")
    print("trace bytes: " + ", ".join(f"{mode} {m['trace_bytes'] / 2**20:.2f} MiB ({m['kept']})"
                                      for mode, m in memory.items())
          + f"; with norms / without: {memory['norms']['trace_bytes'] / memory['none']['trace_bytes']:.4f}×")


if __name__ == "__main__":
    main()
