"""What each head does: entropy, sink, previous-token and self scores, attention sinks, induction.

:func:`head_scores`, :func:`attention_entropy` and :func:`find_attention_sinks` read every
selected head in one pass over the trace (:mod:`.headstats`) and keep what they read on it;
:func:`induction_probe` runs a model (and imports torch) to build the repeated-sequence trace
that :func:`induction_scores` reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ..selection import Indices, check_count, is_int
from ..trace import AttentionTrace
from ..valuenorms import describe_weighting
from .engine import entropy_scale, gather, seeing_queries, select_layers_heads
from .headstats import head_stats


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

    weighting : ``"attention"``, or ``"norm"``: every metric read from the rows ``α_ij
        ‖f_h(x_j)‖`` renormalised (see :mod:`attn_widget.valuenorms`).

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
    weighting: str = "attention"

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
        lines = [f"{len(self.layers)} layers × {len(self.heads)} heads ({self.block!r} block); weighting: "
                 f"{describe_weighting(self.weighting)}"]
        for name in self.METRICS:
            a = getattr(self, name)
            if np.all(np.isnan(a)):
                continue
            best = ", ".join(f"L{layer}H{head} {v:.2f}" for layer, head, v in self.top(name, 3))
            lines.append(f"{name}: mean {np.nanmean(a):.3f}; highest {best}")
        return "\n".join(lines)


@dataclasses.dataclass(eq=False)
class AttentionSinks:
    """Attention sinks by two rules: the received-attention rule of the article "Understanding
    What Your Model Attends To", and the per-head rule of Gu et al. (2024), "When Attention Sink
    Emerges in Language Models".

    Attributes
    ----------
    received : ndarray of shape (n_keys,)
        Received-attention rule: attention each position receives, averaged over layers, heads
        and all queries (queries that cannot see the position count as 0, as in the article's
        ``attention.mean(dim=(0, 1, 2))``).
    threshold : float
        Received-attention rule: ``received.mean() + n_std · received.std(ddof=1)``.
    received_sinks : list of int
        Received-attention rule: positions with ``received > threshold``.
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
    weighting : ``"attention"``, or ``"norm"``: both rules applied to the rows ``α_ij
        ‖f_h(x_j)‖`` renormalised, where a sink whose value vector is short fades.
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
    weighting: str = "attention"

    @property
    def positions(self) -> list[int]:
        """Positions found by both rules."""
        return sorted(set(self.received_sinks) & set(self.head_sinks))

    def summary(self) -> str:
        above = ", ".join(f"{p} {self.tokens[p]!r} ({self.received[p]:.3f})" for p in self.received_sinks)
        gu = ", ".join(f"{p} {self.tokens[p]!r} ({self.head_share[p]:.0%} of heads)"
                       for p in self.head_sinks)
        return (f"received attention > mean + {self.n_std:g}·std ({self.threshold:.3f}): {above or 'none'}\n"
                f"α > {self.epsilon:g} in ≥ {self.min_share:.0%} of heads: {gu or 'none'}\n"
                f"weighting: {describe_weighting(self.weighting)}")


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
    weighting : ``"attention"``, or ``"norm"``: the scores read from the rows ``α_ij
        ‖f_h(x_j)‖`` renormalised (Kobayashi et al. 2020).
    """

    induction: np.ndarray
    duplicate: np.ndarray
    n: int
    offset: int
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    trace: AttentionTrace | None = dataclasses.field(default=None, repr=False)
    weighting: str = "attention"

    def top(self, role: str = "induction", k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the highest score for ``role`` (``induction`` or ``duplicate``)."""
        return _top_heads(_metric(self, role, ("induction", "duplicate")), self.layers, self.heads, k)

    def summary(self) -> str:
        return "\n".join(
            [f"weighting: {describe_weighting(self.weighting)}"] + [
                f"{role} (n={self.n}): max {getattr(self, role).max():.3f}; top "
                + ", ".join(f"L{layer}H{head} {v:.3f}" for layer, head, v in self.top(role, 5))
                for role in ("induction", "duplicate")])


