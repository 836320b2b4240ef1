"""Benchmark: every head's roles, entropy and sink scores for SmolLM2 at 1024 tokens.

One trace of all 30 layers × 9 heads over 1024 tokens (a BOS token, 511 random whole-word
tokens twice, one more word), then, timed, in one run:

- ``head_scores``: mean normalised entropy, sink score (α_0), previous-token and self scores;
- ``find_attention_sinks``: both sink rules, α of every position in every head;
- ``induction_scores``: induction and duplicate-token scores on the repeated half.

Run: ``.venv/bin/python benchmarks/bench_analysis.py``. Not a test: it prints the times.
"""

from __future__ import annotations

import time

import attn_widget as aw
from attn_widget import analysis

N_TOKENS = 1024
COPY = 511  # BOS + 2 × 511 + 1 = 1024


def main() -> None:
    model, tokenizer = aw.load_model("smollm2")
    t0 = time.perf_counter()
    probe = analysis.induction_probe(model, tokenizer, n=COPY, seed=0)
    trace = aw.capture(model, tokenizer, probe.trace.text + " end")
    capture_s = time.perf_counter() - t0
    if len(trace) != N_TOKENS:
        raise SystemExit(f"the benchmark text is {len(trace)} tokens, not {N_TOKENS}")
    n_heads = len(trace.layers) * len(trace.heads)
    print(f"trace: {trace!r}\n(probe and capture took {capture_s:.1f} s, not counted)")

    steps = {
        "head_scores (entropy, sink score, previous-token, self)": lambda: analysis.head_scores(trace),
        "find_attention_sinks (both rules, every α)": lambda: analysis.find_attention_sinks(trace),
        "induction_scores (induction, duplicate)": lambda: analysis.induction_scores(trace, COPY, offset=1),
    }
    results = {}
    total = 0.0
    for name, step in steps.items():
        t = time.perf_counter()
        results[name] = step()
        dt = time.perf_counter() - t
        total += dt
        print(f"{name}: {dt:.3f} s ({dt / n_heads * 1e3:.2f} ms per head)")
    print(f"total: {total:.3f} s for {n_heads} heads at {len(trace)} tokens = {total / n_heads * 1e3:.2f} ms "
          f"per head (target: under 5 s)")
    for r in results.values():
        print(r.summary())


if __name__ == "__main__":
    main()
