"""The three diagnosis reports of the article "Understanding What Your Model Attends To":
the model ignored context, hallucinated, or repeated itself.

Each follows the article's investigation for its failure mode, reads the attention of the
queries that produced the suspect output tokens, and names the article's possible findings
that fire (see :mod:`attn_widget.analysis.findings`). With ``weighting="norm"`` each reads the
rows ``α_ij ‖f_h(x_j)‖`` renormalised (Kobayashi et al. 2020, :mod:`attn_widget.valuenorms`)
instead of the weights, its sinks found the same way, and its summary says so.

Given the model (``model=``, ``tokenizer=``), each also asks the model's output
(:mod:`attn_widget.analysis.evidence`): the output without the context, the model's confidence
in each token, the probability it gave a repeat. Summaries mark every finding as read from the
attention or from the model's output. Thresholds default to the ones calibrated on labelled
SmolLM2 runs, and a check that did not separate failing from normal runs there is shown as
information, not raised as a finding (:data:`~attn_widget.analysis.findings.CALIBRATION`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..selection import Indices, check_count
from ..trace import AttentionBlock, AttentionTrace
from ..valuenorms import describe_weighting
from .engine import entropy_scale, gather, query_row, select_layers_heads, span_positions, xlogx
from .evidence import (
    ContextAblation,
    OutputConfidence,
    RepeatProbability,
    context_ablation,
    output_confidence,
    repeat_probability,
)
from .findings import (
    Finding,
    FindingsReport,
    baseline_percentiles,
    comparable_text,
    finding,
    output_positions,
    report_sinks,
    require_generation,
    self_attention_block,
    shares,
    sort_findings,
    threshold_findings,
    threshold_of,
)


# ===================================================================== result types
@dataclasses.dataclass(eq=False)
class IgnoredContextReport(FindingsReport):
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
    weighting : ``"attention"`` or ``"norm"`` (value-weighted rows, renormalised).
    evidence : the output with and without the context (model output, not attention), when
        the report was given the model; else None.
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
    weighting: str = "attention"
    evidence: ContextAblation | None = None

    def summary(self) -> str:
        li = int(np.argmax(self.mass_by_layer))
        lines = [
            f"output {self.output_position} {self.output_token!r} (query {self.query_position}) → context "
            f"{''.join(self.context_tokens)!r} at {self.context_positions}",
            f"attention: to context {self.mass:.3f} (head mean over {len(self.layers)} layers); "
            f"{self.share:.1%} of non-sink attention vs {self.uniform_share:.1%} if uniform; rank "
            f"{self.rank}",
            f"strongest layer L{self.layers[li]} {self.mass_by_layer[li]:.3f}, its top head "
            f"H{self.strongest_head_by_layer[li]} {self.strongest_head_mass_by_layer[li]:.3f}",
            f"sinks {self.sink_positions} took {self.sink_mass:.3f}",
            "top outside: " + ", ".join(f"{p} {t!r} {v:.3f}" for p, t, v in self.top_outside),
        ]
        if self.evidence is not None:
            lines.append(self.evidence.summary())
        lines += self._finding_lines()
        return "\n".join(lines)


@dataclasses.dataclass(eq=False)
class HallucinationReport(FindingsReport):
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
    weighting : ``"attention"`` or ``"norm"`` (value-weighted rows, renormalised).
    evidence : the model's confidence in each output token (model output, not attention), when
        the report was given the model; else None.
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
    weighting: str = "attention"
    evidence: OutputConfidence | None = None

    def summary(self) -> str:
        lines = [f"attention: {p} {t!r}: normalised entropy {e:.2f}, similar-context share {s:.1%}, "
                 f"own-output share {g:.1%}" for p, t, e, s, g in zip(self.positions, self.tokens,
                                                          self.normalised_entropy, self.similar_share,
                                                          self.generated_share)]
        if self.evidence is not None:
            lines.append(self.evidence.summary())
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
class RepetitionReport(FindingsReport):
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
    weighting : ``"attention"`` or ``"norm"`` (value-weighted rows, renormalised).
    evidence : the probability the model gave each repeat (model output, not attention), when
        the report was given the model; else None.
    """

    repeats: list[Repeat]
    self_share: np.ndarray
    pattern_correlation: np.ndarray
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    sink_positions: list[int]
    findings: list[Finding]
    thresholds: dict[str, float]
    weighting: str = "attention"
    evidence: RepeatProbability | None = None

    def summary(self) -> str:
        if not self.repeats:
            return (f"no repeated n-gram of ≥ {int(self.thresholds['min_length'])} tokens in the generated "
                    f"text (weighting: {describe_weighting(self.weighting)})")
        lines = [f"{r.text!r} at {r.start} repeats at {r.start + r.shift} ({r.length} tokens): attention: "
                 f"own-output share {s:.1%}, pattern correlation {c:.2f}"
                 for r, s, c in zip(self.repeats, self.self_share, self.pattern_correlation)]
        if self.evidence is not None:
            lines.append(self.evidence.summary())
        lines += self._finding_lines()
        return "\n".join(lines)


