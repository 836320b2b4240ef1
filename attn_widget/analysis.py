"""Metrics and diagnosis reports over an :class:`~attn_widget.trace.AttentionTrace`.

Pure numpy: nothing here needs torch, except :func:`induction_probe`, which runs a model and
imports :func:`attn_widget.capture` (and with it torch) when called. Every metric works on the trace's
packed float16 store one layer at a time, so memory stays at one layer in float32 even for
long runs.

Conventions
-----------
``A`` is one head's attention, rows are queries and columns keys. ``layers`` and ``heads``
arguments take model indices (an int, a sequence, or ``None`` for every captured one; negative
indices count from the end of the model); results keep the order asked for. ``block`` names
the trace's attention block (default: ``self``, or ``decoder`` for encoder-decoder models).
Position arguments accept negative values counted from the end, like Python lists.

Metrics (functions returning arrays or small result types): :func:`attention_from`,
:func:`attention_to`, :func:`layer_means`, :func:`attention_entropy`, :func:`head_scores`,
:func:`find_attention_sinks`, :func:`trace_influence`, :func:`attention_rollout`,
:func:`compare_attention`, :func:`span_attention`, :func:`induction_scores`,
:func:`induction_probe`.

Diagnosis reports, after the seed article's three failure modes and its finding names:
:func:`ignored_context`, :func:`hallucination`, :func:`repetition`. A report reads the
attention of the query that *produced* an output token (its generation step, row ``p - 1``
for the token at position ``p``). Attention sinks (positions most heads dump attention on,
usually position 0) take most of the mass in many models and would drown every other signal,
so by default the reports leave out the positions both sink rules of
:func:`find_attention_sinks` agree on (default thresholds, same layers and heads) from shares
and rankings, and report the mass they took separately (``ignore_sinks=False`` keeps them).

Attention shows where the model looked, not why: treat every finding as a place to
investigate, not as an explanation.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from .geometry import tril_flat_index
from .selection import check_index as _check_index
from .selection import format_ranges as _ranges
from .trace import AttentionBlock, AttentionTrace, TokenTable

Indices = int | Sequence[int] | None  # model layer or head indices; None = every captured one

__all__ = [
    "AttentionComparison", "AttentionSinks", "BigDiff", "Finding", "HallucinationReport",
    "HeadScores", "IgnoredContextReport", "Influence", "InductionScores", "Repeat",
    "RepetitionReport", "SequenceAlignment", "SpanAttention", "attention_entropy",
    "attention_from", "attention_rollout", "attention_to", "compare_attention",
    "find_attention_sinks", "hallucination", "head_scores", "ignored_context", "induction_probe",
    "induction_scores", "layer_means", "repetition", "span_attention", "trace_influence",
]

# The seed article's findings, with its one-line meaning of each.
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


# ===================================================================== result types
@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding of a diagnosis report that fired.

    Attributes
    ----------
    name : the seed's finding name (a key of :data:`FINDINGS`).
    meaning : the seed's one-line meaning of it.
    value : the number that crossed the threshold.
    threshold : the threshold it was compared with.
    detail : what fired, in words, with tokens and positions.
    positions : the positions it concerns (output positions or key positions, per report).
    """

    name: str
    meaning: str
    value: float
    threshold: float
    detail: str
    positions: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"{self.name} ({self.meaning}): {self.detail}"


def _finding(name: str, value: float, threshold: float, detail: str,
             positions: Sequence[int] = ()) -> Finding:
    return Finding(name, FINDINGS[name], float(value), float(threshold), detail,
                   tuple(int(p) for p in positions))


def _threshold_findings(checks, labels: Sequence[str], positions: Sequence[int]) -> list[Finding]:
    """A finding for each (name, values, threshold, what) whose values exceed the threshold.

    ``values[i]`` belongs to item ``i``, described by ``labels[i]`` at ``positions[i]``.
    """
    out = []
    for name, values, threshold, what in checks:
        fired = np.nonzero(values > threshold)[0]
        if len(fired):
            detail = "; ".join(f"{labels[i]}: {what} {values[i]:.2f}" for i in fired)
            out.append(_finding(name, values[fired].max(), threshold, f"{detail} > {threshold:g}",
                                [positions[i] for i in fired]))
    return out


class _Report:
    """What the three diagnosis reports share: their fired findings."""

    findings: list[Finding]

    @property
    def finding_names(self) -> list[str]:
        """Names of the findings that fired."""
        return [f.name for f in self.findings]

    def _finding_lines(self) -> list[str]:
        return [f"finding: {f}" for f in self.findings] or ["no finding fired"]


@dataclasses.dataclass(eq=False)
class HeadScores:
    """Per-head summary metrics, one (n_layers, n_heads) array each, for an all-heads grid.

    Row ``i`` of each array is model layer ``layers[i]``, column ``j`` model head ``heads[j]``.

    Attributes
    ----------
    normalised_entropy : ndarray of shape (n_layers, n_heads)
        Mean over queries of ``H_i / ln(n_i)``, the entropy of the query's attention divided by
        the log of the number of keys it can see; 0 = each query on one key, 1 = uniform.
        Queries that see a single key are left out of the mean.
    sink_score : ndarray of shape (n_layers, n_heads)
        Gu et al.'s ``α_0``: the attention position 0 receives, averaged over the queries that
        see it. The head has a sink at position 0 when it exceeds ε (0.3 by default).
    previous_token_score : ndarray of shape (n_layers, n_heads)
        ``mean_i A[i, i-1]`` over queries ``i ≥ 1``.
    self_score : ndarray of shape (n_layers, n_heads)
        ``mean_i A[i, i]``: attention of each query to its own position.
    layers, heads : model indices of the rows and columns.
    block : the attention block scored.

    ``previous_token_score`` and ``self_score`` are NaN for cross-attention, where queries and
    keys are different sequences.
    """

    METRICS: ClassVar[tuple[str, ...]] = ("normalised_entropy", "sink_score", "previous_token_score",
                                          "self_score")

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    normalised_entropy: np.ndarray
    sink_score: np.ndarray
    previous_token_score: np.ndarray
    self_score: np.ndarray
    block: str = "self"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``layers``, ``heads``, ``block`` and each metric as nested lists (NaN → None)."""
        out: dict[str, Any] = {"layers": list(self.layers), "heads": list(self.heads), "block": self.block}
        for name in self.METRICS:
            a = getattr(self, name)
            out[name] = [[None if np.isnan(x) else float(x) for x in row] for row in a]
        return out

    def top(self, metric: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the highest ``metric``, as (layer, head, score)."""
        return _top_heads(_metric(self, metric, self.METRICS), self.layers, self.heads, k)

    def summary(self) -> str:
        lines = [f"{len(self.layers)} layers × {len(self.heads)} heads ({self.block!r} block)"]
        for name in self.METRICS:
            a = getattr(self, name)
            if np.all(np.isnan(a)):
                continue
            best = ", ".join(f"L{layer}H{head} {v:.2f}" for layer, head, v in self.top(name, 3))
            lines.append(f"{name}: mean {np.nanmean(a):.3f}; highest {best}")
        return "\n".join(lines)


@dataclasses.dataclass(eq=False)
class AttentionSinks:
    """Attention sinks by the seed's rule and by Gu et al. (2024).

    Attributes
    ----------
    received : ndarray of shape (n_keys,)
        Seed rule: attention each position receives, averaged over layers, heads and all
        queries (queries that cannot see the position count as 0, as in the seed).
    threshold : float
        Seed rule: ``received.mean() + n_std · received.std(ddof=1)``.
    received_sinks : list of int
        Seed rule: positions with ``received > threshold``.
    alpha : ndarray of shape (n_layers, n_heads, n_keys)
        Gu et al.: ``α_k = Σ_{i≥k} A[i, k] / (T − k)``, the attention position ``k`` receives
        averaged over the queries that can see it (all queries when attention is not causal).
    head_share : ndarray of shape (n_keys,)
        Gu et al.: the share of heads for which ``α_k > epsilon``.
    head_sinks : list of int
        Positions with ``head_share >= min_share``.
    n_std, epsilon, min_share : the thresholds used.
    layers, heads : model indices of the heads used.
    tokens : display text of every key position.
    """

    received: np.ndarray
    threshold: float
    received_sinks: list[int]
    alpha: np.ndarray
    head_share: np.ndarray
    head_sinks: list[int]
    n_std: float
    epsilon: float
    min_share: float
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    tokens: list[str]

    @property
    def positions(self) -> list[int]:
        """Positions found by both rules."""
        return sorted(set(self.received_sinks) & set(self.head_sinks))

    def summary(self) -> str:
        seed = ", ".join(f"{p} {self.tokens[p]!r} ({self.received[p]:.3f})" for p in self.received_sinks)
        gu = ", ".join(f"{p} {self.tokens[p]!r} ({self.head_share[p]:.0%} of heads)"
                       for p in self.head_sinks)
        return (f"received attention > mean + {self.n_std:g}·std ({self.threshold:.3f}): {seed or 'none'}\n"
                f"α > {self.epsilon:g} in ≥ {self.min_share:.0%} of heads: {gu or 'none'}")


