"""What the three diagnosis reports share: the findings they name, and how they read a generation step.

The finding names and meanings are the ``possible_findings`` of the article "Understanding
What Your Model Attends To". A report reads the attention of the query that *produced* an
output token (row ``p - 1`` for the token at position ``p``), and leaves attention sinks out of
the shares it computes, because sinks take most of the mass in many models and would drown
every other signal.

Not every finding earns its name. Each was scored on labelled SmolLM2 runs
(``benchmarks/eval_reports.py`` over ``tests/data/eval/``): its threshold is the one that best
told failing runs from normal ones on half of the runs, and :data:`CALIBRATION` records how it
did on the other half. A finding whose number does not separate the labels there (held-out
area under the ROC curve below :data:`DISCRIMINATES_AT`) is still computed and shown, as
information, not as a finding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from ..selection import check_index
from ..trace import AttentionBlock, AttentionTrace
from ..valuenorms import describe_weighting
from .heads import find_attention_sinks

# The article's possible findings of its three failure modes, with its one-line meaning of each.
FINDINGS = {
    "low_attention_to_relevant": "Context was seen but not attended",
    "high_attention_to_irrelevant": "Distracted by other tokens",
    "attention_to_wrong_position": "Position encoding issue",
    "attention_spread_thin": "No strong signal, guessing",
    "attention_to_similar_context": "Confused similar items",
    "self_attention_loop": "Attending to own generation",
    "high_self_attention": "Model stuck on own output",
    "pattern_in_attention": "Repeating attention pattern",
}
# Findings read from the model's output rather than its attention (reports given ``model=``),
# with what each means.
OUTPUT_FINDINGS = {
    "output_unchanged_without_context": "The model gives this output as readily without the context",
    "low_output_confidence": "The model was unsure of what it wrote",
    "confident_repeat": "The model expected its own repeat",
}
ATTENTION = "attention"
MODEL_OUTPUT = "model output"
# The smallest held-out AUC (in the direction a finding fires) for which a finding is raised;
# 0.7 is the usual floor of "acceptable" discrimination (Hosmer and Lemeshow, "Applied
# Logistic Regression"), fixed before the evaluation was scored.
DISCRIMINATES_AT = 0.7


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding of a diagnosis report that fired.

    Attributes
    ----------
    name : the finding's name: one of the article "Understanding What Your Model Attends To"
        (a key of :data:`FINDINGS`), or one read from the model's output (of :data:`OUTPUT_FINDINGS`).
    meaning : its one-line meaning.
    value : the number that crossed the threshold.
    threshold : the threshold it was compared with.
    detail : what fired, in words, with tokens and positions.
    positions : the positions it concerns (output positions or key positions, per report).
    source : ``"attention"`` (read from the trace) or ``"model output"`` (from running the model).
    """

    name: str
    meaning: str
    value: float
    threshold: float
    detail: str
    positions: tuple[int, ...] = ()
    source: str = ATTENTION

    def __str__(self) -> str:
        return f"{self.name} ({self.meaning}; from the {self.source}): {self.detail}"


def finding(name: str, value: float, threshold: float, detail: str, positions: Sequence[int] = ()) -> Finding:
    """The :class:`Finding` ``name`` (a key of :data:`FINDINGS` or :data:`OUTPUT_FINDINGS`), with
    its meaning and source filled in."""
    meaning, source = ((FINDINGS[name], ATTENTION) if name in FINDINGS
                       else (OUTPUT_FINDINGS[name], MODEL_OUTPUT))
    return Finding(name, meaning, float(value), float(threshold), detail, tuple(int(p) for p in positions),
                   source)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """How one finding's number told failing runs from normal ones on the labelled evaluation.

    Attributes
    ----------
    finding : the finding's name.
    number : the number it compares, in words.
    fires : ``"above"`` or ``"below"`` the threshold.
    threshold : the threshold with the best balanced accuracy on the fitting half of the runs.
    auc : area under the ROC curve on the held-out half, in the direction the finding fires
        (0.5: no separation; 1: every failing run beyond every normal one).
    failing_rate, normal_rate : how often it fires on the held-out failing and normal runs.
    n_failing, n_normal : held-out runs of each label.
    normal_quantiles : the number's 0th, 5th, …, 100th percentiles over all normal runs of the
        evaluation's model (the baseline a run's number is placed against).
    model : the model the evaluation ran.
    """

    finding: str
    number: str
    fires: str
    threshold: float
    auc: float
    failing_rate: float
    normal_rate: float
    n_failing: int
    n_normal: int
    normal_quantiles: tuple[float, ...]
    model: str = "SmolLM2-135M-Instruct"

    @property
    def discriminates(self) -> bool:
        """Whether the held-out AUC reaches :data:`DISCRIMINATES_AT` (raised as a finding, else
        shown as information)."""
        return self.auc >= DISCRIMINATES_AT

    def fires_on(self, value: float, threshold: float | None = None) -> bool:
        """Whether ``value`` is beyond ``threshold`` (default the calibrated one); NaN never fires."""
        t = self.threshold if threshold is None else threshold
        return bool(value > t) if self.fires == "above" else bool(value < t)

    def percentile(self, value: float) -> float:
        """Percent of the evaluation's normal runs whose number is below ``value`` (interpolated)."""
        q = np.asarray(self.normal_quantiles)
        return float(np.interp(value, q, np.linspace(0, 100, len(q))))

    def describe(self) -> str:
        return (f"{self.number} {'>' if self.fires == 'above' else '<'} {self.threshold:.3g}: held-out AUC "
                f"{self.auc:.2f}, fired on {self.failing_rate:.0%} of {self.n_failing} failing and "
                f"{self.normal_rate:.0%} of {self.n_normal} normal {self.model} runs")


