"""Labelling rules of the reports' evaluation: each run's label from the model's output alone.

Shared by ``make_eval_data.py`` (which labels the runs it generates), ``eval_reports.py``
(which finds the answer token the label came from) and ``tests/test_eval_data.py`` (which
re-derives every stored label). Pure Python: no model, no torch.

Rules
-----
context (counterfactual note)
    Find the first whole-word, case-insensitive mention in the output of any spelling of the
    note's counterfactual value and of the real-world value. ``used`` if the counterfactual
    value is mentioned first, ``ignored`` if the real value is, ``other`` if neither is.
repetition (open-ended generation)
    Over the generated token ids (special tokens such as end-of-text left out): coverage =
    share of the tokens that lie inside an occurrence of a 4-gram of ids occurring at least
    twice. ``repeating`` if coverage ≥ 0.30, ``not`` if coverage ≤ 0.10; ``other`` between
    them, or when fewer than 48 tokens were generated (too short to judge).
hallucination (real vs invented entity)
    The label is the entity's status, fixed when the question was written: ``real`` or
    ``invented``. Recorded beside it, not used as the label: ``hedged``, whether the output
    contains one of ``HEDGES`` (case-insensitive).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

LABELS = {
    "context": ("used", "ignored", "other"),
    "repetition": ("repeating", "not", "other"),
    "hallucination": ("real", "invented"),
}
# the label of the failure the report should flag, then the label of the normal runs
FAILING_NORMAL = {
    "context": ("ignored", "used"),
    "repetition": ("repeating", "not"),
    "hallucination": ("invented", "real"),
}

NGRAM = 4
REPEATING_AT = 0.30
NOT_AT = 0.10
MIN_TOKENS = 48

HEDGES = ("i'm not sure", "i am not sure", "i don't know", "i do not know", "not aware of",
          "no information", "couldn't find", "could not find", "not familiar", "fictional",
          "does not exist", "doesn't exist", "not a real", "no record", "unable to", "i cannot",
          "i can't", "i apologize", "i'm sorry", "not able to", "no known", "there is no")


def first_mention(text: str, spellings: Sequence[str]) -> int:
    """Character index of the first whole-word, case-insensitive mention of any of ``spellings``
    in ``text``; -1 if none."""
    found = [m.start() for s in spellings
             for m in [re.search(rf"(?<!\w){re.escape(s)}(?!\w)", text, flags=re.IGNORECASE)] if m]
    return min(found) if found else -1


def label_context(output: str, counterfactual: Sequence[str], real: Sequence[str]) -> tuple[str, dict]:
    """(label, evidence) of a counterfactual-note run from its generated text."""
    cf, rl = first_mention(output, counterfactual), first_mention(output, real)
    if cf < 0 and rl < 0:
        label = "other"
    elif rl < 0 or 0 <= cf < rl:
        label = "used"
    else:
        label = "ignored"
    return label, {"counterfactual_at": cf, "real_at": rl}


def repeat_coverage(ids: Sequence[int], n: int = NGRAM) -> float:
    """Share of ``ids`` inside an occurrence of an n-gram that occurs at least twice."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(ids)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i:i + n] = [True] * n
    return sum(covered) / len(ids) if len(ids) else 0.0


def label_repetition(ids: Sequence[int], special_ids: Sequence[int]) -> tuple[str, dict]:
    """(label, evidence) of an open-ended generation from its generated token ids."""
    kept = [t for t in ids if t not in set(special_ids)]
    coverage = repeat_coverage(kept)
    if len(kept) < MIN_TOKENS or NOT_AT < coverage < REPEATING_AT:
        label = "other"
    else:
        label = "repeating" if coverage >= REPEATING_AT else "not"
    return label, {"coverage": round(coverage, 6), "n_tokens": len(kept)}


def hedge(output: str) -> str | None:
    """The first of ``HEDGES`` found in ``output`` (case-insensitive), or None."""
    low = output.casefold().replace("’", "'")
    return next((h for h in HEDGES if h in low), None)


def label_run(run: dict, special_ids: Sequence[int]) -> tuple[str, dict]:
    """(label, evidence) of a stored run, by the rule of its task."""
    if run["task"] == "context":
        return label_context(run["generated_text"], run["counterfactual"], run["real"])
    if run["task"] == "repetition":
        return label_repetition(run["generated_ids"], special_ids)
    if run["task"] == "hallucination":
        h = hedge(run["generated_text"])
        return run["status"], {"hedged": h is not None, "hedge": h}
    raise ValueError(f"unknown task {run['task']!r}; expected one of {sorted(LABELS)}")