@dataclasses.dataclass(eq=False)
class Influence:
    """Which positions an output position attended to (:func:`trace_influence`).

    Attributes
    ----------
    position : the query position read.
    token : its display text.
    layers, heads : model indices averaged over.
    threshold : positions whose value exceeds it are listed.
    attention : ndarray of shape (n_keys,), the query's attention averaged over ``layers`` and
        ``heads``.
    influential_positions, attention_values : positions with ``attention > threshold`` and
        their values (the seed's two lists).
    rollout : ndarray of shape (n_keys,) or None; the query's row of the attention rollout from
        the first captured layer through ``max(layers)`` over all captured heads.
    rollout_positions, rollout_values : the same threshold applied to ``rollout``.
    tokens : display text of every key position.
    """

    position: int
    token: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    threshold: float
    attention: np.ndarray
    influential_positions: list[int]
    attention_values: list[float]
    rollout: np.ndarray | None
    rollout_positions: list[int]
    rollout_values: list[float]
    tokens: list[str]

    def summary(self) -> str:
        def listing(positions, values):
            return ", ".join(f"{p} {self.tokens[p]!r} {v:.3f}" for p, v in zip(positions, values)) or "none"

        lines = [f"query {self.position} {self.token!r}, layers {_ranges(self.layers)}: attention > "
                 f"{self.threshold:g}: {listing(self.influential_positions, self.attention_values)}"]
        if self.rollout is not None:
            lines.append(f"rollout > {self.threshold:g}: "
                         f"{listing(self.rollout_positions, self.rollout_values)}")
        return "\n".join(lines)


@dataclasses.dataclass(eq=False)
class SpanAttention:
    """How much one query attends to a span (:func:`span_attention`).

    Attributes
    ----------
    query_position : the query row read.
    positions : key positions of the span.
    tokens : their display text.
    mass : ndarray of shape (n_layers, n_heads), ``Σ_{k in span} A[query, k]`` per head.
    layers, heads : model indices of the rows and columns of ``mass``.
    """

    query_position: int
    positions: list[int]
    tokens: list[str]
    mass: np.ndarray
    layers: tuple[int, ...]
    heads: tuple[int, ...]

    @property
    def head_mean(self) -> np.ndarray:
        """ndarray of shape (n_layers,): the mean over heads of ``mass``."""
        return self.mass.mean(axis=1)

    @property
    def total(self) -> float:
        """The mean of ``mass`` over layers and heads."""
        return float(self.mass.mean())

    def summary(self) -> str:
        li, hi = np.unravel_index(int(np.argmax(self.mass)), self.mass.shape)
        return (f"query {self.query_position} → span {self.positions} {''.join(self.tokens)!r}: mean "
                f"{self.total:.3f} over {len(self.layers)} layers × {len(self.heads)} heads; strongest "
                f"L{self.layers[li]}H{self.heads[hi]} {self.mass[li, hi]:.3f}")


@dataclasses.dataclass(frozen=True)
class SequenceAlignment:
    """Token-level alignment of two sequences (``difflib.SequenceMatcher`` on token ids).

    pairs : ndarray of shape (n_aligned, 2), positions in sequence 1 and 2 that match.
    unaligned_1, unaligned_2 : positions of each sequence with no partner.
    """

    pairs: np.ndarray
    unaligned_1: tuple[int, ...]
    unaligned_2: tuple[int, ...]

    @property
    def identical(self) -> bool:
        return not self.unaligned_1 and not self.unaligned_2


@dataclasses.dataclass(frozen=True)
class BigDiff:
    """One (layer, head, query, key) where two traces differ by more than the threshold."""

    layer: int
    head: int
    query_1: int
    key_1: int
    query_2: int
    key_2: int
    diff: float


@dataclasses.dataclass(eq=False)
class AttentionComparison:
    """``|A1 − A2|`` of two traces of one model, on aligned tokens (:func:`compare_attention`).

    Attributes
    ----------
    max_diff, mean_diff : ndarray of shape (n_layers, n_heads)
        Max and mean over aligned (query, key) pairs that a query can see (for causal
        attention the masked upper triangle is left out of the mean).
    big_diffs : list of BigDiff
        The first ``max_positions`` entries with difference > ``threshold``, in (layer, head,
        query, key) order, with positions in both traces.
    n_big : int, how many entries exceed the threshold in all.
    queries, keys : SequenceAlignment of the query and key sequences (the same object for
        self-attention).
    threshold : the difference threshold used.
    layers, heads : model indices compared.
    """

    max_diff: np.ndarray
    mean_diff: np.ndarray
    big_diffs: list[BigDiff]
    n_big: int
    queries: SequenceAlignment
    keys: SequenceAlignment
    threshold: float
    layers: tuple[int, ...]
    heads: tuple[int, ...]

    @property
    def overall_max(self) -> float:
        return float(self.max_diff.max())

    @property
    def overall_mean(self) -> float:
        return float(self.mean_diff.mean())

    def summary(self) -> str:
        li, hi = np.unravel_index(int(np.argmax(self.max_diff)), self.max_diff.shape)
        lines = [f"max |A1−A2| {self.overall_max:.4f} (L{self.layers[li]}H{self.heads[hi]}), mean "
                 f"{self.overall_mean:.5f}; {self.n_big} entries > {self.threshold:g}"]
        for name, al in (("tokens", self.queries),) + ((("keys", self.keys),) if self.keys is not
                                                        self.queries else ()):
            if al.identical:
                lines.append(f"{name}: identical sequences ({len(al.pairs)})")
            else:
                lines.append(f"{name}: {len(al.pairs)} aligned; not aligned: run 1 {list(al.unaligned_1)}, "
                             f"run 2 {list(al.unaligned_2)}")
        lines += [f"L{d.layer}H{d.head} query {d.query_1} key {d.key_1}: {d.diff:.3f}"
                  for d in self.big_diffs]
        return "\n".join(lines)