# ===================================================================== reports
def ignored_context(trace: AttentionTrace, output_position: int, context: str | Sequence[int], *,
                    occurrence: int = 0, layers: Indices = None, heads: Indices = None,
                    low_ratio: float | None = None, irrelevant_ratio: float | None = None,
                    wrong_count: float | None = None, position_window: int = 2, top_k: int = 5,
                    ignore_sinks: bool = True, block: str | None = None, progress: bool | None = None,
                    weighting: str = "attention", model=None, tokenizer=None, ablation: str = "drop",
                    change_threshold: float | None = None) -> IgnoredContextReport:
    """The "model ignored context" investigation of the article "Understanding What Your Model
    Attends To", for one output token.

    Reads the attention of the query that produced the token at ``output_position`` (its
    generation step) to the ``context`` span, per layer, and checks the article's possible
    findings for this failure mode (each threshold defaults to its calibrated value,
    ``CALIBRATION[name].threshold``):

    ``low_attention_to_relevant``
        the span's share of non-sink attention is below ``low_ratio`` × the share it would get
        if that attention were uniform over the positions the query sees.
    ``high_attention_to_irrelevant``
        a non-sink position outside the span gets more than ``irrelevant_ratio`` × the span's
        whole mass.
    ``attention_to_wrong_position``
        more than ``wrong_count`` positions within ``position_window`` tokens of the span
        (default 2), or holding another occurrence of a span token's text, get more attention
        than the span's best token.

    Given ``model`` and ``tokenizer`` (the model the trace was captured from), it also runs the
    text without the context (:func:`~attn_widget.analysis.evidence.context_ablation`,
    ``ablation="drop"`` or ``"replace"``) and checks, from the model's output:

    ``output_unchanged_without_context``
        the output token's log-probability with the context minus without it is below
        ``change_threshold``: the model gives this output as readily without the context.

    A check whose number did not separate runs that ignored the context from runs that used it
    on the evaluation is listed in ``information``, not ``findings``.

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
    weighting : ``"attention"``, or ``"norm"``: each head's row ``α_ij ‖f_h(x_j)‖`` renormalised
        (how much of what the head moved came from each token), sinks found the same way. The
        thresholds were calibrated on ``"attention"``.
    model, tokenizer : the causal language model and its tokenizer, for the evidence from its output.

    Returns
    -------
    IgnoredContextReport
    """
    b = trace.check_weighting(weighting, block)
    li, hi, lsel, hsel = select_layers_heads(trace, b, layers, heads)
    out_pos, q = output_positions(trace, [output_position], "output_position", "ignored_context")
    out_pos, q = out_pos[0], int(q[0])
    span = span_positions(trace, b, context, occurrence, "context")
    if b.causal and max(span) > q:
        raise ValueError(f"context {context!r} covers positions {span}, but the query at {q} that produced "
                         f"output_position {out_pos} sees only positions 0..{q}; pass a context from before "
                         "the output")
    visible = np.arange(q + 1 if b.causal else b.n_keys)
    rows = query_row(b, li, hi, q, visible, weighting)
    mass_lh = rows[:, :, span].sum(axis=-1)
    strongest = mass_lh.argmax(axis=1)
    attention = rows.mean(axis=(0, 1))
    mass = float(attention[span].sum())
    sinks = report_sinks(trace, b, lsel, hsel, ignore_sinks, visible, span, progress, weighting)
    candidates = np.setdiff1d(visible, sinks)
    outside = np.setdiff1d(candidates, span)
    share = mass / max(float(attention[candidates].sum()), 1e-12)
    uniform = len(span) / len(candidates)
    best = float(attention[span].max())
    rank = 1 + int((attention[outside] > best).sum())
    table = trace.sequence(b.keys)
    order = outside[np.argsort(-attention[outside], kind="stable")]
    top = [(int(p), table.display[p], float(attention[p])) for p in order[:top_k]]
    span_texts = {comparable_text(table.text[p]) for p in span} - {""}
    dist = np.abs(outside[:, None] - np.asarray(span)[None, :]).min(axis=1)
    near = (dist <= position_window) | np.array([comparable_text(table.text[p]) in span_texts
                                                 for p in outside], bool)
    wrong = [(int(p), table.display[p], float(attention[p])) for p in order
             if near[np.searchsorted(outside, p)] and attention[p] > best]
    low_ratio = threshold_of("low_attention_to_relevant", low_ratio)
    irrelevant_ratio = threshold_of("high_attention_to_irrelevant", irrelevant_ratio)
    wrong_count = threshold_of("attention_to_wrong_position", wrong_count)
    thresholds = {"low_ratio": low_ratio, "irrelevant_ratio": irrelevant_ratio, "wrong_count": wrong_count,
                  "position_window": float(position_window)}
    findings = []
    if share < low_ratio * uniform:
        findings.append(finding("low_attention_to_relevant", share, low_ratio * uniform,
                                f"the context gets {share:.1%} of non-sink attention, under "
                                f"{low_ratio:g} × the uniform {uniform:.1%}", span))
    if top and top[0][2] > irrelevant_ratio * mass:
        hits = [t for t in top if t[2] > irrelevant_ratio * mass]
        findings.append(finding("high_attention_to_irrelevant", top[0][2], irrelevant_ratio * mass,
                                ", ".join(f"{p} {t!r} {v:.3f}" for p, t, v in hits)
                                + f" each above the context's {mass:.3f}", [t[0] for t in hits]))
    if len(wrong) > wrong_count:
        findings.append(finding("attention_to_wrong_position", len(wrong), wrong_count,
                                ", ".join(f"{p} {t!r} {v:.3f}" for p, t, v in wrong)
                                + f" near or like the context get more than its best token ({best:.3f})",
                                [w[0] for w in wrong]))
    numbers = {"low_attention_to_relevant": share / uniform,
               "high_attention_to_irrelevant": top[0][2] / max(mass, 1e-12) if top else 0.0,
               "attention_to_wrong_position": float(len(wrong))}
    evidence = None
    if model is not None:
        evidence = context_ablation(model, needs_tokenizer(tokenizer, "ignored_context"), trace, out_pos,
                                    context, occurrence=occurrence, ablation=ablation)
        change_threshold = thresholds["change_threshold"] = threshold_of("output_unchanged_without_context",
                                                                         change_threshold)
        numbers["output_unchanged_without_context"] = e = evidence.logprob_change
        if e < change_threshold:
            findings.append(finding(
                "output_unchanged_without_context", e, change_threshold,
                f"log P({evidence.output_token!r}) {evidence.logprob_with:.2f} with the context, "
                f"{evidence.logprob_without:.2f} without: change {e:+.2f} < {change_threshold:g}", [out_pos]))
    findings, information = sort_findings(findings)
    return IgnoredContextReport(
        out_pos, q, trace.sequence(b.queries).display[out_pos], span, [table.display[p] for p in span],
        lsel, hsel, mass_lh.mean(axis=1), np.asarray(hsel)[strongest],
        mass_lh[np.arange(len(lsel)), strongest], attention, mass, sinks,
        float(attention[sinks].sum()), share, uniform, rank, top, wrong, findings, thresholds, weighting,
        evidence, information=information, percentiles=baseline_percentiles(trace, weighting, numbers))