# What each finding compares and which way it fires; the thresholds, AUCs and rates below are
# written by `benchmarks/eval_reports.py --calibrate` from the evaluation's numbers
# (tests/data/eval/numbers.json), and tests/test_calibration.py checks that they follow from them.
NUMBERS = {
    "low_attention_to_relevant": ("context's share of non-sink attention / its uniform share", "below"),
    "high_attention_to_irrelevant": ("top outside position's attention / context's", "above"),
    "attention_to_wrong_position": ("positions near or like the context above its best token", "above"),
    "attention_spread_thin": ("normalised attention entropy, max over output tokens", "above"),
    "attention_to_similar_context": ("share on repeated prompt items, max over output tokens", "above"),
    "self_attention_loop": ("share on own output, max over output tokens", "above"),
    "high_self_attention": ("share on own output during a repeat, max over repeats", "above"),
    "pattern_in_attention": ("attention pattern correlation, max over repeats", "above"),
    "output_unchanged_without_context": ("output log-prob with − without the context", "below"),
    "low_output_confidence": ("next-token entropy (nats), mean over output tokens", "above"),
    "confident_repeat": ("probability of a repeat's second copy, max over repeats", "above"),
}

def calibrated(name: str, threshold: float, *, auc: float, rates: tuple[float, float], runs: tuple[int, int],
               normal_quantiles: Sequence[float]) -> Calibration:
    """The :class:`Calibration` of finding ``name`` (its number and direction from :data:`NUMBERS`);
    ``rates`` and ``runs`` are (failing, normal)."""
    number, fires = NUMBERS[name]
    return Calibration(name, number, fires, float(threshold), float(auc), *rates, *runs,
                       tuple(normal_quantiles))


