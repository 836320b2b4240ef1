"""Score the three debugging reports on the labelled SmolLM2 runs of ``tests/data/eval/``.

For each stored run (made by ``make_eval_data.py``; runs labelled ``other`` are left out), one
forward pass over the final text, the prompt ids followed by the generated ids, is captured with
``aw.capture(model, tokenizer, ids)`` on SmolLM2 (SDPA, as generated). A forward pass has no
generated span, so the trace is rebuilt with the public constructor over the same tokens and
blocks and the spans ``prompt = (0, P)``, ``generated = (P, T)`` of the stored prompt length P:
the same trace a capture with generation gives (it is square over the final text too), without
generating again. Then each report runs with the arguments a user would give:

- ``ignored_context(trace, position, value)``: ``value`` the note's counterfactual value (a
  substring the prompt holds once), ``position`` the output token that starts the answer (the
  value or the real-world value the label rule found), and again at the first generated token;
- ``hallucination(trace, positions)``: every generated token that is not a special token;
- ``repetition(trace)``.

Printed, as a markdown table: how often each finding fires on the failing and the normal runs
of its report, and for each number the report exposes, its median per label and the AUC
(Mann–Whitney: the chance that a failing run scores higher than a normal one, ties counting
half; 0.5 = no separation, below 0.5 = higher on normal runs). A finding's AUC is that of its
0/1 firing. Timings are printed to stderr.

Run: ``nice -n 10 .venv/bin/python benchmarks/eval_reports.py [--limit N] [--save numbers.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_labels as labels  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "eval"

FINDINGS = {
    "context": ("low_attention_to_relevant", "high_attention_to_irrelevant", "attention_to_wrong_position"),
    "hallucination": ("attention_spread_thin", "attention_to_similar_context", "self_attention_loop"),
    "repetition": ("high_self_attention", "pattern_in_attention"),
}
# what each number is, for the table (all from the report's public attributes)
NUMBERS = {
    "context": {
        "mass": "attention to the value (layer and head mean)",
        "share": "value's share of non-sink attention",
        "share_ratio": "share / uniform share",
        "rank": "rank of the value's best token",
        "sink_mass": "attention to sinks",
        "top_head_mass": "strongest single head's mass on the value",
        "top_outside_ratio": "top outside position / value mass",
        "n_wrong": "positions near or like the value above its best token",
    },
    "hallucination": {
        "entropy_mean": "normalised entropy, mean over output tokens",
        "entropy_max": "normalised entropy, max over output tokens",
        "entropy_first": "normalised entropy at the first output token",
        "similar_share_mean": "share on repeated prompt items, mean",
        "generated_share_mean": "share on own output, mean",
        "generated_share_max": "share on own output, max",
    },
    "repetition": {
        "n_repeats": "repeats found (text, not attention)",
        "longest": "longest repeat in tokens (text, not attention)",
        "self_share_max": "share on own output during a repeat, max",
        "self_share_mean": "share on own output during a repeat, mean",
        "correlation_max": "pattern correlation, max over repeats",
        "correlation_mean": "pattern correlation, mean over repeats",
    },
}


def auc(failing: np.ndarray, normal: np.ndarray) -> float:
    """P(failing > normal) + P(equal) / 2 from average ranks (Mann–Whitney U); NaN left out."""
    f, n = np.asarray(failing, float), np.asarray(normal, float)
    f, n = f[~np.isnan(f)], n[~np.isnan(n)]
    if not len(f) or not len(n):
        return float("nan")
    values = np.concatenate([f, n])
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_values))[0] + 1]
    stops = np.r_[starts[1:], len(values)]
    for a, b in zip(starts, stops):
        ranks[order[a:b]] = (a + b + 1) / 2  # 1-based average rank of the tied group
    u = ranks[:len(f)].sum() - len(f) * (len(f) + 1) / 2
    return float(u / (len(f) * len(n)))


def forward_trace(model, tokenizer, run: dict):
    """The run's final text captured in one forward pass, with its prompt/generated spans."""
    import attn_widget as aw

    ids = run["prompt_ids"] + run["generated_ids"]
    t = aw.capture(model, tokenizer, ids)
    p = len(run["prompt_ids"])
    return aw.AttentionTrace(t.tokens, t.blocks, {"prompt": (0, p), "generated": (p, len(t))}, t.model,
                             t.options)


