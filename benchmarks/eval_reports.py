"""Score the three debugging reports on the labelled SmolLM2 runs of ``tests/data/eval/``.

For each stored run (made by ``make_eval_data.py``; runs labelled ``other`` are left out), one
forward pass over the final text, the prompt ids followed by the generated ids, is captured with
``aw.capture(model, tokenizer, ids)`` on SmolLM2 (SDPA, as generated). A forward pass has no
generated span, so the trace is rebuilt with the public constructor over the same tokens and
blocks and the spans ``prompt = (0, P)``, ``generated = (P, T)`` of the stored prompt length P:
the same trace a capture with generation gives (it is square over the final text too), without
generating again. Then each report runs with the arguments a user would give:

- ``ignored_context(trace, position, value, model=, tokenizer=)``: ``value`` the note's
  counterfactual value (a substring the prompt holds once), ``position`` the output token that
  starts the answer (the value or the real-world value the label rule found), and again at the
  first generated token (attention only);
- ``hallucination(trace, positions, model=, tokenizer=)``: every generated token that is not a
  special token;
- ``repetition(trace, model=, tokenizer=)``.

Printed, as a markdown table: how often each report raises each finding on the failing and the
normal runs (and how often a check shown only as information fired), and for each number the
report exposes, its median per label and the AUC (Mann–Whitney: the chance that a failing run
scores higher than a normal one, ties counting half; 0.5 = no separation, below 0.5 = higher on
normal runs). A finding's AUC is that of its 0/1 firing. Timings are printed to stderr.

Calibration (``--calibrate numbers.json``, no model): from the numbers a ``--save`` run wrote,
each finding's threshold is the one with the best balanced accuracy ((hit rate on failing runs
+ quiet rate on normal runs) / 2) on the fitting half of the runs (even fact, prompt or entity
index: both values or questions of one fact or entity fall in the same half), and its AUC and
firing rates are measured on the other half. Threshold and AUC are over the runs with a value
(a repetition report without a repeat has none); firing rates are over all runs (no value:
no finding). It prints the ``CALIBRATION`` table that
``attn_widget/analysis/findings.py`` holds; ``tests/test_calibration.py`` re-derives it from
``tests/data/eval/numbers.json``.

Run: ``nice -n 10 .venv/bin/python benchmarks/eval_reports.py [--limit N] [--save numbers.json]``,
then ``.venv/bin/python benchmarks/eval_reports.py --calibrate numbers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_labels as labels  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "eval"

FINDINGS = {
    "context": ("low_attention_to_relevant", "high_attention_to_irrelevant", "attention_to_wrong_position",
                "output_unchanged_without_context"),
    "hallucination": ("attention_spread_thin", "attention_to_similar_context", "self_attention_loop",
                      "low_output_confidence"),
    "repetition": ("high_self_attention", "pattern_in_attention", "confident_repeat"),
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
        "logprob_change": "model output: log P(answer) with − without the note's value (dropped)",
        "logprob_change_replace": "model output: the same, the value replaced by ' the' per token",
        "same_output": "model output: same top token without the value (1/0)",
    },
    "hallucination": {
        "entropy_mean": "normalised entropy, mean over output tokens",
        "entropy_max": "normalised entropy, max over output tokens",
        "entropy_first": "normalised entropy at the first output token",
        "similar_share_mean": "share on repeated prompt items, mean",
        "similar_share_max": "share on repeated prompt items, max",
        "generated_share_mean": "share on own output, mean",
        "generated_share_max": "share on own output, max",
        "output_entropy_mean": "model output: next-token entropy (nats), mean",
        "output_logprob_mean": "model output: log-prob of the output tokens, mean",
        "output_margin_mean": "model output: top-1 − top-2 probability, mean",
    },
    "repetition": {
        "n_repeats": "repeats found (text, not attention)",
        "longest": "longest repeat in tokens (text, not attention)",
        "self_share_max": "share on own output during a repeat, max",
        "self_share_mean": "share on own output during a repeat, mean",
        "correlation_max": "pattern correlation, max over repeats",
        "correlation_mean": "pattern correlation, mean over repeats",
        "repeat_probability_max": "model output: probability of a repeat's second copy, max",
    },
}
# finding → (task, where it was read, the number it compares, as the report computes it)
CALIBRATED = {
    "low_attention_to_relevant": ("context", "answer", "share_ratio"),
    "high_attention_to_irrelevant": ("context", "answer", "top_outside_ratio"),
    "attention_to_wrong_position": ("context", "answer", "n_wrong"),
    "output_unchanged_without_context": ("context", "answer", "logprob_change"),
    "attention_spread_thin": ("hallucination", "all", "entropy_max"),
    "attention_to_similar_context": ("hallucination", "all", "similar_share_max"),
    "self_attention_loop": ("hallucination", "all", "generated_share_max"),
    "low_output_confidence": ("hallucination", "all", "output_entropy_mean"),
    "high_self_attention": ("repetition", "all", "self_share_max"),
    "pattern_in_attention": ("repetition", "all", "correlation_max"),
    "confident_repeat": ("repetition", "all", "repeat_probability_max"),
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


def context_numbers(trace, run: dict, model, tokenizer) -> dict:
    from attn_widget import analysis
    from attn_widget.analysis import evidence

    p = trace.spans["generated"][0]
    start = int(trace.tokens.offsets[p, 0])
    label, ev = labels.label_context(trace.text[start:], run["counterfactual"], run["real"])
    at = ev["counterfactual_at"] if label == "used" else ev["real_at"]
    answer = p + int(np.searchsorted(trace.tokens.offsets[p:, 1], start + at, side="right"))
    out = {"relabelled": label}
    for where, pos in (("answer", answer), ("first", p)):
        given = {"model": model, "tokenizer": tokenizer} if where == "answer" else {}
        r = analysis.ignored_context(trace, pos, run["counterfactual"][0], **given)
        top = r.top_outside[0][2] if r.top_outside else 0.0
        out[where] = {
            "token": r.output_token, **fired(r),
            "mass": r.mass, "share": r.share, "share_ratio": r.share / r.uniform_share, "rank": r.rank,
            "sink_mass": r.sink_mass, "top_head_mass": float(np.max(r.strongest_head_mass_by_layer)),
            "top_outside_ratio": top / max(r.mass, 1e-12), "n_wrong": len(r.wrong_positions),
        }
        if r.evidence is not None:
            replaced = evidence.context_ablation(model, tokenizer, trace, pos, run["counterfactual"][0],
                                                 ablation="replace")
            out[where].update(logprob_change=r.evidence.logprob_change,
                              same_output=float(r.evidence.same_output),
                              logprob_change_replace=replaced.logprob_change)
    return out


def fired(report) -> dict:
    """What a report raised: its findings, and the checks it shows as information."""
    return {"fires": sorted({f.name for f in report.findings}),
            "informs": sorted({f.name for f in report.information})}


def hallucination_numbers(trace, run: dict, model, tokenizer) -> dict:
    from attn_widget import analysis

    lo, hi = trace.spans["generated"]
    positions = [q for q in range(max(lo, 1), hi) if not trace.tokens.special[q]]
    r = analysis.hallucination(trace, positions, model=model, tokenizer=tokenizer)
    return {"all": {
        **fired(r),
        "entropy_mean": float(np.mean(r.normalised_entropy)),
        "entropy_max": float(np.max(r.normalised_entropy)),
        "entropy_first": float(r.normalised_entropy[0]),
        "similar_share_mean": float(np.mean(r.similar_share)),
        "similar_share_max": float(np.max(r.similar_share)),
        "generated_share_mean": float(np.mean(r.generated_share)),
        "generated_share_max": float(np.max(r.generated_share)),
        "output_entropy_mean": float(np.mean(r.evidence.entropy)),
        "output_logprob_mean": float(np.mean(r.evidence.logprob)),
        "output_margin_mean": float(np.mean(r.evidence.margin)),
    }}


def repetition_numbers(trace, run: dict, model, tokenizer) -> dict:
    from attn_widget import analysis

    r = analysis.repetition(trace, model=model, tokenizer=tokenizer)

    def stat(values: np.ndarray, how) -> float:
        v = np.asarray(values, float)
        v = v[~np.isnan(v)]
        return float(how(v)) if v.size else float("nan")

    return {"all": {
        **fired(r), "n_repeats": len(r.repeats),
        "longest": max((x.length for x in r.repeats), default=0),
        "self_share_max": stat(r.self_share, np.max), "self_share_mean": stat(r.self_share, np.mean),
        "correlation_max": stat(r.pattern_correlation, np.max),
        "correlation_mean": stat(r.pattern_correlation, np.mean),
        "repeat_probability_max": stat(r.evidence.probability, np.max),
    }}


SCORERS = {"context": context_numbers, "hallucination": hallucination_numbers,
           "repetition": repetition_numbers}
TITLES = {("context", "answer"): "ignored_context, at the answer token",
          ("context", "first"): "ignored_context, at the first generated token",
          ("hallucination", "all"): "hallucination, over every generated token",
          ("repetition", "all"): "repetition, over the generated text"}


def fires(numbers: dict, name: str, key: str = "fires") -> bool:
    """Whether finding ``name`` (or, for "any finding", any finding) was raised on a run (``key``
    "fires"), or shown as information ("informs")."""
    return bool(numbers[key]) if name == "any finding" else name in numbers[key]


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
            for key, verb in (("fires", "raised"), ("informs", "shown as information")):
                hf = np.array([fires(x, name, key) for x in f], float)
                hn = np.array([fires(x, name, key) for x in n], float)
                if hf.any() or hn.any() or (key, name) in (("fires", "any finding"),):
                    lines.append(f"| {verb}: `{name}` | {pct(hf.mean())} | {pct(hn.mean())} | "
                                 f"{auc(hf, hn):.2f} |")
        for key, what in NUMBERS[task].items():
            if key not in f[0]:
                continue  # a number of the model's output, read at the answer only
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
        if key not in rows[0][where]:
            continue
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


# ===================================================================== calibration
def fitting_half(run_id: str) -> bool:
    """Whether a run is in the fitting half: its first number (fact, prompt or entity index) is even."""
    return int(re.search(r"\d+", run_id).group()) % 2 == 0




def fire_rates(failing, normal, fires: str, threshold: float) -> tuple[float, float]:
    """How often ``value`` is beyond ``threshold`` on failing and normal runs (NaN never fires)."""
    def rate(v):
        v = np.asarray(v, float)
        return float(np.mean(v > threshold if fires == "above" else v < threshold))
    return rate(failing), rate(normal)


def best_threshold(failing, normal, fires: str) -> float:
    """The threshold with the best balanced accuracy over the runs that have a value, a midpoint
    between observed values (rounded to 4 significant digits); on a tie, the one that fires least.

    Runs without a value (a repetition report with no repeat: nothing to read) are left out: a
    threshold below every value would otherwise "separate" runs with a repeat from runs without
    one, which is the text's evidence, not the number's."""
    f, n = np.asarray(failing, float), np.asarray(normal, float)
    f, n = f[~np.isnan(f)], n[~np.isnan(n)]
    values = np.unique(np.concatenate([f, n])[~np.isnan(np.concatenate([f, n]))])
    candidates = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1]])
    best, best_t = -1.0, 0.0
    order = candidates[::-1] if fires == "above" else candidates
    for t in order:  # from the threshold that fires least to the one that fires most
        t = float(f"{t:.4g}")
        hit, false = fire_rates(f, n, fires, t)
        if (hit + 1 - false) / 2 > best + 1e-12:
            best, best_t = (hit + 1 - false) / 2, t
    return best_t


def oriented_auc(failing, normal, fires: str) -> float:
    """AUC in the direction a finding fires, over the runs that have a value (see best_threshold)."""
    sign = 1 if fires == "above" else -1
    return round(auc(sign * np.asarray(failing, float), sign * np.asarray(normal, float)), 4)


def half_values(rows: list[dict], where: str, key: str, label: str, fit: bool) -> list[float]:
    return [r[where][key] for r in rows if r["label"] == label and fitting_half(r["id"]) == fit]


def calibrate(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Finding → threshold (fitted on the fitting half), held-out AUC and firing rates, and the
    normal runs' 0th…100th percentiles (every 5) of its number."""
    from attn_widget.analysis.findings import NUMBERS as DIRECTIONS

    out = {}
    for name, (task, where, key) in CALIBRATED.items():
        rows = results.get(task)
        if not rows or key not in rows[0][where]:
            continue
        fail, norm = labels.FAILING_NORMAL[task]
        fires_ = DIRECTIONS[name][1]
        fit_f, fit_n = (half_values(rows, where, key, k, True) for k in (fail, norm))
        held_f, held_n = (half_values(rows, where, key, k, False) for k in (fail, norm))
        t = best_threshold(fit_f, fit_n, fires_)
        normal_all = np.array(fit_n + held_n, float)
        normal_all = normal_all[~np.isnan(normal_all)]
        quantiles = np.percentile(normal_all, np.arange(0, 101, 5)) if len(normal_all) else [0.0]
        out[name] = {
            "threshold": t, "auc": oriented_auc(held_f, held_n, fires_),
            "auc_fit": oriented_auc(fit_f, fit_n, fires_),
            "rates": tuple(round(x, 4) for x in fire_rates(held_f, held_n, fires_, t)),
            "runs": (len(held_f), len(held_n)),
            "normal_quantiles": tuple(float(f"{q:.4g}") for q in quantiles),
        }
    return out