# CALIBRATION: generated by benchmarks/eval_reports.py --calibrate; do not edit by hand
CALIBRATION = {c.finding: c for c in (
    calibrated("low_attention_to_relevant", 2.402, auc=0.6427, rates=(0.65, 0.5326), runs=(40, 92),
               normal_quantiles=(0.4962, 0.8457, 1.072, 1.268, 1.415, 1.601, 1.688, 1.781, 1.896, 1.986,
                                 2.216, 2.379, 2.478, 2.68, 2.856, 2.979, 3.289, 3.924, 4.696, 5.176,
                                 6.139)),
    calibrated("high_attention_to_irrelevant", 1.733, auc=0.691, rates=(0.875, 0.6522), runs=(40, 92),
               normal_quantiles=(1.17, 1.315, 1.38, 1.449, 1.515, 1.586, 1.627, 1.71, 1.901, 2.079, 2.167,
                                 2.252, 2.36, 2.437, 2.771, 3.03, 3.361, 3.62, 4.325, 6.077, 13.73)),
    calibrated("attention_to_wrong_position", 0.5, auc=0.5439, rates=(0.275, 0.1848), runs=(40, 92),
               normal_quantiles=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                                 0.0, 1.0, 1.0, 1.0, 2.0, 3.0)),
    calibrated("output_unchanged_without_context", 1.494, auc=0.991, rates=(0.9, 0.0326), runs=(40, 92),
               normal_quantiles=(0.02438, 1.222, 2.355, 3.158, 3.731, 4.133, 4.56, 4.8, 4.993, 5.104,
                                 5.552, 5.842, 6.124, 6.441, 6.927, 7.21, 7.647, 8.054, 8.748, 9.188,
                                 11.87)),
    calibrated("attention_spread_thin", 0.4857, auc=0.6542, rates=(0.7143, 0.5), runs=(42, 42),
               normal_quantiles=(0.4465, 0.4645, 0.4667, 0.4704, 0.4717, 0.4762, 0.4798, 0.4818, 0.4839,
                                 0.4862, 0.4886, 0.4951, 0.4964, 0.4987, 0.5019, 0.5042, 0.5056, 0.5095,
                                 0.5144, 0.5242, 0.5325)),
    calibrated("attention_to_similar_context", 0.03976, auc=0.5357, rates=(0.0714, 0.0), runs=(42, 42),
               normal_quantiles=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                                 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)),
    calibrated("self_attention_loop", 0.886, auc=0.5527, rates=(0.4762, 0.4762), runs=(42, 42),
               normal_quantiles=(0.689, 0.7258, 0.7555, 0.7914, 0.8434, 0.8607, 0.8661, 0.8739, 0.8798,
                                 0.8835, 0.8858, 0.8886, 0.8909, 0.8965, 0.9006, 0.903, 0.9063, 0.9077,
                                 0.9103, 0.9186, 0.923)),
    calibrated("low_output_confidence", 1.994, auc=0.9099, rates=(0.6905, 0.1667), runs=(42, 42),
               normal_quantiles=(0.8617, 1.049, 1.175, 1.262, 1.327, 1.391, 1.466, 1.533, 1.577, 1.618,
                                 1.643, 1.672, 1.716, 1.781, 1.835, 1.886, 1.992, 2.027, 2.089, 2.214,
                                 2.911)),
    calibrated("high_self_attention", 0.9765, auc=0.75, rates=(0.0833, 0.0), runs=(12, 25),
               normal_quantiles=(0.6869, 0.6914, 0.7571, 0.7827, 0.8091, 0.8155, 0.8245, 0.8617, 0.885,
                                 0.8953, 0.902, 0.9035, 0.904, 0.9082, 0.9168, 0.9269, 0.9465, 0.9541,
                                 0.9682, 0.9721, 0.9762)),
    calibrated("pattern_in_attention", 0.4311, auc=0.9653, rates=(0.9167, 0.08), runs=(12, 25),
               normal_quantiles=(0.2315, 0.2663, 0.2698, 0.2871, 0.3024, 0.3082, 0.3161, 0.3344, 0.3487,
                                 0.3592, 0.3678, 0.3744, 0.3882, 0.4032, 0.4047, 0.4112, 0.4298, 0.4306,
                                 0.4375, 0.48, 0.5395)),
    calibrated("confident_repeat", 0.5977, auc=0.9306, rates=(1.0, 0.28), runs=(12, 25),
               normal_quantiles=(0.385, 0.44, 0.4747, 0.4833, 0.4963, 0.531, 0.546, 0.5531, 0.5681, 0.5998,
                                 0.64, 0.664, 0.6747, 0.6854, 0.6877, 0.6952, 0.7046, 0.7183, 0.7948,
                                 0.8567, 0.9001)),
)}
# end of CALIBRATION


def threshold_of(name: str, given: float | None) -> float:
    """``given``, or finding ``name``'s calibrated threshold when it is None."""
    return CALIBRATION[name].threshold if given is None else float(given)


def threshold_findings(checks: Iterable[tuple[str, np.ndarray, float, str]], labels: Sequence[str],
                       positions: Sequence[int]) -> list[Finding]:
    """A finding for each (name, values, threshold, what) of ``checks`` whose values are beyond the
    threshold, in the direction the finding fires (:data:`CALIBRATION`).

    ``values[i]`` belongs to item ``i``, described by ``labels[i]`` at ``positions[i]``.
    """
    out = []
    for name, values, threshold, what in checks:
        fired = [i for i, v in enumerate(values) if CALIBRATION[name].fires_on(v, threshold)]
        if fired:
            above = CALIBRATION[name].fires == "above"
            detail = "; ".join(f"{labels[i]}: {what} {values[i]:.2f}" for i in fired)
            worst = (max if above else min)(float(values[i]) for i in fired)
            out.append(finding(name, worst, threshold, f"{detail} {'>' if above else '<'} {threshold:g}",
                               [positions[i] for i in fired]))
    return out


def sort_findings(fired: Sequence[Finding]) -> tuple[list[Finding], list[Finding]]:
    """(findings, information): what fired, split by whether its number discriminated on the evaluation."""
    found = [f for f in fired if CALIBRATION[f.name].discriminates]
    return found, [f for f in fired if not CALIBRATION[f.name].discriminates]


def evaluated_model(trace: AttentionTrace) -> bool:
    """Whether the trace is of the model the evaluation ran (so its normal runs are a baseline)."""
    name = trace.model_name.lower()  # aw.load_model("smollm2") names it "smollm2"
    return name == "smollm2" or "smollm2-135m" in name


def baseline_percentiles(trace: AttentionTrace, weighting: str,
                         numbers: dict[str, float]) -> dict[str, float]:
    """Finding name → percentile of its number (``numbers[name]``) among the evaluation's normal
    runs; empty unless the trace is of the evaluated model and reads raw attention (the weighting
    the evaluation used). NaN numbers are left out."""
    if not evaluated_model(trace) or weighting != "attention":
        return {}
    return {k: CALIBRATION[k].percentile(v) for k, v in numbers.items() if np.isfinite(v)}