@dataclasses.dataclass(eq=False)
class InductionScores:
    """Induction and duplicate-token scores on a sequence repeated twice.

    With the copies at positions ``offset .. offset+n-1`` and ``offset+n .. offset+2n-1``:

    Attributes
    ----------
    induction : ndarray of shape (n_layers, n_heads)
        Mean over the second copy of ``A[i, i − n + 1]`` (the token after the previous
        occurrence of the current one).
    duplicate : ndarray of shape (n_layers, n_heads)
        Mean over the second copy of ``A[i, i − n]`` (the previous occurrence itself).
    n, offset : the copy length and where the first copy starts.
    layers, heads : model indices of the rows and columns.
    trace : the probe's trace, when built by :func:`induction_probe`.
    """

    induction: np.ndarray
    duplicate: np.ndarray
    n: int
    offset: int
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    trace: AttentionTrace | None = dataclasses.field(default=None, repr=False)

    def top(self, role: str = "induction", k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the highest score for ``role`` (``induction`` or ``duplicate``)."""
        return _top_heads(_metric(self, role, ("induction", "duplicate")), self.layers, self.heads, k)

    def summary(self) -> str:
        return "\n".join(
            f"{role} (n={self.n}): max {getattr(self, role).max():.3f}; top "
            + ", ".join(f"L{layer}H{head} {v:.3f}" for layer, head, v in self.top(role, 5))
            for role in ("induction", "duplicate"))


@dataclasses.dataclass(eq=False)
class IgnoredContextReport(_Report):
    """Did an output token attend to the context it should have used? (:func:`ignored_context`).

    Attributes
    ----------
    output_position : position of the output token; ``query_position`` (= output_position − 1)
        is the query whose attention produced it.
    output_token : its display text.
    context_positions, context_tokens : the context span.
    layers, heads : model indices read.
    mass_by_layer : ndarray of shape (n_layers,), head-mean attention from the query to the
        span, per layer.
    strongest_head_by_layer : ndarray of int, shape (n_layers,), the model head attending most
        to the span in each layer; ``strongest_head_mass_by_layer`` its mass.
    attention : ndarray of shape (n_visible,), the query's attention averaged over layers and
        heads, over the keys it can see (``query_position + 1`` of them for causal attention).
    mass : ``attention`` summed over the span (= ``mass_by_layer.mean()``).
    sink_positions, sink_mass : sinks left out of shares and rankings, and the attention they took.
    share : the span's share of the attention that did not go to sinks.
    uniform_share : the share the span would get if that attention were uniform over the
        non-sink positions the query sees.
    rank : rank of the span's most-attended token among the non-sink positions the query sees
        (1 = most attended).
    top_outside : list of (position, token, attention), the most-attended non-sink positions
        outside the span.
    wrong_positions : list of (position, token, attention), positions within
        ``position_window`` of the span or holding the text of a span token that get more
        attention than the span's best token.
    findings : the findings that fired; ``thresholds`` the thresholds used.
    """

    output_position: int
    query_position: int
    output_token: str
    context_positions: list[int]
    context_tokens: list[str]
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    mass_by_layer: np.ndarray
    strongest_head_by_layer: np.ndarray
    strongest_head_mass_by_layer: np.ndarray
    attention: np.ndarray
    mass: float
    sink_positions: list[int]
    sink_mass: float
    share: float
    uniform_share: float
    rank: int
    top_outside: list[tuple[int, str, float]]
    wrong_positions: list[tuple[int, str, float]]
    findings: list[Finding]
    thresholds: dict[str, float]

    def summary(self) -> str:
        li = int(np.argmax(self.mass_by_layer))
        lines = [
            f"output {self.output_position} {self.output_token!r} (query {self.query_position}) → context "
            f"{''.join(self.context_tokens)!r} at {self.context_positions}",
            f"attention to context: {self.mass:.3f} (head mean over {len(self.layers)} layers); "
            f"{self.share:.1%} of non-sink attention vs {self.uniform_share:.1%} if uniform; rank "
            f"{self.rank}",
            f"strongest layer L{self.layers[li]} {self.mass_by_layer[li]:.3f}, its top head "
            f"H{self.strongest_head_by_layer[li]} {self.strongest_head_mass_by_layer[li]:.3f}",
            f"sinks {self.sink_positions} took {self.sink_mass:.3f}",
            "top outside: " + ", ".join(f"{p} {t!r} {v:.3f}" for p, t, v in self.top_outside),
        ]
        lines += self._finding_lines()
        return "\n".join(lines)


@dataclasses.dataclass(eq=False)
class HallucinationReport(_Report):
    """What suspect output tokens attended to (:func:`hallucination`).

    Attributes
    ----------
    positions : output positions examined; ``query_positions`` the queries that produced them.
    tokens : their display text.
    layers, heads : model indices read.
    normalised_entropy : ndarray of shape (n_positions,), per-head normalised entropy of the
        query's attention, averaged over layers and heads.
    similar_positions : prompt positions whose text (case-folded, stripped, with a letter or
        digit) occurs at more than one prompt position: items the model could confuse.
    similar_share : ndarray of shape (n_positions,), share of non-sink attention on them.
    generated_share : ndarray of shape (n_positions,), share of non-sink attention on generated
        tokens (the model's own output).
    sink_positions : sinks left out of the shares.
    findings : the findings that fired (``positions`` lists the output positions);
        ``thresholds`` the thresholds used.
    """

    positions: list[int]
    query_positions: list[int]
    tokens: list[str]
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    normalised_entropy: np.ndarray
    similar_positions: list[int]
    similar_share: np.ndarray
    generated_share: np.ndarray
    sink_positions: list[int]
    findings: list[Finding]
    thresholds: dict[str, float]

    def summary(self) -> str:
        lines = [f"{p} {t!r}: normalised entropy {e:.2f}, similar-context share {s:.1%}, own-output "
                 f"share {g:.1%}" for p, t, e, s, g in zip(self.positions, self.tokens,
                                                          self.normalised_entropy, self.similar_share,
                                                          self.generated_share)]
        lines += self._finding_lines()
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Repeat:
    """A stretch of generated tokens that occurs again ``shift`` positions later.

    start : trace position of the first copy; the second starts at ``start + shift``.
    length : tokens in each copy (copies overlap when ``length > shift``: periodic text).
    text : the first copy's text.
    """

    start: int
    shift: int
    length: int
    text: str


@dataclasses.dataclass(eq=False)
class RepetitionReport(_Report):
    """Repeated n-grams in the generated text and the attention during them (:func:`repetition`).

    Attributes
    ----------
    repeats : list of Repeat, longest first.
    self_share : ndarray of shape (n_repeats,), share of non-sink attention on generated tokens
        while the second copy was produced (head and layer mean, averaged over its tokens).
    pattern_correlation : ndarray of shape (n_repeats,), Pearson correlation between the
        attention rows that produced corresponding tokens of the two copies, aligned by
        distance back from the query over ``window`` keys, per head, averaged (sinks masked).
    layers, heads : model indices read.
    sink_positions : sinks left out of shares and correlations.
    findings : the findings that fired (``positions``: start of the second copy of each repeat
        that fired); ``thresholds`` the thresholds used.
    """

    repeats: list[Repeat]
    self_share: np.ndarray
    pattern_correlation: np.ndarray
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    sink_positions: list[int]
    findings: list[Finding]
    thresholds: dict[str, float]

    def summary(self) -> str:
        if not self.repeats:
            return (f"no repeated n-gram of ≥ {int(self.thresholds['min_length'])} tokens in the generated "
                    "text")
        lines = [f"{r.text!r} at {r.start} repeats at {r.start + r.shift} ({r.length} tokens): own-output "
                 f"share {s:.1%}, pattern correlation {c:.2f}"
                 for r, s, c in zip(self.repeats, self.self_share, self.pattern_correlation)]
        lines += self._finding_lines()
        return "\n".join(lines)


# ===================================================================== views
def attention_from(trace: AttentionTrace, position: int, *, layers: Indices = None,
                   heads: Indices = None, average: bool = True, block: str | None = None) -> np.ndarray:
    """What query ``position`` attends to.

    Returns
    -------
    ndarray of float32, shape (n_keys,) averaged over the selected layers and heads, or
    (n_layers, n_heads, n_keys) with ``average=False``.
    """
    b = trace.block(block)
    li, hi, _, _ = _select(trace, b, layers, heads)
    q = _check_index(position, b.n_queries, "position")
    rows = _gather(b, li, hi, np.array([[q]]), np.arange(b.n_keys)[None, :])[:, :, 0, :]
    return rows.mean(axis=(0, 1)) if average else rows


def attention_to(trace: AttentionTrace, position: int, *, layers: Indices = None,
                 heads: Indices = None, average: bool = True, block: str | None = None) -> np.ndarray:
    """How much every query attends to key ``position`` (a column of ``A``).

    Returns
    -------
    ndarray of float32, shape (n_queries,) averaged over the selected layers and heads, or
    (n_layers, n_heads, n_queries) with ``average=False``. Queries that cannot see the key hold 0.
    """
    b = trace.block(block)
    li, hi, _, _ = _select(trace, b, layers, heads)
    k = _check_index(position, b.n_keys, "position")
    cols = _gather(b, li, hi, np.arange(b.n_queries)[None, :], np.array([[k]]))[:, :, 0, :]
    return cols.mean(axis=(0, 1)) if average else cols


def layer_means(trace: AttentionTrace, *, layers: Indices = None, block: str | None = None) -> np.ndarray:
    """Head-averaged attention of every selected layer (the mean over the captured heads).

    Returns
    -------
    ndarray of float32, shape (n_layers, n_queries, n_keys). Memory: 4 · n_layers · T² bytes.
    """
    b = trace.block(block)
    _, _, lsel, _ = _select(trace, b, layers, None)
    return np.stack([_head_mean(b, layer) for layer in lsel])


# ===================================================================== per-head metrics
def attention_entropy(trace: AttentionTrace, *, layers: Indices = None, heads: Indices = None,
                      normalised: bool = False, block: str | None = None) -> np.ndarray:
    """Entropy of each query's attention, ``H_i = −Σ_k A[i,k] ln A[i,k]`` (0·ln 0 = 0).

    Parameters
    ----------
    normalised : divide by ``ln n_i``, the log of the number of keys query ``i`` can see
        (``i + 1`` for causal attention), so 1 is uniform; a query that sees one key gets 0.

    Returns
    -------
    ndarray of float32, shape (n_layers, n_heads, n_queries), in nats.
    """
    b = trace.block(block)
    li, hi, _, _ = _select(trace, b, layers, heads)
    g = _geometry(b)
    out = np.empty((len(li), len(hi), g.n_queries), np.float32)
    for j, values in _each_layer(b, li, hi):
        out[j] = _row_entropy(values, g)
    return out * g.entropy_scale if normalised else out


def head_scores(trace: AttentionTrace, *, layers: Indices = None, heads: Indices = None,
                block: str | None = None) -> HeadScores:
    """Per-head metrics for every selected head, in one pass over the trace.

    Returns
    -------
    HeadScores with (n_layers, n_heads) arrays ``normalised_entropy``, ``sink_score``,
    ``previous_token_score`` and ``self_score`` (see :class:`HeadScores` for definitions).
    """
    b = trace.block(block)
    li, hi, lsel, hsel = _select(trace, b, layers, heads)
    g = _geometry(b)
    shape = (len(li), len(hi))
    entropy = np.empty(shape)
    sink = np.empty(shape)
    prev = np.full(shape, np.nan)
    diag = np.full(shape, np.nan)
    seeing = g.entropy_scale > 0
    queries = np.arange(g.n_queries)
    square = b.queries == b.keys
    for j, values in _each_layer(b, li, hi):
        scaled = _row_entropy(values, g) * g.entropy_scale
        entropy[j] = scaled[:, seeing].mean(axis=1) if seeing.any() else np.nan
        sink[j] = _take(values, g, queries, np.zeros_like(queries)).sum(axis=-1) / g.seeing_queries[0]
        if square:
            prev[j] = _take(values, g, queries[1:], queries[1:] - 1).mean(axis=-1) if g.n_queries > 1 \
                else np.nan
            diag[j] = _take(values, g, queries, queries).mean(axis=-1)
    return HeadScores(lsel, hsel, entropy, sink, prev, diag, b.name)


def find_attention_sinks(trace: AttentionTrace, *, n_std: float = 2.0, epsilon: float = 0.3,
                         min_share: float = 0.5, layers: Indices = None, heads: Indices = None,
                         block: str | None = None) -> AttentionSinks:
    """Attention sinks by both rules: the seed's (mean + n_std·std) and Gu et al.'s (α > ε).

    Parameters
    ----------
    n_std : seed rule, standard deviations above the mean (default 2).
    epsilon : Gu et al.'s per-head threshold on ``α_k`` (default 0.3).
    min_share : a position is in ``head_sinks`` when at least this share of heads has it as a
        sink (default 0.5, a majority).

    Returns
    -------
    AttentionSinks
    """
    b = trace.block(block)
    li, hi, lsel, hsel = _select(trace, b, layers, heads)
    g = _geometry(b)
    received_by_head = np.empty((len(li), len(hi), g.n_keys))
    for j, values in _each_layer(b, li, hi):
        received_by_head[j] = _col_sums(values, g)
    received = received_by_head.mean(axis=(0, 1)) / g.n_queries
    # torch's std (the seed's) is the sample standard deviation
    threshold = float(received.mean() + n_std * (received.std(ddof=1) if received.size > 1 else 0.0))
    alpha = received_by_head / g.seeing_queries
    share = (alpha > epsilon).mean(axis=(0, 1))
    return AttentionSinks(received, threshold, _where(received > threshold), alpha, share,
                          _where(share >= min_share), n_std, epsilon, min_share, lsel, hsel,
                          _key_table(trace, b).display)


def span_attention(trace: AttentionTrace, query_position: int, span: str | Sequence[int], *,
                   occurrence: int = 0, layers: Indices = None, heads: Indices = None,
                   block: str | None = None) -> SpanAttention:
    """How much query ``query_position`` attends to ``span``, per layer and head.

    Parameters
    ----------
    span : a substring of the text (``"Paris"``, mapped to the tokens that cover it through the
        tokenizer's offsets), a span name (``"prompt"``), or a sequence of token positions.
    occurrence : which match of a substring to use (0 = first).

    Returns
    -------
    SpanAttention with ``mass`` of shape (n_layers, n_heads).
    """
    b = trace.block(block)
    li, hi, lsel, hsel = _select(trace, b, layers, heads)
    q = _check_index(query_position, b.n_queries, "query_position")
    keys = _span_positions(trace, b, span, occurrence, "span")
    rows = _gather(b, li, hi, np.array([[q]]), np.asarray(keys)[None, :])[:, :, 0, :]
    table = _key_table(trace, b)
    return SpanAttention(q, keys, [table.display[k] for k in keys], rows.sum(axis=-1), lsel, hsel)


# ===================================================================== influence and rollout
def attention_rollout(trace: AttentionTrace, *, start_layer: int | None = None, end_layer: int | None = None,
                      positions: Sequence[int] | None = None, block: str | None = None) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) from ``start_layer`` through ``end_layer``.

    Each layer becomes ``Â_l = 0.5 · mean_heads(A_l) + 0.5 · I`` with rows renormalised, and
    ``R = Â_end · … · Â_start``: row ``i`` of ``R`` is how much each input position flows into
    position ``i`` through the residual stream. The head mean is over the captured heads.

    Parameters
    ----------
    start_layer, end_layer : model layers (default: the first and last captured); every layer
        between them must have been captured.
    positions : query positions whose rows to return (default: all). Asking for a few rows
        costs O(n_layers · T²) instead of O(n_layers · T³).

    Returns
    -------
    ndarray of float32, shape (n_queries, n_keys), or (len(positions), n_keys).
    """
    b = trace.block(block)
    if b.queries != b.keys:
        raise ValueError(f"attention rollout needs self-attention; block {b.name!r} maps {b.queries} to "
                         f"{b.keys}")
    layers = _rollout_layers(trace, b, start_layer, end_layer)
    t = b.n_queries
    if positions is None:
        out = np.eye(t, dtype=np.float32)
        for layer in layers:
            out = _rollout_factor(b, layer) @ out
        return out
    rows = [_check_index(p, t, "positions") for p in np.atleast_1d(positions).tolist()]
    out = np.eye(t, dtype=np.float32)[rows]
    for layer in reversed(layers):
        out = out @ _rollout_factor(b, layer)
    return out


def trace_influence(trace: AttentionTrace, output_position: int, *, layers: Indices = None,
                    heads: Indices = None, threshold: float = 0.1, rollout: bool = True,
                    block: str | None = None) -> Influence:
    """Which positions query ``output_position`` attended to, as in the seed.

    The attention row of ``output_position`` averaged over ``heads`` and ``layers`` (default:
    the last captured layer, as in the seed), the positions above ``threshold``, and the same
    through attention rollout. To see the attention that *produced* generated token ``t``, pass
    ``trace.step_position(t)``.

    Parameters
    ----------
    threshold : list positions whose averaged attention exceeds it (default 0.1, the seed's).
    rollout : also compute the rollout row (needs every layer up to ``max(layers)`` captured).

    Returns
    -------
    Influence
    """
    b = trace.block(block)
    if layers is None:
        layers = b.layers[-1]
    li, hi, lsel, hsel = _select(trace, b, layers, heads)
    q = _check_index(output_position, b.n_queries, "output_position")
    rows = _gather(b, li, hi, np.array([[q]]), np.arange(b.n_keys)[None, :])[:, :, 0, :]
    attention = rows.mean(axis=(0, 1))
    keys = _key_table(trace, b).display
    hits = _where(attention > threshold)
    roll, roll_hits = None, []
    if rollout:
        roll = attention_rollout(trace, end_layer=max(lsel), positions=[q], block=b.name)[0]
        roll_hits = _where(roll > threshold)
    return Influence(q, trace.sequence(b.queries).display[q], lsel, hsel, float(threshold), attention,
                     hits, [float(attention[p]) for p in hits], roll, roll_hits,
                     [float(roll[p]) for p in roll_hits] if roll is not None else [], keys)


# ===================================================================== comparing runs
def compare_attention(trace_1: AttentionTrace, trace_2: AttentionTrace, *, layers: Indices = None,
                      heads: Indices = None, threshold: float = 0.1, max_positions: int = 10,
                      block: str | None = None) -> AttentionComparison:
    """``|A1 − A2|`` per layer and head between two runs of the same model.

    When the token sequences differ they are aligned first (``difflib.SequenceMatcher`` on
    token ids) and compared on aligned (query, key) pairs only; positions with no partner are
    reported in ``queries`` / ``keys``.

    Parameters
    ----------
    layers, heads : model indices to compare (default: those captured in both traces).
    threshold : a difference above it is listed in ``big_diffs`` (default 0.1, the seed's).
    max_positions : how many such entries to list (default 10, the seed's).

    Returns
    -------
    AttentionComparison with (n_layers, n_heads) ``max_diff`` and ``mean_diff``.
    """
    _check_same_model(trace_1, trace_2)
    b1, b2 = trace_1.block(block), trace_2.block(block)
    if b1.name != b2.name:
        raise ValueError(f"the traces' default blocks differ ({b1.name!r} vs {b2.name!r}); pass block=")
    layers = _captured_in_both(b1.layers, b2.layers, "layers") if layers is None else layers
    heads = _captured_in_both(b1.heads, b2.heads, "heads") if heads is None else heads
    li1, hi1, lsel, hsel = _select(trace_1, b1, layers, heads)
    li2, hi2, _, _ = _select(trace_2, b2, lsel, hsel)
    qal = _align(trace_1.sequence(b1.queries), trace_2.sequence(b2.queries))
    kal = qal if b1.keys == b1.queries else _align(trace_1.sequence(b1.keys), trace_2.sequence(b2.keys))
    if not len(qal.pairs) or not len(kal.pairs):
        raise ValueError("the two traces have no tokens in common to compare")
    # the aligned (query, key) pairs a query can see, in (query, key) order; the alignment is
    # monotonic, so a pair visible in run 1 is visible in run 2
    qi, ki = np.nonzero(kal.pairs[None, :, 0] <= qal.pairs[:, 0, None]) if b1.causal else np.nonzero(
        np.ones((len(qal.pairs), len(kal.pairs)), bool))
    q1, k1, q2, k2 = qal.pairs[qi, 0], kal.pairs[ki, 0], qal.pairs[qi, 1], kal.pairs[ki, 1]
    g1, g2 = _geometry(b1), _geometry(b2)
    idx1, idx2 = _flat_index(g1, q1, k1)[0], _flat_index(g2, q2, k2)[0]
    max_diff = np.zeros((len(lsel), len(hsel)))
    mean_diff = np.zeros_like(max_diff)
    big: list[BigDiff] = []
    n_big = 0
    for j in range(len(lsel)):
        diff = _float32(_flat(b1.data[li1[j]][hi1], g1)[:, idx1])
        diff -= _float32(_flat(b2.data[li2[j]][hi2], g2)[:, idx2])
        np.abs(diff, out=diff)
        max_diff[j] = diff.max(axis=1)
        mean_diff[j] = diff.mean(axis=1)
        over = diff > threshold
        n_big += int(np.count_nonzero(over))
        if len(big) < max_positions and n_big:
            for h, v in np.argwhere(over)[:max_positions - len(big)]:
                big.append(BigDiff(lsel[j], hsel[h], int(q1[v]), int(k1[v]), int(q2[v]), int(k2[v]),
                                   float(diff[h, v])))
    return AttentionComparison(max_diff, mean_diff, big, n_big, qal, kal, float(threshold), lsel, hsel)


# ===================================================================== head roles
def induction_scores(trace: AttentionTrace, n: int, *, offset: int = 0, layers: Indices = None,
                     heads: Indices = None, block: str | None = None) -> InductionScores:
    """Induction and duplicate-token scores on a trace of ``n`` tokens repeated twice.

    Parameters
    ----------
    n : length of one copy; the copies are ``offset .. offset+n-1`` and ``offset+n .. offset+2n-1``
        and must hold the same token ids.
    offset : tokens before the first copy (a BOS token, say).

    Returns
    -------
    InductionScores with (n_layers, n_heads) ``induction`` and ``duplicate``.
    """
    b = trace.block(block)
    if b.queries != b.keys:
        raise ValueError(f"induction scores need self-attention; block {b.name!r} maps {b.queries} to "
                         f"{b.keys}")
    tokens = trace.sequence(b.queries)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer ≥ 2 (the length of one copy); got {n!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or not \
            0 <= offset <= len(tokens) - 2 * n:
        raise ValueError(f"offset must be between 0 and {len(tokens) - 2 * n} so that two copies of n={n} "
                         f"tokens fit in the trace's {len(tokens)}; got {offset!r}")
    first, second = tokens.ids[offset:offset + n], tokens.ids[offset + n:offset + 2 * n]
    if not np.array_equal(first, second):
        bad = int(np.argmax(first != second))
        raise ValueError(f"tokens {offset}..{offset + n - 1} and {offset + n}..{offset + 2 * n - 1} are not "
                         f"one sequence repeated twice (they first differ at copy index {bad}); check n "
                         "and offset")
    li, hi, lsel, hsel = _select(trace, b, layers, heads)
    i = np.arange(offset + n, offset + 2 * n)
    ind = _gather(b, li, hi, i, i - n + 1).mean(axis=-1)
    dup = _gather(b, li, hi, i, i - n).mean(axis=-1)
    return InductionScores(ind, dup, int(n), int(offset), lsel, hsel)


def induction_probe(model, tokenizer, n: int = 50, seed: int = 0, *, layers: Indices = None,
                    heads: Indices = None) -> InductionScores:
    """Run ``model`` on ``n`` random tokens repeated twice and score every head.

    The tokens are distinct whole words drawn at random (``numpy.random.default_rng(seed)``)
    from the vocabulary: tokens that decode to a space and ASCII letters and re-encode to
    themselves, so the text round-trips through the tokenizer exactly. The tokenizer's BOS token
    is put in front when it has one (and does not add it itself), so the first copy does not
    start at the attention sink.

    Returns
    -------
    InductionScores, with the probe's trace in ``.trace``.
    """
    from . import capture  # the public API: imports torch only now

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer ≥ 2; got {n!r}")
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    picked: list[int] = []
    for tid in np.random.default_rng(seed).permutation(len(tokenizer)).tolist():
        if tid in special:
            continue
        word = tokenizer.decode([tid])
        if (word[:1] == " " and word[1:].isascii() and word[1:].isalpha()
                and tokenizer.encode(word, add_special_tokens=False) == [tid]):
            picked.append(tid)
            if len(picked) == n:
                break
    if len(picked) < n:
        raise ValueError(f"n={n} is more than the {len(picked)} whole-word tokens this tokenizer has")
    text = tokenizer.decode(picked) * 2
    bos = getattr(tokenizer, "bos_token", None)
    if bos and tokenizer(text)["input_ids"][0] != tokenizer.bos_token_id:
        text = bos + text
    trace = capture(model, tokenizer, text, layers=layers, heads=heads)
    offset = len(trace.tokens) - 2 * n
    if offset < 0 or trace.tokens.ids[offset:].tolist() != picked * 2:
        raise RuntimeError("the probe text did not tokenize back to the chosen tokens; this tokenizer "
                           "merges across word boundaries")
    scores = induction_scores(trace, n, offset=offset)
    scores.trace = trace
    return scores


# ===================================================================== diagnosis reports
def ignored_context(trace: AttentionTrace, output_position: int, context: str | Sequence[int], *,
                    occurrence: int = 0, layers: Indices = None, heads: Indices = None,
                    low_ratio: float = 1.0, irrelevant_ratio: float = 1.0, position_window: int = 2,
                    top_k: int = 5, ignore_sinks: bool = True,
                    block: str | None = None) -> IgnoredContextReport:
    """The seed's "model ignored context" investigation for one output token.

    Reads the attention of the query that produced the token at ``output_position`` (its
    generation step) to the ``context`` span, per layer, and checks the seed's findings:

    ``low_attention_to_relevant``
        the span's share of non-sink attention is below ``low_ratio`` × the share it would get
        if that attention were uniform over the positions the query sees (default 1.0).
    ``high_attention_to_irrelevant``
        a non-sink position outside the span gets more than ``irrelevant_ratio`` × the span's
        whole mass (default 1.0).
    ``attention_to_wrong_position``
        a position within ``position_window`` tokens of the span (default 2), or another
        occurrence of a span token's text, gets more attention than the span's best token.

    Parameters
    ----------
    output_position : position of a generated token in the trace (negative counts from the end).
    context : a substring of the text (e.g. ``"Paris"``), a span name or token positions; it
        must come before the output.
    occurrence : which match of a substring to use (0 = first).
    layers, heads : what to average over (default: every captured one).
    top_k : how many outside positions to list.
    ignore_sinks : leave sinks (``find_attention_sinks(...).positions``) out of shares, ranks
        and outside positions.

    Returns
    -------
    IgnoredContextReport
    """
    b = trace.block(block)
    li, hi, lsel, hsel = _select(trace, b, layers, heads)
    out_pos, q = _output_positions(trace, b, [output_position], "output_position", "ignored_context")
    out_pos, q = out_pos[0], int(q[0])
    span = _span_positions(trace, b, context, occurrence, "context")
    if b.causal and max(span) > q:
        raise ValueError(f"context {context!r} covers positions {span}, but the query at {q} that produced "
                         f"output_position {out_pos} sees only positions 0..{q}; pass a context from before "
                         "the output")
    visible = np.arange(q + 1 if b.causal else b.n_keys)
    rows = _gather(b, li, hi, np.array([[q]]), visible[None, :])[:, :, 0, :]
    mass_lh = rows[:, :, span].sum(axis=-1)
    strongest = mass_lh.argmax(axis=1)
    attention = rows.mean(axis=(0, 1))
    mass = float(attention[span].sum())
    sinks = _report_sinks(trace, b, lsel, hsel, ignore_sinks, visible, span)
    candidates = np.setdiff1d(visible, sinks)
    outside = np.setdiff1d(candidates, span)
    share = mass / max(float(attention[candidates].sum()), 1e-12)
    uniform = len(span) / len(candidates)
    best = float(attention[span].max())
    rank = 1 + int((attention[outside] > best).sum())
    table = _key_table(trace, b)
    order = outside[np.argsort(-attention[outside], kind="stable")]
    top = [(int(p), table.display[p], float(attention[p])) for p in order[:top_k]]
    span_texts = {_norm(table.text[p]) for p in span} - {""}
    dist = np.abs(outside[:, None] - np.asarray(span)[None, :]).min(axis=1)
    near = (dist <= position_window) | np.array([_norm(table.text[p]) in span_texts for p in outside], bool)
    wrong = [(int(p), table.display[p], float(attention[p])) for p in order
             if near[np.searchsorted(outside, p)] and attention[p] > best]
    thresholds = {"low_ratio": float(low_ratio), "irrelevant_ratio": float(irrelevant_ratio),
                  "position_window": float(position_window)}
    findings = []
    if share < low_ratio * uniform:
        findings.append(_finding("low_attention_to_relevant", share, low_ratio * uniform,
                                 f"the context gets {share:.1%} of non-sink attention, under "
                                 f"{low_ratio:g} × the uniform {uniform:.1%}", span))
    if top and top[0][2] > irrelevant_ratio * mass:
        hits = [t for t in top if t[2] > irrelevant_ratio * mass]
        findings.append(_finding("high_attention_to_irrelevant", top[0][2], irrelevant_ratio * mass,
                                 ", ".join(f"{p} {t!r} {v:.3f}" for p, t, v in hits)
                                 + f" each above the context's {mass:.3f}", [t[0] for t in hits]))
    if wrong:
        findings.append(_finding("attention_to_wrong_position", wrong[0][2], best,
                                 ", ".join(f"{p} {t!r} {v:.3f}" for p, t, v in wrong)
                                 + f" near or like the context get more than its best token ({best:.3f})",
                                 [w[0] for w in wrong]))
    return IgnoredContextReport(
        out_pos, q, trace.sequence(b.queries).display[out_pos], span, [table.display[p] for p in span],
        lsel, hsel, mass_lh.mean(axis=1), np.asarray(hsel)[strongest],
        mass_lh[np.arange(len(lsel)), strongest], attention, mass, sinks,
        float(attention[sinks].sum()), share, uniform, rank, top, wrong, findings, thresholds)


def hallucination(trace: AttentionTrace, positions: int | Sequence[int], *, layers: Indices = None,
                  heads: Indices = None, spread_threshold: float = 0.7, similar_threshold: float = 0.5,
                  loop_threshold: float = 0.5, ignore_sinks: bool = True,
                  block: str | None = None) -> HallucinationReport:
    """The seed's "model hallucinated" investigation for suspect output tokens.

    For each output position, reads the attention of the query that produced it and checks:

    ``attention_spread_thin``
        the per-head normalised entropy, averaged over layers and heads, exceeds
        ``spread_threshold`` (default 0.7; 1 = uniform attention).
    ``attention_to_similar_context``
        more than ``similar_threshold`` (default 0.5) of the non-sink attention goes to prompt
        tokens whose text occurs more than once in the prompt (items that could be confused).
    ``self_attention_loop``
        more than ``loop_threshold`` (default 0.5, "mostly") of the non-sink attention goes to
        generated tokens. Late in a long generation, attention to recent tokens alone can pass
        0.5: read it together with the other findings.

    Parameters
    ----------
    positions : one or more positions of generated tokens (negative counts from the end).

    Returns
    -------
    HallucinationReport
    """
    b = _self_block(trace, block, "hallucination")
    li, hi, lsel, hsel = _select(trace, b, layers, heads)
    outs, qs = _output_positions(trace, b, np.atleast_1d(positions).tolist(), "positions", "hallucination")
    g = _geometry(b)
    keys = np.arange(b.n_keys)
    rows = _gather(b, li, hi, qs[:, None], keys[None, :])
    ent = -_xlogx(rows).sum(axis=-1) * g.entropy_scale[qs]
    attention = rows.mean(axis=(0, 1))
    table = trace.tokens
    p0, p1 = _prompt_span(trace)
    texts = [_norm(table.text[p]) if not table.special[p] else "" for p in range(p0, p1)]
    counts = Counter(texts)
    similar = [p0 + i for i, t in enumerate(texts) if t and counts[t] > 1]
    sinks = _report_sinks(trace, b, lsel, hsel, ignore_sinks, keys, [])
    generated = list(range(trace.spans["generated"][0], len(table)))
    similar_share = _shares(attention, similar, sinks)
    generated_share = _shares(attention, generated, sinks)
    ent_mean = ent.mean(axis=(0, 1))
    thresholds = {"spread_threshold": float(spread_threshold), "similar_threshold": float(similar_threshold),
                  "loop_threshold": float(loop_threshold)}
    findings = _threshold_findings((
        ("attention_spread_thin", ent_mean, spread_threshold, "normalised entropy"),
        ("attention_to_similar_context", similar_share, similar_threshold, "share on repeated items"),
        ("self_attention_loop", generated_share, loop_threshold, "share on own output"),
    ), [f"{p} {table.display[p]!r}" for p in outs], outs)
    return HallucinationReport(outs, qs.tolist(), [table.display[p] for p in outs], lsel, hsel, ent_mean,
                               similar, similar_share, generated_share, sinks, findings, thresholds)


def repetition(trace: AttentionTrace, *, min_length: int = 3, layers: Indices = None, heads: Indices = None,
               self_threshold: float = 0.5, pattern_threshold: float = 0.5, window: int = 32,
               ignore_sinks: bool = True, block: str | None = None) -> RepetitionReport:
    """The seed's "model repeated itself" investigation over the generated text.

    Finds every maximal repeat of at least ``min_length`` generated tokens (a periodic stretch
    is reported once, at its shortest period) and checks, per repeat:

    ``high_self_attention``
        while the second copy was produced, more than ``self_threshold`` (default 0.5) of the
        non-sink attention went to generated tokens.
    ``pattern_in_attention``
        the attention rows that produced corresponding tokens of the two copies correlate above
        ``pattern_threshold`` (default 0.5): Pearson correlation per head over the last
        ``window`` keys (default 32) aligned by distance back from the query, sinks masked,
        averaged over heads, layers and token pairs.

    Returns
    -------
    RepetitionReport
    """
    b = _self_block(trace, block, "repetition")
    _require_generation(trace, "repetition")
    if isinstance(min_length, bool) or not isinstance(min_length, (int, np.integer)) or min_length < 1:
        raise ValueError(f"min_length must be a positive integer; got {min_length!r}")
    li, hi, lsel, hsel = _select(trace, b, layers, heads)
    g0 = trace.spans["generated"][0]
    table = trace.tokens
    repeats = [Repeat(g0 + s, d, n, "".join(table.text[g0 + s:g0 + s + n]))
               for s, d, n in _find_repeats(table.ids[g0:], min_length)]
    keys = np.arange(b.n_keys)
    sinks = _report_sinks(trace, b, lsel, hsel, ignore_sinks and bool(repeats), keys, [])
    generated = list(range(g0, len(table)))
    self_share = np.zeros(len(repeats))
    corr = np.zeros(len(repeats))
    for r_i, r in enumerate(repeats):
        first = np.arange(r.start, r.start + r.length)
        q1, q2 = first - 1, first + r.shift - 1
        attention = _gather(b, li, hi, q2[:, None], keys[None, :]).mean(axis=(0, 1))
        self_share[r_i] = _shares(attention, generated, sinks).mean()
        corr[r_i] = _pattern_correlation(b, li, hi, q1, q2, window, sinks)
    thresholds = {"min_length": float(min_length), "self_threshold": float(self_threshold),
                  "pattern_threshold": float(pattern_threshold), "window": float(window)}
    findings = _threshold_findings((
        ("high_self_attention", self_share, self_threshold, "share on own output"),
        ("pattern_in_attention", corr, pattern_threshold, "row correlation"),
    ), [f"{r.text!r} at {r.start + r.shift}" for r in repeats], [r.start + r.shift for r in repeats])
    return RepetitionReport(repeats, self_share, corr, lsel, hsel, sinks, findings, thresholds)


# ===================================================================== packed-layout engine
@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Index arrays for one block shape. Causal blocks store rows end to end (row i: i+1 keys)."""

    causal: bool
    n_queries: int
    n_keys: int
    row_starts: np.ndarray  # (Q,) offset of each packed row (causal only)
    key_index: np.ndarray  # (P,) key of each packed entry (causal only)
    seeing_queries: np.ndarray  # (K,) queries that can see each key
    entropy_scale: np.ndarray  # (Q,) 1 / ln(keys the query sees), 0 where it sees one


@lru_cache(maxsize=8)
def _geometry_for(causal: bool, n_queries: int, n_keys: int) -> _Geometry:
    q = np.arange(n_queries)
    if causal:
        starts = q * (q + 1) // 2
        key_index = np.arange(n_queries * (n_queries + 1) // 2) - np.repeat(starts, q + 1)
        seeing = n_queries - np.arange(n_keys)
        visible = q + 1
    else:
        starts = key_index = np.zeros(0, np.int64)
        seeing = np.full(n_keys, n_queries)
        visible = np.full(n_queries, n_keys)
    with np.errstate(divide="ignore"):
        scale = np.where(visible > 1, 1.0 / np.log(np.maximum(visible, 2)), 0.0).astype(np.float32)
    return _Geometry(causal, n_queries, n_keys, starts, key_index, seeing, scale)


def _geometry(b: AttentionBlock) -> _Geometry:
    return _geometry_for(b.causal, b.n_queries, b.n_keys)


def _each_layer(b: AttentionBlock, li: np.ndarray, hi: np.ndarray):
    """(j, stored values of layer li[j] for heads hi): (H, P) packed or (H, Q, K) dense."""
    heads = slice(None) if np.array_equal(hi, np.arange(b.data.shape[1])) else hi
    for j, layer in enumerate(li):
        yield j, b.data[layer][heads]


def _flat_index(g: _Geometry, q, k) -> tuple[np.ndarray, np.ndarray]:
    """Index of ``A[q, k]`` in one head's flattened store, and where it exists.

    Broadcasts ``q`` and ``k``; the index is 0 where the key is out of range or, for causal
    attention, after the query (``ok`` is False there).
    """
    q, k = np.broadcast_arrays(np.asarray(q), np.asarray(k))
    ok = (k >= 0) & (k < g.n_keys) & (q >= 0) & (q < g.n_queries)
    if g.causal:
        ok &= k <= q
        return np.where(ok, q * (q + 1) // 2 + k, 0), ok
    return np.where(ok, q * g.n_keys + k, 0), ok


def _flat(values: np.ndarray, g: _Geometry) -> np.ndarray:
    """One layer's values as (H, entries per head)."""
    return values if g.causal else values.reshape(values.shape[0], -1)


def _take(values: np.ndarray, g: _Geometry, q, k) -> np.ndarray:
    """float32 ``A[q, k]`` for broadcastable position arrays over one layer's ``values``.

    ``values`` is (H, P) packed or (H, Q, K) dense; the result is (H, *broadcast(q, k).shape),
    0 where the key is out of range or a causal query cannot see it.
    """
    idx, ok = _flat_index(g, q, k)
    out = _float32(_flat(values, g)[:, idx])
    out *= ok
    return out


def _gather(b: AttentionBlock, li: np.ndarray, hi: np.ndarray, q, k) -> np.ndarray:
    """float32 ``A[q, k]`` for selected layers and heads: (n_layers, n_heads, *broadcast shape)."""
    g = _geometry(b)
    return np.stack([_take(b.data[layer][hi], g, q, k) for layer in li])


def _row_sums(values: np.ndarray, g: _Geometry) -> np.ndarray:
    if g.causal:
        return np.add.reduceat(values, g.row_starts, axis=-1)
    return values.sum(axis=-1)


def _col_sums(values: np.ndarray, g: _Geometry) -> np.ndarray:
    """(H, K) column sums of one layer's values."""
    values = _float32(values)
    if not g.causal:
        return values.sum(axis=-2)
    return np.stack([np.bincount(g.key_index, weights=v, minlength=g.n_keys) for v in values])


# A float16 has 65,536 bit patterns: looking up its float32 value or its x·ln x in a table is
# several times faster than converting and taking the log of millions of values.
@lru_cache(maxsize=1)
def _half_tables() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    with np.errstate(invalid="ignore"):  # the NaN and infinity patterns
        return x.astype(np.float32), _xlogx_exact(x).astype(np.float32)


def _xlogx_exact(x: np.ndarray) -> np.ndarray:
    """x·ln x with 0·ln 0 = 0 (NaN for negative or NaN x)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1)), np.where(x == 0, 0, np.nan))


def _float32(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.float16:
        return _half_tables()[0][values.view(np.uint16)]
    return values.astype(np.float32)


def _xlogx(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.float16:
        return _half_tables()[1][values.view(np.uint16)]
    return _xlogx_exact(values).astype(np.float32)


def _row_entropy(values: np.ndarray, g: _Geometry) -> np.ndarray:
    """Entropy in nats of each query row of one layer's packed or dense values."""
    return -_row_sums(_xlogx(values), g)


# ===================================================================== helpers
def _select(trace: AttentionTrace, b: AttentionBlock, layers, heads):
    """Positional indices into ``b.data`` and the model indices, for layer and head selections."""
    lsel = _model_indices(layers, b.layers, trace.model.get("n_layers"), "layers")
    hsel = _model_indices(heads, b.heads, trace.model.get("n_heads"), "heads")
    return (np.array([b.layer_pos(x) for x in lsel], np.intp),
            np.array([b.head_pos(x) for x in hsel], np.intp), lsel, hsel)


def _model_indices(wanted, captured: tuple[int, ...], n_model, what: str) -> tuple[int, ...]:
    if wanted is None:
        return tuple(captured)
    items = [wanted] if isinstance(wanted, (int, np.integer)) else list(wanted)
    n = int(n_model) if n_model else max(captured) + 1
    out = []
    for x in items:
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
            raise TypeError(f"{what} must be integers (model indices); got {x!r}")
        out.append(int(x) + n if x < 0 else int(x))
    if not out:
        raise ValueError(f"{what} is empty; pass None for every captured one ({_ranges(captured)})")
    return tuple(out)


def _key_table(trace: AttentionTrace, b: AttentionBlock) -> TokenTable:
    return trace.sequence(b.keys)


def _span_positions(trace: AttentionTrace, b: AttentionBlock, span, occurrence: int, what: str) -> list[int]:
    table = _key_table(trace, b)
    if isinstance(span, str):
        if b.keys == "tokens" and span in trace.spans:
            lo, hi = trace.spans[span]
            positions = list(range(lo, hi))
        else:
            try:
                positions = table.find(span, occurrence)
            except ValueError as e:
                raise ValueError(f"{what}={span!r}: {e}") from None
    else:
        positions = sorted({_check_index(int(p), len(table), f"{what} position") for p in span})
    if not positions:
        raise ValueError(f"{what} {span!r} covers no tokens; pass a non-empty substring or positions")
    return positions


def _require_generation(trace: AttentionTrace, what: str) -> None:
    if trace.n_generated == 0:
        raise ValueError(f"{what} needs generated tokens, but this trace is a forward pass (no generated "
                         "span); capture with max_new_tokens > 0")


def _output_positions(trace: AttentionTrace, b: AttentionBlock, positions: Sequence[int], what: str,
                      caller: str) -> tuple[list[int], np.ndarray]:
    """Checked output positions and the query rows that produced them (position − 1)."""
    _require_generation(trace, caller)
    lo, hi = trace.spans["generated"]
    outs = []
    for p in positions:
        p = _check_index(p, len(trace.tokens), what)
        if not lo <= p < hi or p == 0:
            raise IndexError(f"{what} {p} is not a generated token: generated tokens are at positions "
                             f"{max(lo, 1)}..{hi - 1} (or negative from the end)")
        outs.append(p)
    if not outs:
        raise ValueError(f"{what} is empty; pass at least one generated position")
    return outs, np.array(outs) - 1


def _self_block(trace: AttentionTrace, block: str | None, what: str) -> AttentionBlock:
    b = trace.block(block)
    if b.queries != "tokens" or b.keys != "tokens":
        raise ValueError(f"{what} reads self-attention over the generated tokens; block {b.name!r} maps "
                         f"{b.queries} to {b.keys}")
    return b


def _prompt_span(trace: AttentionTrace) -> tuple[int, int]:
    return trace.spans.get("prompt", (0, trace.spans["generated"][0]))


def _report_sinks(trace, b, lsel, hsel, ignore: bool, visible: np.ndarray, keep: Sequence[int]) -> list[int]:
    """Sink positions a report leaves out: found by both rules, seen by the query, not in ``keep``.

    Both rules, because Gu et al.'s α of the last few positions averages over a handful of
    queries and flags recent tokens in heads that attend locally.
    """
    if not ignore:
        return []
    sinks = find_attention_sinks(trace, layers=lsel, heads=hsel, block=b.name).positions
    return sorted(set(sinks) & set(visible.tolist()) - set(keep))


def _shares(attention: np.ndarray, positions: Sequence[int], sinks: Sequence[int]) -> np.ndarray:
    """Share of non-sink attention on ``positions``: attention (…, K) → (…)."""
    mask = np.zeros(attention.shape[-1], bool)
    mask[list(positions)] = True
    mask[list(sinks)] = False
    rest = np.ones_like(mask)
    rest[list(sinks)] = False
    return attention[..., mask].sum(axis=-1) / np.maximum(attention[..., rest].sum(axis=-1), 1e-12)


def _pattern_correlation(b, li, hi, q1: np.ndarray, q2: np.ndarray, window: int, sinks) -> float:
    """Mean Pearson correlation of rows q1 vs q2, aligned by distance back from each query.

    Pair ``j`` compares keys ``q1[j] - d`` and ``q2[j] - d`` for ``d < min(window, q1[j] + 1)``,
    sinks masked. A pair with fewer than 3 keys left, or a constant row (a head with no pattern
    to repeat), has no correlation and is left out of the mean; NaN if nothing is left.
    """
    back = np.arange(int(min(window, q1.max() + 1)))[None, :]
    k1, k2 = q1[:, None] - back, q2[:, None] - back
    keep = (k1 >= 0) & ~(np.isin(k1, sinks) | np.isin(k2, sinks))
    x = _gather(b, li, hi, q1[:, None], k1) * keep
    y = _gather(b, li, hi, q2[:, None], k2) * keep
    n = keep.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = (x - x.sum(-1, keepdims=True) / n[:, None]) * keep
        yc = (y - y.sum(-1, keepdims=True) / n[:, None]) * keep
        r = (xc * yc).sum(-1) / np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    r = r[np.isfinite(r) & (n >= 3)]
    return float(r.mean()) if r.size else float("nan")


def _find_repeats(ids: np.ndarray, min_length: int) -> list[tuple[int, int, int]]:
    """Maximal repeats (start, shift, length) in ``ids``, longest first, periodic runs once."""
    ids = np.asarray(ids)
    kept: list[tuple[int, int, int]] = []
    for d in range(1, len(ids)):
        same = np.concatenate([[0], (ids[:-d] == ids[d:]).astype(np.int8), [0]])
        edges = np.diff(same)
        for s, e in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]):
            n = int(e - s)
            # a shift that is a multiple of a kept period inside the same stretch repeats nothing new
            if n >= min_length and not any(d % d0 == 0 and s0 <= s and s + d + n <= s0 + d0 + n0
                                           for s0, d0, n0 in kept):
                kept.append((int(s), d, n))
    return sorted(kept, key=lambda r: (-r[2], r[0]))


def _align(seq_1: TokenTable, seq_2: TokenTable) -> SequenceAlignment:
    a, b = seq_1.ids.tolist(), seq_2.ids.tolist()
    blocks = difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
    pairs = [(m.a + i, m.b + i) for m in blocks for i in range(m.size)]
    arr = np.array(pairs, np.intp).reshape(-1, 2)
    return SequenceAlignment(arr, tuple(sorted(set(range(len(a))) - set(arr[:, 0].tolist()))),
                             tuple(sorted(set(range(len(b))) - set(arr[:, 1].tolist()))))


def _captured_in_both(captured_1: tuple[int, ...], captured_2: tuple[int, ...], what: str) -> list[int]:
    common = [x for x in captured_1 if x in captured_2]
    if not common:
        raise ValueError(f"the traces captured no {what} in common (run 1: {_ranges(captured_1)}; run 2: "
                         f"{_ranges(captured_2)}); capture overlapping {what} to compare them")
    return common


def _check_same_model(t1: AttentionTrace, t2: AttentionTrace) -> None:
    def ident(t):
        return (t.model_name, t.model.get("n_layers"), t.model.get("n_heads"))

    if ident(t1) != ident(t2):
        raise ValueError(f"cannot compare traces from different models: trace_1 is {t1.model_name!r} "
                         f"({t1.model.get('n_layers')} layers × {t1.model.get('n_heads')} heads), trace_2 is "
                         f"{t2.model_name!r} ({t2.model.get('n_layers')} layers × {t2.model.get('n_heads')} "
                         "heads); capture both runs with the same model")


def _rollout_layers(trace: AttentionTrace, b: AttentionBlock, start, end) -> list[int]:
    n = trace.model.get("n_layers")
    start = b.layers[0] if start is None else _model_indices(start, b.layers, n, "start_layer")[0]
    end = b.layers[-1] if end is None else _model_indices(end, b.layers, n, "end_layer")[0]
    if end < start:
        raise ValueError(f"end_layer {end} is before start_layer {start}")
    missing = [x for x in range(start, end + 1) if x not in b.layers]
    if missing:
        raise ValueError(f"attention rollout through layers {start}..{end} needs every one of them, but "
                         f"layers {_ranges(missing)} were not captured (captured: {_ranges(b.layers)}); "
                         "pick start_layer/end_layer inside a captured run or capture all layers")
    return list(range(start, end + 1))


def _head_mean(b: AttentionBlock, layer: int) -> np.ndarray:
    """Dense float32 (n_queries, n_keys) mean over the captured heads of one model layer."""
    mean = _float32(b.data[b.layer_pos(layer)]).mean(axis=0)
    if not b.causal:
        return mean
    t = b.n_queries
    dense = np.zeros(t * t, np.float32)
    dense[tril_flat_index(t)] = mean
    return dense.reshape(t, t)


def _rollout_factor(b: AttentionBlock, layer: int) -> np.ndarray:
    """``Â = 0.5 · mean_heads(A) + 0.5 · I``, rows renormalised, dense (T, T) float32."""
    a = 0.5 * _head_mean(b, layer)
    a[np.diag_indices_from(a)] += 0.5
    a /= a.sum(axis=1, keepdims=True)
    return a


def _norm(text: str) -> str:
    t = text.strip().casefold()
    return t if any(c.isalnum() for c in t) else ""


def _where(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.nonzero(mask)[0]]


def _metric(result, name: str, allowed: Sequence[str]) -> np.ndarray:
    if name not in allowed:
        raise ValueError(f"metric must be one of {list(allowed)}; got {name!r}")
    return getattr(result, name)


def _top_heads(scores: np.ndarray, layers, heads, k: int) -> list[tuple[int, int, float]]:
    flat = np.where(np.isnan(scores), -np.inf, scores).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    return [(layers[i // scores.shape[1]], heads[i % scores.shape[1]], float(flat[i])) for i in order]

