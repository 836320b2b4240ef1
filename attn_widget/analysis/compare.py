"""Comparing two runs of one model: align their tokens, then ``|A1 − A2|`` per layer and head."""

from __future__ import annotations

import dataclasses
import difflib

import numpy as np

from ..selection import Indices, format_ranges
from ..tokens import TokenTable
from ..trace import AttentionTrace
from .engine import as_float32, flat_entries, geometry_of, select_layers_heads


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
    threshold : a difference above it is listed in ``big_diffs`` (default 0.1, as in
        ``compare_attention_patterns`` of the article "Understanding What Your Model Attends To").
    max_positions : how many such entries to list (default 10, the article's).

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
    li1, hi1, lsel, hsel = select_layers_heads(trace_1, b1, layers, heads)
    li2, hi2, _, _ = select_layers_heads(trace_2, b2, lsel, hsel)
    qal = _align(trace_1.sequence(b1.queries), trace_2.sequence(b2.queries))
    kal = qal if b1.keys == b1.queries else _align(trace_1.sequence(b1.keys), trace_2.sequence(b2.keys))
    if not len(qal.pairs) or not len(kal.pairs):
        raise ValueError("the two traces have no tokens in common to compare")
    # the aligned (query, key) pairs a query can see, in (query, key) order; the alignment is
    # monotonic, so a pair visible in run 1 is visible in run 2
    qi, ki = np.nonzero(kal.pairs[None, :, 0] <= qal.pairs[:, 0, None]) if b1.causal else np.nonzero(
        np.ones((len(qal.pairs), len(kal.pairs)), bool))
    q1, k1, q2, k2 = qal.pairs[qi, 0], kal.pairs[ki, 0], qal.pairs[qi, 1], kal.pairs[ki, 1]
    g1, g2 = geometry_of(b1), geometry_of(b2)
    idx1, idx2 = g1.flat_index(q1, k1)[0], g2.flat_index(q2, k2)[0]
    max_diff = np.zeros((len(lsel), len(hsel)))
    mean_diff = np.zeros_like(max_diff)
    big: list[BigDiff] = []
    n_big = 0
    for j in range(len(lsel)):
        diff = as_float32(flat_entries(b1.data[li1[j]][hi1], g1)[:, idx1])
        diff -= as_float32(flat_entries(b2.data[li2[j]][hi2], g2)[:, idx2])
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
        raise ValueError(f"the traces captured no {what} in common (run 1: {format_ranges(captured_1)}; "
                         f"run 2: {format_ranges(captured_2)}); capture overlapping {what} to compare them")
    return common


def _check_same_model(t1: AttentionTrace, t2: AttentionTrace) -> None:
    def ident(t):
        return (t.model_name, t.model.get("n_layers"), t.model.get("n_heads"))

    if ident(t1) != ident(t2):
        raise ValueError(f"cannot compare traces from different models: trace_1 is {t1.model_name!r} "
                         f"({t1.model.get('n_layers')} layers × {t1.model.get('n_heads')} heads), trace_2 is "
                         f"{t2.model_name!r} ({t2.model.get('n_layers')} layers × {t2.model.get('n_heads')} "
                         "heads); capture both runs with the same model")
