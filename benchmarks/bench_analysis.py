"""Benchmark: every head's roles, entropy and sink scores for SmolLM2, at 1024 tokens and long.

One trace of all 30 layers × 9 heads over 1024 tokens (a BOS token, 511 random whole-word
tokens twice, one more word), then, timed, in one run:

- ``head_scores``: mean normalised entropy, sink score (α_0), previous-token and self scores;
- ``find_attention_sinks``: both sink rules, α of every position in every head;
- ``induction_scores``: induction and duplicate-token scores on the repeated half.

Then the long section, with no model: a SmolLM2-shaped trace that keeps queries and keys (30
layers, 9 query heads over 3 key/value groups, head_dim 64, scaling 0.125, causal, no window),
random float32 queries and keys (std 1) over ``--long-tokens`` tokens (default 8192), and
``head_scores`` over its 270 heads (goal: at most 120 s at 8192 on a 2-core CPU), timed with
its peak of traced memory (``tracemalloc``) against the 2 · 270 · T²/2 bytes of the float16
weights it never builds; then, from what that pass kept on the trace, ``find_attention_sinks``
and the ``ignored_context`` report of the last token. The load average is printed with the
times (the machine may be shared).

Run: ``.venv/bin/python benchmarks/bench_analysis.py [--long-tokens T] [--long-only]``
(``--long-tokens 0`` or ``ATTN_BENCH_LONG_TOKENS=0`` skips the long section). Not a test: it
prints the times.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np

import attn_widget as aw
from attn_widget import analysis
from attn_widget.querykeys import QueryKeys
from attn_widget.tokens import TokenTable
from attn_widget.trace import AttentionBlock, AttentionTrace

N_TOKENS = 1024
COPY = 511  # BOS + 2 × 511 + 1 = 1024


def smollm2_shaped(t: int, seed: int = 0) -> AttentionTrace:
    """A trace of SmolLM2's shape that keeps random float32 queries and keys (std 1) of ``t`` tokens."""
    rng = np.random.default_rng(seed)
    layers, heads, groups, dim = 30, 9, 3, 64
    qk = QueryKeys(rng.standard_normal((layers, heads, t, dim), np.float32),
                   rng.standard_normal((layers, groups, t, dim), np.float32),
                   np.repeat(np.arange(groups), heads // groups), np.full(layers, 0.125, np.float32),
                   np.zeros(layers, np.int64))
    block = AttentionBlock("self", True, tuple(range(layers)), tuple(range(heads)), qk=qk)
    words = [f" w{i}" for i in range(t)]
    model = {"name": "smollm2-shaped", "architecture": "decoder", "n_layers": layers, "n_heads": heads,
             "n_kv_heads": groups}
    return AttentionTrace(TokenTable(list(range(t)), words, words), {"self": block},
                          {"prompt": (0, t - 32), "generated": (t - 32, t)}, model)


def long_section(t: int) -> None:
    trace = smollm2_shaped(t)
    b = trace.block()
    print(f"\nlong: {trace!r}\nits float16 weights would take {b.weights_nbytes / 2**30:.1f} GiB; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    scores = analysis.head_scores(trace)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"head_scores, {len(b.layers) * len(b.heads)} heads at {t} tokens: {wall:.1f} s wall, {cpu:.1f} s "
          f"CPU (goal: at most 120 s at 8192); peak traced memory {peak / 2**20:.0f} MiB "
          f"({peak / b.weights_nbytes:.2%} of the weights); peak RSS of the process {rss:.0f} MiB (queries "
          f"and keys: {b.nbytes / 2**20:.0f} MiB); load average after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    steps = (("find_attention_sinks (kept from head_scores)", lambda: analysis.find_attention_sinks(trace)),
             ("head_scores again", lambda: analysis.head_scores(trace)),
             ("ignored_context of the last token", lambda: analysis.ignored_context(trace, t - 1, [1, 2])))
    for name, step in steps:
        start = time.perf_counter()
        step()
        print(f"{name}: {time.perf_counter() - start:.3f} s")
    print(scores.summary())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long-tokens", type=int, help="tokens of the long section (0 skips it)",
                        default=int(os.environ.get("ATTN_BENCH_LONG_TOKENS", 8192)))
    parser.add_argument("--long-only", action="store_true", help="skip the SmolLM2 run at 1024 tokens")
    args = parser.parse_args()
    if not args.long_only:
        model_section()
    if args.long_tokens:
        long_section(args.long_tokens)


def model_section() -> None:
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