def context_numbers(trace, run: dict) -> dict:
    from attn_widget import analysis

    p = trace.spans["generated"][0]
    start = int(trace.tokens.offsets[p, 0])
    label, ev = labels.label_context(trace.text[start:], run["counterfactual"], run["real"])
    at = ev["counterfactual_at"] if label == "used" else ev["real_at"]
    answer = p + int(np.searchsorted(trace.tokens.offsets[p:, 1], start + at, side="right"))
    out = {"relabelled": label}
    for where, pos in (("answer", answer), ("first", p)):
        r = analysis.ignored_context(trace, pos, run["counterfactual"][0])
        top = r.top_outside[0][2] if r.top_outside else 0.0
        out[where] = {
            "token": r.output_token, "fires": sorted(set(r.finding_names)),
            "mass": r.mass, "share": r.share, "share_ratio": r.share / r.uniform_share, "rank": r.rank,
            "sink_mass": r.sink_mass, "top_head_mass": float(np.max(r.strongest_head_mass_by_layer)),
            "top_outside_ratio": top / max(r.mass, 1e-12), "n_wrong": len(r.wrong_positions),
        }
    return out


def hallucination_numbers(trace, run: dict) -> dict:
    from attn_widget import analysis

    lo, hi = trace.spans["generated"]
    positions = [q for q in range(max(lo, 1), hi) if not trace.tokens.special[q]]
    r = analysis.hallucination(trace, positions)
    return {"all": {
        "fires": sorted(set(r.finding_names)),
        "entropy_mean": float(np.mean(r.normalised_entropy)),
        "entropy_max": float(np.max(r.normalised_entropy)),
        "entropy_first": float(r.normalised_entropy[0]),
        "similar_share_mean": float(np.mean(r.similar_share)),
        "generated_share_mean": float(np.mean(r.generated_share)),
        "generated_share_max": float(np.max(r.generated_share)),
    }}


def repetition_numbers(trace, run: dict) -> dict:
    from attn_widget import analysis

    r = analysis.repetition(trace)

    def stat(values: np.ndarray, how) -> float:
        v = np.asarray(values, float)
        v = v[~np.isnan(v)]
        return float(how(v)) if v.size else float("nan")

    return {"all": {
        "fires": sorted(set(r.finding_names)), "n_repeats": len(r.repeats),
        "longest": max((x.length for x in r.repeats), default=0),
        "self_share_max": stat(r.self_share, np.max), "self_share_mean": stat(r.self_share, np.mean),
        "correlation_max": stat(r.pattern_correlation, np.max),
        "correlation_mean": stat(r.pattern_correlation, np.mean),
    }}


SCORERS = {"context": context_numbers, "hallucination": hallucination_numbers,
           "repetition": repetition_numbers}
TITLES = {("context", "answer"): "ignored_context, at the answer token",
          ("context", "first"): "ignored_context, at the first generated token",
          ("hallucination", "all"): "hallucination, over every generated token",
          ("repetition", "all"): "repetition, over the generated text"}


def fires(numbers: dict, name: str) -> bool:
    """Whether finding ``name`` (or, for "any finding", any finding) fired on a run."""
    return bool(numbers["fires"]) if name == "any finding" else name in numbers["fires"]


def pct(x: float) -> str:
    return f"{x:.0%}"


def table(results: dict[str, list[dict]]) -> str:
    """The markdown table: firing rates, medians and AUCs, per report and where it was read."""
    lines = []
    for (task, where), title in TITLES.items():
        rows = results.get(task, [])
        if not rows:
            continue
        fail, norm = labels.FAILING_NORMAL[task]
        f = [r[where] for r in rows if r["label"] == fail]
        n = [r[where] for r in rows if r["label"] == norm]
        lines += [f"**{title}** ({fail}: {len(f)} runs, {norm}: {len(n)} runs)", "",
                  f"| finding or number | {fail} | {norm} | AUC |", "|---|---|---|---|"]
        for name in (*FINDINGS[task], "any finding"):
            hf = np.array([fires(x, name) for x in f], float)
            hn = np.array([fires(x, name) for x in n], float)
            lines.append(f"| fires: `{name}` | {pct(hf.mean())} | {pct(hn.mean())} | {auc(hf, hn):.2f} |")
        for key, what in NUMBERS[task].items():
            vf = np.array([x[key] for x in f], float)
            vn = np.array([x[key] for x in n], float)
            missing = f" ({np.isnan(vf).sum()}/{np.isnan(vn).sum()} runs without a value)" if (
                np.isnan(vf).any() or np.isnan(vn).any()) else ""
            med = [f"{np.nanmedian(v):.3g}" if (~np.isnan(v)).any() else "–" for v in (vf, vn)]
            lines.append(f"| {what}{missing}: median | {med[0]} | {med[1]} | {auc(vf, vn):.2f} |")
        lines.append("")
    return "\n".join(lines)