def attention_entropy(trace: AttentionTrace, *, layers: Indices = None, heads: Indices = None,
                      normalised: bool = False, block: str | None = None,
                      progress: bool | None = None, weighting: str = "attention") -> np.ndarray:
    """Entropy of each query's attention, ``H_i = −Σ_k A[i,k] ln A[i,k]`` (0·ln 0 = 0).

    Parameters
    ----------
    normalised : divide by ``ln n_i``, the log of the number of keys query ``i`` can see
        (``i + 1`` for causal attention), so 1 is uniform; a query that sees one key gets 0.
    weighting : ``"attention"``, or ``"norm"``: the entropy of the rows ``α_ij ‖f_h(x_j)‖``
        renormalised.

    Returns
    -------
    ndarray of float32, shape (n_layers, n_heads, n_queries), in nats.
    """
    b = trace.check_weighting(weighting, block)
    li, hi, _, _ = select_layers_heads(trace, b, layers, heads)
    out = head_stats(trace, b, li, hi, ["entropy"], progress=progress, desc="attention_entropy",
                     weighting=weighting)["entropy"]
    return out * entropy_scale(b) if normalised else out


def head_scores(trace: AttentionTrace, *, layers: Indices = None, heads: Indices = None,
                block: str | None = None, progress: bool | None = None,
                weighting: str = "attention") -> HeadScores:
    """Per-head metrics for every selected head, in one pass over the trace.

    The per-head sums they come from are kept on the trace (``trace.computed``), so asking
    again, for fewer heads, or for :func:`find_attention_sinks` after it, reads them back.
    ``weighting="norm"`` scores the rows ``α_ij ‖f_h(x_j)‖`` renormalised instead of ``α``.

    Returns
    -------
    HeadScores with (n_layers, n_heads) arrays ``normalised_entropy``, ``sink_score``,
    ``previous_token_score`` and ``self_score`` (see :class:`HeadScores` for definitions).
    """
    b = trace.check_weighting(weighting, block)
    li, hi, lsel, hsel = select_layers_heads(trace, b, layers, heads)
    stats = head_stats(trace, b, li, hi, ["entropy", "first", "diagonal", "previous"], progress=progress,
                       desc="head_scores", weighting=weighting)
    scale = entropy_scale(b)
    seeing = scale > 0
    entropy = ((stats["entropy"][..., seeing] * scale[seeing]).mean(axis=-1, dtype=np.float64)
               if seeing.any() else np.full((len(li), len(hi)), np.nan))
    sink = stats["first"] / seeing_queries(b)[0]
    prev = stats["previous"] / (b.n_queries - 1) if b.n_queries > 1 else np.full_like(sink, np.nan)
    return HeadScores(lsel, hsel, entropy, sink, prev, stats["diagonal"] / b.n_queries, b.name, weighting)


def find_attention_sinks(trace: AttentionTrace, *, n_std: float = 2.0, epsilon: float = 0.3,
                         min_share: float = 0.5, layers: Indices = None, heads: Indices = None,
                         block: str | None = None, progress: bool | None = None,
                         weighting: str = "attention") -> AttentionSinks:
    """Attention sinks by both rules: received attention above mean + n_std·std (the article
    "Understanding What Your Model Attends To") and α > ε in enough heads (Gu et al., "When
    Attention Sink Emerges in Language Models").

    Parameters
    ----------
    n_std : received-attention rule, standard deviations above the mean (default 2, the article's).
    epsilon : Gu et al.'s per-head threshold on ``α_k`` (default 0.3).
    min_share : a position is in ``head_sinks`` when at least this share of heads has it as a
        sink (default 0.5, a majority).
    weighting : ``"attention"``, or ``"norm"``: both rules on the rows ``α_ij ‖f_h(x_j)‖``
        renormalised (a position that takes weight but contributes a short vector fades).

    Returns
    -------
    AttentionSinks
    """
    b = trace.check_weighting(weighting, block)
    li, hi, lsel, hsel = select_layers_heads(trace, b, layers, heads)
    received_by_head = head_stats(trace, b, li, hi, ["received"], progress=progress,
                                  desc="find_attention_sinks", weighting=weighting)["received"]
    received = received_by_head.mean(axis=(0, 1)) / b.n_queries
    # the article takes torch's std, whose default is the sample standard deviation
    threshold = float(received.mean() + n_std * (received.std(ddof=1) if received.size > 1 else 0.0))
    alpha = received_by_head / seeing_queries(b)
    share = (alpha > epsilon).mean(axis=(0, 1))
    return AttentionSinks(received, threshold, np.flatnonzero(received > threshold).tolist(), alpha, share,
                          np.flatnonzero(share >= min_share).tolist(), n_std, epsilon, min_share, lsel, hsel,
                          trace.sequence(b.keys).display, weighting)