@dataclasses.dataclass(eq=False)
class FindingsReport:
    """Base of the three diagnosis reports: the findings that fired (``findings``, set by each report).

    Attributes
    ----------
    information : checks that fired but did not tell failing runs from normal ones on the
        evaluation (see :data:`CALIBRATION`): shown, not raised as findings.
    percentiles : finding name → where the report's number for it falls among the evaluation's
        normal runs of the same model, in percent (empty for other models, or ``weighting="norm"``).
    """

    information: list[Finding] = dataclasses.field(default_factory=list, kw_only=True)
    percentiles: dict[str, float] = dataclasses.field(default_factory=dict, kw_only=True)

    @property
    def finding_names(self) -> list[str]:
        """Names of the findings that fired."""
        return [f.name for f in self.findings]

    def _finding_lines(self) -> list[str]:
        lines = [f"finding: {f}" for f in self.findings] or ["no finding fired"]
        lines += [f"information, not a finding (it did not separate failing from normal runs: "
                  f"{CALIBRATION[f.name].describe()}): {f}" for f in self.information]
        lines += [f"baseline: {CALIBRATION[k].number} at percentile {p:.0f} of {CALIBRATION[k].model}'s "
                  f"normal runs" for k, p in self.percentiles.items()]
        return lines + [f"weighting: {describe_weighting(self.weighting)}"]


def require_generation(trace: AttentionTrace, what: str) -> None:
    """``ValueError`` naming ``what`` unless the trace has generated tokens."""
    if trace.n_generated == 0:
        raise ValueError(f"{what} needs generated tokens, but this trace is a forward pass (no generated "
                         "span); capture with max_new_tokens > 0")


def output_positions(trace: AttentionTrace, positions: Sequence[int], what: str,
                     caller: str) -> tuple[list[int], np.ndarray]:
    """Checked output positions and the query rows that produced them (position − 1).

    ``what`` names the argument and ``caller`` the report in errors.
    """
    require_generation(trace, caller)
    lo, hi = trace.spans["generated"]
    outs = []
    for p in positions:
        p = check_index(p, len(trace.tokens), what)
        if not lo <= p < hi or p == 0:
            raise IndexError(f"{what} {p} is not a generated token: generated tokens are at positions "
                             f"{max(lo, 1)}..{hi - 1} (or negative from the end)")
        outs.append(p)
    if not outs:
        raise ValueError(f"{what} is empty; pass at least one generated position")
    return outs, np.array(outs) - 1


def self_attention_block(trace: AttentionTrace, block: str | None, what: str) -> AttentionBlock:
    """Block ``block`` of the trace; ``ValueError`` naming ``what`` unless it is self-attention over
    the main tokens."""
    b = trace.block(block)
    if b.queries != "tokens" or b.keys != "tokens":
        raise ValueError(f"{what} reads self-attention over the generated tokens; block {b.name!r} maps "
                         f"{b.queries} to {b.keys}")
    return b


def report_sinks(trace: AttentionTrace, b: AttentionBlock, lsel: Sequence[int], hsel: Sequence[int],
                 ignore: bool, visible: np.ndarray, keep: Sequence[int], progress: bool | None,
                 weighting: str = "attention") -> list[int]:
    """Sink positions a report leaves out: found by both rules, seen by the query, not in ``keep``.

    Both rules, because Gu et al.'s α of the last few positions averages over a handful of
    queries and flags recent tokens in heads that attend locally. Finding them reads every
    selected head whole, once per trace (:func:`find_attention_sinks` keeps what it read), with
    the report's ``weighting``.
    """
    if not ignore:
        return []
    sinks = find_attention_sinks(trace, layers=lsel, heads=hsel, block=b.name, progress=progress,
                                 weighting=weighting).positions
    return sorted(set(sinks) & set(visible.tolist()) - set(keep))


def shares(attention: np.ndarray, positions: Sequence[int], sinks: Sequence[int]) -> np.ndarray:
    """Share of non-sink attention on ``positions``: attention (…, n_keys) → (…)."""
    mask = np.zeros(attention.shape[-1], bool)
    mask[list(positions)] = True
    mask[list(sinks)] = False
    rest = np.ones_like(mask)
    rest[list(sinks)] = False
    return attention[..., mask].sum(axis=-1) / np.maximum(attention[..., rest].sum(axis=-1), 1e-12)


def comparable_text(text: str) -> str:
    """Token text for spotting the same item twice: stripped and case-folded, "" without a letter or digit."""
    t = text.strip().casefold()
    return t if any(c.isalnum() for c in t) else ""