def style_table(rows: list[dict], where: str) -> str:
    """AUCs of the context numbers within each prompt style (a style that sets the label would
    otherwise pass for a signal), read at ``where`` ("answer" or "first")."""
    fail, norm = labels.FAILING_NORMAL["context"]
    styles = sorted({r["style"] for r in rows})
    head = [f"| {TITLES['context', where].split(', ')[1]} | " + " | ".join(
        f"{s} ({sum(r['style'] == s and r['label'] == fail for r in rows)}/"
        f"{sum(r['style'] == s and r['label'] == norm for r in rows)})" for s in styles) + " |",
        "|---|" + "---|" * len(styles)]
    for key, what in NUMBERS["context"].items():
        cells = []
        for s in styles:
            vf = [r[where][key] for r in rows if r["style"] == s and r["label"] == fail]
            vn = [r[where][key] for r in rows if r["style"] == s and r["label"] == norm]
            cells.append(f"{auc(vf, vn):.2f}" if min(len(vf), len(vn)) >= 5 else "–")
        head.append(f"| {what} | " + " | ".join(cells) + " |")
    for name in FINDINGS["context"]:
        cells = []
        for s in styles:
            hf = [fires(r[where], name) for r in rows if r["style"] == s and r["label"] == fail]
            hn = [fires(r[where], name) for r in rows if r["style"] == s and r["label"] == norm]
            cells.append(f"{pct(np.mean(hf))} / {pct(np.mean(hn))}" if min(len(hf), len(hn)) >= 5 else "–")
        head.append(f"| fires: `{name}` ({fail} / {norm}) | " + " | ".join(cells) + " |")
    return "\n".join(head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA), help="folder of the labelled runs")
    ap.add_argument("--only", default="context,repetition,hallucination", help="comma-separated tasks")
    ap.add_argument("--limit", type=int, default=0, help="score at most N runs per label (0: all)")
    ap.add_argument("--save", default="", help="write every run's numbers to this JSON file")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import attn_widget as aw

    data = Path(args.data)
    meta = json.loads((data / "metadata.json").read_text())
    model, tokenizer = aw.load_model("smollm2", attn_implementation=meta["attn_implementation"])
    results: dict[str, list[dict]] = {}
    for task in [t.strip() for t in args.only.split(",") if t.strip()]:
        runs = [json.loads(line) for line in (data / f"{task}.jsonl").read_text().splitlines() if line]
        kept = [r for r in runs if r["label"] in labels.FAILING_NORMAL[task]]
        if args.limit:
            kept = [r for k in labels.FAILING_NORMAL[task]
                    for r in [x for x in kept if x["label"] == k][:args.limit]]
        t0 = time.perf_counter()
        rows = []
        for i, run in enumerate(kept):
            trace = forward_trace(model, tokenizer, run)
            row = {"id": run["id"], "label": run["label"], "style": run["style"],
                   **SCORERS[task](trace, run)}
            if row.pop("relabelled", run["label"]) != run["label"]:
                raise SystemExit(f"{run['id']}: the trace's text labels as something else than the stored "
                                 f"{run['label']!r}; regenerate the data with make_eval_data.py")
            rows.append(row)
            if (i + 1) % 25 == 0:
                print(f"{task}: {i + 1}/{len(kept)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                      flush=True)
        dt = time.perf_counter() - t0
        print(f"{task}: {len(rows)} runs scored in {dt:.0f} s ({dt / max(len(rows), 1):.2f} s per run: "
              "capture + report)", file=sys.stderr, flush=True)
        results[task] = rows
    counts = {t: meta["counts"][t] for t in results}
    print(f"Label counts (all stored runs): {json.dumps(counts)}\n")
    hall = results.get("hallucination")
    if hall:
        lines = (data / "hallucination.jsonl").read_text().splitlines()
        runs = {r["id"]: r for r in map(json.loads, lines)}
        for k in labels.FAILING_NORMAL["hallucination"]:
            hedged = sum(runs[r["id"]]["derived_from"]["hedged"] for r in hall if r["label"] == k)
            print(f"hallucination: {hedged} of {sum(r['label'] == k for r in hall)} {k} runs hedged")
        print()
    print(table(results))
    if results.get("context"):
        print("ignored_context within each prompt style: AUCs, then firing rates (ignored/used runs "
              "in brackets; – under 5 of either)\n")
        for where in ("answer", "first"):
            print(style_table(results["context"], where) + "\n")
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