def needs_tokenizer(tokenizer, what: str):
    """``tokenizer``; ``ValueError`` naming ``what`` when it is None (a model was given without one)."""
    if tokenizer is None:
        raise ValueError(f"{what} was given model= without tokenizer=; pass the model's tokenizer too")
    return tokenizer


def hallucination(trace: AttentionTrace, positions: int | Sequence[int], *, layers: Indices = None,
                  heads: Indices = None, spread_threshold: float | None = None,
                  similar_threshold: float | None = None, loop_threshold: float | None = None,
                  ignore_sinks: bool = True, block: str | None = None, progress: bool | None = None,
                  weighting: str = "attention", model=None, tokenizer=None,
                  confidence_threshold: float | None = None) -> HallucinationReport:
    """The "model hallucinated" investigation of the article "Understanding What Your Model
    Attends To", for suspect output tokens.

    For each output position, reads the attention of the query that produced it and checks the
    article's possible findings for this failure mode (each threshold defaults to its
    calibrated value, ``CALIBRATION[name].threshold``):

    ``attention_spread_thin``
        the per-head normalised entropy, averaged over layers and heads, exceeds
        ``spread_threshold`` (1 = uniform attention).
    ``attention_to_similar_context``
        more than ``similar_threshold`` of the non-sink attention goes to prompt tokens whose
        text occurs more than once in the prompt (items that could be confused).
    ``self_attention_loop``
        more than ``loop_threshold`` of the non-sink attention goes to generated tokens.

    Given ``model`` and ``tokenizer``, it also reads the model's output distribution at each
    position (:func:`~attn_widget.analysis.evidence.output_confidence`) and checks:

    ``low_output_confidence``
        the entropy of the next-token distribution, averaged over the positions, exceeds
        ``confidence_threshold`` nats.

    A check whose number did not separate answers about invented entities from answers about
    real ones on the evaluation is listed in ``information``, not ``findings``.

    Parameters
    ----------
    positions : one or more positions of generated tokens (negative counts from the end).
    weighting : ``"attention"``, or ``"norm"``: each head's row ``α_ij ‖f_h(x_j)‖`` renormalised,
        for the entropy and the shares alike (thresholds calibrated on ``"attention"``).
    model, tokenizer : the causal language model and its tokenizer, for the evidence from its output.

    Returns
    -------
    HallucinationReport
    """
    b = self_attention_block(trace, block, "hallucination")
    trace.check_weighting(weighting, b.name)
    li, hi, lsel, hsel = select_layers_heads(trace, b, layers, heads)
    outs, qs = output_positions(trace, np.atleast_1d(positions).tolist(), "positions", "hallucination")
    keys = np.arange(b.n_keys)
    rows = gather(b, li, hi, qs[:, None], keys[None, :], weighting=weighting)
    ent = -xlogx(rows).sum(axis=-1) * entropy_scale(b)[qs]
    attention = rows.mean(axis=(0, 1))
    table = trace.tokens
    p0, p1 = trace.spans.get("prompt", (0, trace.spans["generated"][0]))
    texts = [comparable_text(table.text[p]) if not table.special[p] else "" for p in range(p0, p1)]
    counts = Counter(texts)
    similar = [p0 + i for i, t in enumerate(texts) if t and counts[t] > 1]
    sinks = report_sinks(trace, b, lsel, hsel, ignore_sinks, keys, [], progress, weighting)
    generated = list(range(trace.spans["generated"][0], len(table)))
    similar_share = shares(attention, similar, sinks)
    generated_share = shares(attention, generated, sinks)
    ent_mean = ent.mean(axis=(0, 1))
    thresholds = {"spread_threshold": threshold_of("attention_spread_thin", spread_threshold),
                  "similar_threshold": threshold_of("attention_to_similar_context", similar_threshold),
                  "loop_threshold": threshold_of("self_attention_loop", loop_threshold)}
    labels = [f"{p} {table.display[p]!r}" for p in outs]
    findings = threshold_findings((
        ("attention_spread_thin", ent_mean, thresholds["spread_threshold"], "normalised entropy"),
        ("attention_to_similar_context", similar_share, thresholds["similar_threshold"],
         "share on repeated items"),
        ("self_attention_loop", generated_share, thresholds["loop_threshold"], "share on own output"),
    ), labels, outs)
    numbers = {"attention_spread_thin": float(ent_mean.max()),
               "attention_to_similar_context": float(similar_share.max()),
               "self_attention_loop": float(generated_share.max())}
    evidence = None
    if model is not None:
        evidence = output_confidence(model, needs_tokenizer(tokenizer, "hallucination"), trace, outs)
        t = thresholds["confidence_threshold"] = threshold_of("low_output_confidence", confidence_threshold)
        numbers["low_output_confidence"] = mean = float(evidence.entropy.mean())
        if mean > t:
            unsure = [i for i, e in enumerate(evidence.entropy) if e > t]
            findings.append(finding("low_output_confidence", mean, t,
                                    f"next-token entropy {mean:.2f} nats on average over {len(outs)} "
                                    f"tokens > {t:g}; above it: " + ", ".join(labels[i] for i in unsure),
                                    [outs[i] for i in unsure]))
    findings, information = sort_findings(findings)
    return HallucinationReport(outs, qs.tolist(), [table.display[p] for p in outs], lsel, hsel, ent_mean,
                               similar, similar_share, generated_share, sinks, findings, thresholds,
                               weighting, evidence, information=information,
                               percentiles=baseline_percentiles(trace, weighting, numbers))