def induction_scores(trace: AttentionTrace, n: int, *, offset: int = 0, layers: Indices = None,
                     heads: Indices = None, block: str | None = None,
                     progress: bool | None = None, weighting: str = "attention") -> InductionScores:
    """Induction and duplicate-token scores on a trace of ``n`` tokens repeated twice.

    Parameters
    ----------
    n : length of one copy; the copies are ``offset .. offset+n-1`` and ``offset+n .. offset+2n-1``
        and must hold the same token ids.
    offset : tokens before the first copy (a BOS token, say).
    weighting : ``"attention"``, or ``"norm"``: the scores of the rows ``α_ij ‖f_h(x_j)‖``
        renormalised (how much of what the head moved came from that token), as the other
        analysis functions take it.

    Returns
    -------
    InductionScores with (n_layers, n_heads) ``induction`` and ``duplicate``.
    """
    b = trace.check_weighting(weighting, block)
    if b.queries != b.keys:
        raise ValueError(f"induction scores need self-attention; block {b.name!r} maps {b.queries} to "
                         f"{b.keys}")
    tokens = trace.sequence(b.queries)
    n = check_count(n, "n", minimum=2, hint="the length of one copy")
    if not is_int(offset) or not 0 <= offset <= len(tokens) - 2 * n:
        raise ValueError(f"offset must be between 0 and {len(tokens) - 2 * n} so that two copies of n={n} "
                         f"tokens fit in the trace's {len(tokens)}; got {offset!r}")
    first, second = tokens.ids[offset:offset + n], tokens.ids[offset + n:offset + 2 * n]
    if not np.array_equal(first, second):
        bad = int(np.argmax(first != second))
        raise ValueError(f"tokens {offset}..{offset + n - 1} and {offset + n}..{offset + 2 * n - 1} are not "
                         f"one sequence repeated twice (they first differ at copy index {bad}); check n "
                         "and offset")
    li, hi, lsel, hsel = select_layers_heads(trace, b, layers, heads)
    key = ("induction", b.name, n, int(offset), lsel, hsel, weighting)
    if key not in trace.computed:
        i = np.arange(offset + n, offset + 2 * n)
        # both scores read the same query rows: one read, keys i - n + 1 and i - n
        both = gather(b, li, hi, i[None, :], np.stack([i - n + 1, i - n]), progress=progress,
                      weighting=weighting).mean(axis=-1)
        trace.computed[key] = both[..., 0], both[..., 1]
    ind, dup = trace.computed[key]
    return InductionScores(ind.copy(), dup.copy(), n, int(offset), lsel, hsel, weighting=weighting)


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
    from .. import capture  # the public API: imports torch only now

    n = check_count(n, "n", minimum=2)
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


def _metric(result, name: str, allowed: Sequence[str]) -> np.ndarray:
    if name not in allowed:
        raise ValueError(f"metric must be one of {list(allowed)}; got {name!r}")
    return getattr(result, name)


def _top_heads(scores: np.ndarray, layers, heads, k: int) -> list[tuple[int, int, float]]:
    flat = np.where(np.isnan(scores), -np.inf, scores).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    return [(layers[i // scores.shape[1]], heads[i % scores.shape[1]], float(flat[i])) for i in order]
