"""The reports' calibration: thresholds and AUCs follow from the evaluation's stored numbers
(tests/data/eval/numbers.json, written by benchmarks/eval_reports.py --save on SmolLM2), no
report fires on every run of the evaluation, checks that do not separate the labels are shown as
information, and clear and clean constructed cases land on either side of the calibrated
thresholds. No model runs here."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from attn_widget import analysis as an
from attn_widget.analysis import findings as fd
from attn_widget.trace import AttentionTrace

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = json.loads((ROOT / "tests" / "data" / "eval" / "numbers.json").read_text())


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


evaluation = _load("eval_reports")
labels = evaluation.labels


# --------------------------------------------------------------------------- the stored evaluation
def test_the_calibration_table_follows_from_the_stored_numbers():
    fitted = evaluation.calibrate(NUMBERS)
    assert set(fitted) == set(fd.CALIBRATION) == set(fd.NUMBERS)
    for name, c in fd.CALIBRATION.items():
        f = fitted[name]
        assert (c.threshold, c.auc, (c.failing_rate, c.normal_rate), (c.n_failing, c.n_normal)) == \
            (f["threshold"], f["auc"], f["rates"], f["runs"]), name
        assert c.normal_quantiles == f["normal_quantiles"], name


def test_the_generated_source_is_what_findings_holds():
    text = (ROOT / "attn_widget" / "analysis" / "findings.py").read_text()
    block = text[text.index("# CALIBRATION: generated"):text.index("# end of CALIBRATION") + 20] + "\n"
    assert block == evaluation.calibration_source(evaluation.calibrate(NUMBERS))


def run_fires(task: str, row: dict) -> dict[str, bool]:
    """Which findings a report raises on a stored run: its numbers against the calibrated rules."""
    where = "answer" if task == "context" else "all"
    out = {}
    for name, (t, w, key) in evaluation.CALIBRATED.items():
        if t == task and w == where:
            c = fd.CALIBRATION[name]
            out[name] = c.discriminates and c.fires_on(row[where][key])
    return out


@pytest.mark.parametrize("task", ["context", "hallucination", "repetition"])
def test_no_report_fires_on_every_run_of_the_evaluation(task):
    fires = [any(run_fires(task, r).values()) for r in NUMBERS[task]]
    assert not all(fires)
    for name in run_fires(task, NUMBERS[task][0]):
        assert not all(run_fires(task, r)[name] for r in NUMBERS[task]), name


def rates(task: str, name: str | None = None) -> tuple[float, float]:
    """(failing, normal) share of the stored runs on which ``name`` (or any finding) is raised."""
    fail, norm = labels.FAILING_NORMAL[task]
    hit = {k: [any(v for n, v in run_fires(task, r).items() if name in (None, n))
               for r in NUMBERS[task] if r["label"] == k] for k in (fail, norm)}
    return float(np.mean(hit[fail])), float(np.mean(hit[norm]))


def test_ignored_context_is_flagged_on_most_runs_that_ignored_the_note_and_few_that_used_it():
    failing, normal = rates("context")
    assert failing >= 0.7 and normal <= 0.2, (failing, normal)


def test_the_repeating_attention_pattern_is_raised_on_most_repeating_runs_and_few_others():
    failing, normal = rates("repetition", "pattern_in_attention")
    assert failing >= 0.7 and normal <= 0.2, (failing, normal)


def test_repetition_raises_something_more_often_on_repeating_runs():
    # any finding: confident_repeat also fires on generations with a short, likely repeat
    failing, normal = rates("repetition")
    assert failing > normal + 0.5, (failing, normal)


def test_hallucination_raises_something_more_often_on_invented_entities():
    failing, normal = rates("hallucination")
    assert failing > normal + 0.3, (failing, normal)


def test_every_raised_finding_separated_the_held_out_runs():
    for name, c in fd.CALIBRATION.items():
        assert c.discriminates == (c.auc >= fd.DISCRIMINATES_AT)
        if c.discriminates:
            assert c.failing_rate > c.normal_rate, name


def test_the_stored_numbers_are_of_the_stored_runs():
    for task, rows in NUMBERS.items():
        stored = {json.loads(line)["id"]: json.loads(line)["label"] for line in
                  (ROOT / "tests" / "data" / "eval" / f"{task}.jsonl").read_text().splitlines()}
        assert {r["id"]: r["label"] for r in rows} == {k: v for k, v in stored.items()
                                                       if v in labels.FAILING_NORMAL[task]}


# --------------------------------------------------------------------------- fitting
def test_the_best_threshold_maximises_balanced_accuracy():
    failing, normal = [3.0, 4.0, 5.0, 1.5], [1.0, 2.0, 0.5, 2.2]
    t = evaluation.best_threshold(failing, normal, "above")
    assert t == 2.6  # 3 of 4 failing above, 4 of 4 normal below: 0.875; 1.25 catches all failing, 0.75
    assert evaluation.best_threshold([-x for x in failing], [-x for x in normal], "below") == -2.6


def test_a_run_without_a_number_never_fires_and_is_left_out_of_the_fit():
    assert evaluation.fire_rates([np.nan, 1.0], [np.nan], "above", 0.5) == (0.5, 0.0)
    # the AUC and the threshold are over the runs that have a value: 2 vs 1
    assert evaluation.oriented_auc([np.nan, 2.0], [1.0, np.nan], "above") == 1.0
    assert evaluation.best_threshold([np.nan, 2.0, 3.0], [1.0, np.nan], "above") == 1.5


def test_both_questions_about_one_entity_fall_in_the_same_half():
    assert evaluation.fitting_half("hallucination-real-person-04-0") == \
        evaluation.fitting_half("hallucination-real-person-04-1")
    assert evaluation.fitting_half("context-plain-note-03-0") != \
        evaluation.fitting_half("context-chat-note-04-1")


# --------------------------------------------------------------------------- constructed cases
def causal_rows(t: int, row_of_last: list[float]) -> np.ndarray:
    """Uniform causal attention; query ``t - 2``, which produced the last token, gets ``row_of_last``."""
    a = np.tril(np.ones((t, t)))
    a /= a.sum(axis=1, keepdims=True)
    a[t - 2, :t - 1] = row_of_last
    return a


TOKENS = ["<s>", " The", " note", " says", " Rome", ".", " Answer", ":", " Paris"]


def context_case(row: list[float]) -> an.IgnoredContextReport:
    trace = AttentionTrace.from_dense(causal_rows(9, row)[None, None], TOKENS, prompt_len=8)
    return an.ignored_context(trace, 8, "Rome", ignore_sinks=False)


def shown(report) -> list[str]:
    return report.finding_names + [f.name for f in report.information]


def test_context_that_gets_no_attention_fires_and_context_that_gets_it_all_does_not():
    ignored = context_case([0.3, 0.2, 0.2, 0.1, 0.0, 0.1, 0.05, 0.05])
    assert "low_attention_to_relevant" in shown(ignored)
    assert "high_attention_to_irrelevant" in shown(ignored)
    used = context_case([0.01, 0.0, 0.0, 0.0, 0.97, 0.01, 0.01, 0.0])
    assert shown(used) == []


def test_a_check_that_did_not_discriminate_is_information_not_a_finding(monkeypatch):
    row = [0.3, 0.2, 0.2, 0.1, 0.0, 0.1, 0.05, 0.05]
    for auc, where in ((0.9, "findings"), (0.55, "information")):
        c = dataclasses.replace(fd.CALIBRATION["low_attention_to_relevant"], auc=auc)
        monkeypatch.setitem(fd.CALIBRATION, "low_attention_to_relevant", c)
        r = context_case(row)
        assert "low_attention_to_relevant" in [f.name for f in getattr(r, where)]
        assert "low_attention_to_relevant" not in [f.name for f in getattr(
            r, "information" if where == "findings" else "findings")]
    assert "information, not a finding" in r.summary() and "held-out AUC 0.55" in r.summary()


def test_a_repeat_with_a_repeating_pattern_fires_and_a_text_without_one_is_silent():
    ids = [0, 1, 2, 3, 4, 10, 11, 12, 10, 11, 12]
    prev = np.eye(11, k=-1)
    prev[0, 0] = 1
    loop = AttentionTrace.from_dense(prev[None, None], [f" t{i}" for i in ids], prompt_len=5, token_ids=ids)
    r = an.repetition(loop, ignore_sinks=False)
    assert r.pattern_correlation[0] == pytest.approx(1.0) and "pattern_in_attention" in shown(r)
    plain = AttentionTrace.from_dense(prev[None, None], [f" t{i}" for i in range(11)], prompt_len=5,
                                      token_ids=list(range(11)))
    assert shown(an.repetition(plain)) == []


def test_percentiles_place_a_number_among_the_evaluated_models_normal_runs():
    c = fd.CALIBRATION["low_attention_to_relevant"]
    q = np.asarray(c.normal_quantiles)
    assert c.percentile(q[0] - 1) == 0 and c.percentile(q[-1] + 1) == 100
    a = causal_rows(9, [0.3, 0.2, 0.2, 0.1, 0.0, 0.1, 0.05, 0.05])[None, None]
    smol = AttentionTrace.from_dense(a, TOKENS, prompt_len=8, model_name="/cache/smollm2-135m-instruct-v1")
    r = an.ignored_context(smol, 8, "Rome", ignore_sinks=False)
    assert set(r.percentiles) == {"low_attention_to_relevant", "high_attention_to_irrelevant",
                                  "attention_to_wrong_position"}
    assert r.percentiles["low_attention_to_relevant"] == c.percentile(r.share / r.uniform_share)
    assert "at percentile" in r.summary()
    other = AttentionTrace.from_dense(a, TOKENS, prompt_len=8)
    assert an.ignored_context(other, 8, "Rome", ignore_sinks=False).percentiles == {}


def test_what_the_reports_raised_on_every_stored_run_is_the_calibrated_rule():
    # the stored "fires"/"informs" were written by the reports themselves (eval_reports.py --save)
    again = evaluation.refired(NUMBERS)
    for task, rows in NUMBERS.items():
        for row, redone in zip(rows, again[task]):
            for where, numbers in row.items():
                if isinstance(numbers, dict):
                    assert (numbers["fires"], numbers["informs"]) == \
                        (redone[where]["fires"], redone[where]["informs"]), (row["id"], where)