def repetition(trace: AttentionTrace, *, min_length: int = 3, layers: Indices = None, heads: Indices = None,
               self_threshold: float | None = None, pattern_threshold: float | None = None, window: int = 32,
               ignore_sinks: bool = True, block: str | None = None, progress: bool | None = None,
               weighting: str = "attention", model=None, tokenizer=None,
               repeat_threshold: float | None = None) -> RepetitionReport:
    """The "model repeated itself" investigation of the article "Understanding What Your Model
    Attends To", over the generated text.

    Finds every maximal repeat of at least ``min_length`` generated tokens (a periodic stretch
    is reported once, at its shortest period) and checks, per repeat, the article's possible
    findings for this failure mode (each threshold defaults to its calibrated value,
    ``CALIBRATION[name].threshold``):

    ``high_self_attention``
        while the second copy was produced, more than ``self_threshold`` of the non-sink
        attention went to generated tokens.
    ``pattern_in_attention``
        the attention rows that produced corresponding tokens of the two copies correlate above
        ``pattern_threshold``: Pearson correlation per head over the last ``window`` keys
        (default 32) aligned by distance back from the query, sinks masked, averaged over
        heads, layers and token pairs.

    Given ``model`` (``tokenizer`` is accepted and not needed), it also scores each repeat
    from the model's output (:func:`~attn_widget.analysis.evidence.repeat_probability`):

    ``confident_repeat``
        the mean probability the model gave the second copy's tokens exceeds
        ``repeat_threshold``: it expected to repeat itself.

    A check whose number did not separate repeating from other generations on the evaluation
    is listed in ``information``, not ``findings``. ``weighting="norm"`` reads each head's rows
    ``α_ij ‖f_h(x_j)‖`` renormalised instead of ``α`` (thresholds calibrated on ``"attention"``).

    Returns
    -------
    RepetitionReport
    """
    b = self_attention_block(trace, block, "repetition")
    trace.check_weighting(weighting, b.name)
    require_generation(trace, "repetition")
    min_length = check_count(min_length, "min_length", minimum=1)
    li, hi, lsel, hsel = select_layers_heads(trace, b, layers, heads)
    g0 = trace.spans["generated"][0]
    table = trace.tokens
    repeats = [Repeat(g0 + s, d, n, "".join(table.text[g0 + s:g0 + s + n]))
               for s, d, n in _find_repeats(table.ids[g0:], min_length)]
    keys = np.arange(b.n_keys)
    sinks = report_sinks(trace, b, lsel, hsel, ignore_sinks and bool(repeats), keys, [], progress, weighting)
    generated = list(range(g0, len(table)))
    self_share = np.zeros(len(repeats))
    corr = np.zeros(len(repeats))
    for r_i, r in enumerate(repeats):
        first = np.arange(r.start, r.start + r.length)
        q1, q2 = first - 1, first + r.shift - 1
        attention = gather(b, li, hi, q2[:, None], keys[None, :], weighting=weighting).mean(axis=(0, 1))
        self_share[r_i] = shares(attention, generated, sinks).mean()
        corr[r_i] = _pattern_correlation(b, li, hi, q1, q2, window, sinks, weighting)
    thresholds = {"min_length": float(min_length),
                  "self_threshold": threshold_of("high_self_attention", self_threshold),
                  "pattern_threshold": threshold_of("pattern_in_attention", pattern_threshold),
                  "window": float(window)}
    checks = [("high_self_attention", self_share, thresholds["self_threshold"], "share on own output"),
              ("pattern_in_attention", corr, thresholds["pattern_threshold"], "row correlation")]
    evidence = None
    if model is not None:
        evidence = repeat_probability(model, trace, repeats)
        thresholds["repeat_threshold"] = threshold_of("confident_repeat", repeat_threshold)
        checks.append(("confident_repeat", evidence.probability, thresholds["repeat_threshold"],
                       "mean probability of the repeat"))
    labels = [f"{r.text!r} at {r.start + r.shift}" for r in repeats]
    seconds = [r.start + r.shift for r in repeats]
    findings, information = sort_findings(threshold_findings(checks, labels, seconds))
    numbers = {name: float(np.nanmax(values)) for name, values, _, _ in checks if np.isfinite(values).any()}
    return RepetitionReport(repeats, self_share, corr, lsel, hsel, sinks, findings, thresholds, weighting,
                            evidence, information=information,
                            percentiles=baseline_percentiles(trace, weighting, numbers))


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