def calibration_source(cal: dict[str, dict]) -> str:
    """The ``CALIBRATION`` block of ``attn_widget/analysis/findings.py`` for ``cal``."""
    lines = ["# CALIBRATION: generated by benchmarks/eval_reports.py --calibrate; do not edit by hand",
             "CALIBRATION = {c.finding: c for c in ("]
    for name, c in cal.items():
        q = ", ".join(repr(x) for x in c["normal_quantiles"])
        lines.append(f"    calibrated({name!r}, {c['threshold']!r}, auc={c['auc']!r}, rates={c['rates']!r}, "
                     f"runs={c['runs']!r},")
        chunks, line = [], "               normal_quantiles=("
        for item in q.split(", "):
            if len(line) + len(item) + 2 > 108:
                chunks.append(line.rstrip())
                line = "                                 "
            line += item + ", "
        chunks.append(line.rstrip(", ") + ")),")
        lines += chunks
    lines += [")}", "# end of CALIBRATION"]
    return "\n".join(lines).replace("'", '"') + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA), help="folder of the labelled runs")
    ap.add_argument("--only", default="context,repetition,hallucination", help="comma-separated tasks")
    ap.add_argument("--limit", type=int, default=0, help="score at most N runs per label (0: all)")
    ap.add_argument("--save", default="", help="write every run's numbers to this JSON file (the tasks "
                    "scored now replace theirs in it, others are kept)")
    ap.add_argument("--calibrate", default="", help="fit thresholds on the numbers in this JSON file "
                    "(written by --save) and print the CALIBRATION table; runs no model")
    ap.add_argument("--table", default="", help="print the tables from the numbers in this JSON file, "
                    "what each report raises recomputed with the current CALIBRATION; runs no model")
    args = ap.parse_args()
    if args.table:
        results = refired(json.loads(Path(args.table).read_text()))
        print(report(results, Path(args.data)))
        return
    if args.calibrate:
        results = json.loads(Path(args.calibrate).read_text())
        cal = calibrate(results)
        for name, c in cal.items():
            print(f"{name}: threshold {c['threshold']:.4g}, fitting-half AUC {c['auc_fit']:.2f}, "
                  f"held-out AUC {c['auc']:.2f}, held-out firing {c['rates'][0]:.0%} of {c['runs'][0]} "
                  f"failing / {c['rates'][1]:.0%} of {c['runs'][1]} normal runs", file=sys.stderr)
        print(calibration_source(cal))
        return
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
                   **SCORERS[task](trace, run, model, tokenizer)}
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
    print(report(results, data))
    if args.save:
        path = Path(args.save)
        saved = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**saved, **results}, indent=1, ensure_ascii=False) + "\n")


