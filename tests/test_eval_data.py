"""The labelled runs of the reports' evaluation (tests/data/eval/) are well formed: every run the
generator plans is stored once, labels come from the allowed set and re-derive from the stored
output by the same rules, and the counts match the metadata. No model runs here."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "eval"
TASKS = ("context", "repetition", "hallucination")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


labels = _load("eval_labels")
make = _load("make_eval_data")
META = json.loads((DATA / "metadata.json").read_text())
RUNS = {t: [json.loads(line) for line in (DATA / f"{t}.jsonl").read_text().splitlines()] for t in TASKS}


# ---------------------------------------------------------------- the rules themselves
def test_first_mention_matches_whole_words_case_insensitively():
    assert labels.first_mention("It is in rome, not Paris.", ["Rome"]) == 9
    assert labels.first_mention("Romeo is here", ["Rome"]) == -1
    assert labels.first_mention("New York or York", ["York", "New York"]) == 0


def test_context_label_follows_the_value_mentioned_first():
    assert labels.label_context(" Rome. Not Paris.", ["Rome"], ["Paris"])[0] == "used"
    assert labels.label_context(" Paris, although the note says Rome", ["Rome"], ["Paris"])[0] == "ignored"
    assert labels.label_context(" in Europe.", ["Rome"], ["Paris"]) == ("other", {"counterfactual_at": -1,
                                                                                  "real_at": -1})


def test_repeat_coverage_counts_tokens_inside_repeated_4grams():
    assert labels.repeat_coverage([1, 2, 3, 4, 9, 1, 2, 3, 4]) == pytest.approx(8 / 9)
    assert labels.repeat_coverage(list(range(60))) == 0.0
    loop = [5, 6, 7] * 20
    assert labels.label_repetition(loop + [2], special_ids=[2]) == ("repeating",
                                                                    {"coverage": 1.0, "n_tokens": 60})
    assert labels.label_repetition(list(range(60)), special_ids=[])[0] == "not"
    assert labels.label_repetition(list(range(20)), special_ids=[])[0] == "other"  # too short to judge


def test_hedge_finds_a_refusal_phrase():
    assert labels.hedge("I’m not sure who that is.") == "i'm not sure"
    assert labels.hedge("Albert Einstein was a physicist.") is None


# ---------------------------------------------------------------- the stored data
def test_every_planned_run_is_stored_once_with_its_prompt():
    planned = {r["id"]: r for r in make.plan()}
    stored = [r for t in TASKS for r in RUNS[t]]
    assert len({r["id"] for r in stored}) == len(stored)
    assert {r["id"] for r in stored} == set(planned)
    for r in stored:
        assert r["prompt"] == planned[r["id"]]["prompt"], r["id"]
        assert r["prompt_ids"] and all(isinstance(t, int) for t in r["prompt_ids"] + r["generated_ids"])


@pytest.mark.parametrize("task", TASKS)
def test_labels_come_from_the_allowed_set(task):
    assert {r["label"] for r in RUNS[task]} <= set(labels.LABELS[task])
    assert all(r["task"] == task for r in RUNS[task])


@pytest.mark.parametrize("task", TASKS)
def test_each_label_rederives_from_the_stored_output(task):
    for r in RUNS[task]:
        assert labels.label_run(r, META["special_ids"]) == (r["label"], r["derived_from"]), r["id"]


@pytest.mark.parametrize("task", TASKS)
def test_counts_match_the_metadata(task):
    counts = Counter(r["label"] for r in RUNS[task])
    assert {k: counts.get(k, 0) for k in labels.LABELS[task]} == META["counts"][task]


def test_metadata_names_the_model_and_generation():
    assert META["attn_implementation"] == "sdpa" and META["dtype"] == "float32"
    assert META["generation"]["decoding"].startswith("greedy")
    assert META["generation"]["max_new_tokens"] == make.GENERATION


def test_context_prompts_name_the_counterfactual_once_and_the_real_value_nowhere():
    for r in RUNS["context"]:
        value = r["counterfactual"][0]
        assert len(re.findall(rf"(?<!\w){re.escape(value)}(?!\w)", r["prompt"], re.IGNORECASE)) == 1, r["id"]
        assert labels.first_mention(r["prompt"], r["real"]) == -1, r["id"]


def test_repetition_runs_are_open_ended():
    assert all(make.GENERATION["repetition"][k] >= 48 for k in ("plain", "chat"))
    judged = [r for r in RUNS["repetition"] if r["label"] != "other"]
    assert all(r["derived_from"]["n_tokens"] >= labels.MIN_TOKENS for r in judged)


def test_the_data_stays_small():
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 1_000_000