def _pattern_correlation(b: AttentionBlock, li: np.ndarray, hi: np.ndarray, q1: np.ndarray, q2: np.ndarray,
                         window: int, sinks: Sequence[int], weighting: str) -> float:
    """Mean Pearson correlation of rows q1 vs q2, aligned by distance back from each query.

    Pair ``j`` compares keys ``q1[j] - d`` and ``q2[j] - d`` for ``d < min(window, q1[j] + 1)``,
    sinks masked. A pair with fewer than 3 keys left, or a constant row (a head with no pattern
    to repeat), has no correlation and is left out of the mean; NaN if nothing is left.
    """
    back = np.arange(int(min(window, q1.max() + 1)))[None, :]
    k1, k2 = q1[:, None] - back, q2[:, None] - back
    keep = (k1 >= 0) & ~(np.isin(k1, sinks) | np.isin(k2, sinks))
    x = gather(b, li, hi, q1[:, None], k1, weighting=weighting) * keep
    y = gather(b, li, hi, q2[:, None], k2, weighting=weighting) * keep
    n = keep.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = (x - x.sum(-1, keepdims=True) / n[:, None]) * keep
        yc = (y - y.sum(-1, keepdims=True) / n[:, None]) * keep
        r = (xc * yc).sum(-1) / np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    r = r[np.isfinite(r) & (n >= 3)]
    return float(r.mean()) if r.size else float("nan")