def report(results: dict[str, list[dict]], data: Path) -> str:
    """Label counts, hedging, the firing-rate and AUC tables, and the per-style tables."""
    meta = json.loads((data / "metadata.json").read_text())
    counts = {t: meta["counts"][t] for t in results}
    out = [f"Label counts (all stored runs): {json.dumps(counts)}\n"]
    hall = results.get("hallucination")
    if hall:
        lines = (data / "hallucination.jsonl").read_text().splitlines()
        runs = {r["id"]: r for r in map(json.loads, lines)}
        for k in labels.FAILING_NORMAL["hallucination"]:
            hedged = sum(runs[r["id"]]["derived_from"]["hedged"] for r in hall if r["label"] == k)
            out.append(f"hallucination: {hedged} of {sum(r['label'] == k for r in hall)} {k} runs hedged")
        out.append("")
    out.append(table(results))
    if results.get("context"):
        out.append("ignored_context within each prompt style: AUCs, then firing rates (ignored/used runs "
                   "in brackets; – under 5 of either)\n")
        out += [style_table(results["context"], where) + "\n" for where in ("answer", "first")]
    return "\n".join(out)


def refired(results: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """``results`` with what each report raised, and showed as information, recomputed from each
    run's numbers by the rule the reports apply (:class:`~attn_widget.analysis.Calibration`)."""
    from attn_widget.analysis.findings import CALIBRATION

    out = json.loads(json.dumps(results))
    for task, rows in out.items():
        for row in rows:
            for numbers in (v for v in row.values() if isinstance(v, dict)):
                hit = [name for name, (t, _, key) in CALIBRATED.items()
                       if t == task and key in numbers and CALIBRATION[name].fires_on(numbers[key])]
                numbers["fires"] = sorted(n for n in hit if CALIBRATION[n].discriminates)
                numbers["informs"] = sorted(n for n in hit if not CALIBRATION[n].discriminates)
    return out


if __name__ == "__main__":
    main()
