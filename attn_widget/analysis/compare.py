"""Comparing two runs of one model: align their tokens, then ``|A1 − A2|`` per layer and head."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator

import numpy as np

from ..selection import Indices, format_ranges
from ..tokens import TokenTable
from ..trace import AttentionTrace
from ..valuenorms import describe_weighting
from .engine import as_float32, flat_entries, geometry_of, select_layers_heads
from .streaming import block_rows, chunk_rows, row_cells, whole_head_pass


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
    weighting : ``"attention"`` or ``"norm"`` (value-weighted rows, renormalised).
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
    weighting: str = "attention"

    @property
    def overall_max(self) -> float:
        return float(self.max_diff.max())

    @property
    def overall_mean(self) -> float:
        return float(self.mean_diff.mean())

    def summary(self) -> str:
        li, hi = np.unravel_index(int(np.argmax(self.max_diff)), self.max_diff.shape)
        lines = [f"max |A1−A2| {self.overall_max:.4f} (L{self.layers[li]}H{self.heads[hi]}), mean "
                 f"{self.overall_mean:.5f}; {self.n_big} entries > {self.threshold:g}; weighting: "
                 f"{describe_weighting(self.weighting)}"]
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
                      block: str | None = None, progress: bool | None = None,
                      weighting: str = "attention") -> AttentionComparison:
    """``|A1 − A2|`` per layer and head between two runs of the same model.

    When the token sequences differ they are aligned first (``difflib.SequenceMatcher`` on
    token ids) and compared on aligned (query, key) pairs only; positions with no partner are
    reported in ``queries`` / ``keys``. Traces that keep queries and keys are compared a chunk
    of aligned query rows at a time, so memory stays at one chunk per head.

    Parameters
    ----------
    layers, heads : model indices to compare (default: those captured in both traces).
    threshold : a difference above it is listed in ``big_diffs`` (default 0.1, as in
        ``compare_attention_patterns`` of the article "Understanding What Your Model Attends To").
    max_positions : how many such entries to list (default 10, the article's).
    weighting : ``"attention"``, or ``"norm"``: compare each head's rows ``α_ij ‖f_h(x_j)‖``
        renormalised (both traces need value norms).

    Returns
    -------
    AttentionComparison with (n_layers, n_heads) ``max_diff`` and ``mean_diff``.
    """
    check_same_model(trace_1, trace_2)
    b1, b2 = trace_1.check_weighting(weighting, block), trace_2.check_weighting(weighting, block)
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
    if b1.qk is None and b2.qk is None and weighting == "attention":
        found = _stored_diffs(b1, b2, li1, hi1, li2, hi2, qal, kal)
    else:
        found = _streamed_diffs(b1, b2, li1, hi1, li2, hi2, qal, kal, progress, weighting)
    max_diff = np.zeros((len(lsel), len(hsel)))
    total = np.zeros_like(max_diff)
    big: list[BigDiff] = []
    n_big = n_pairs = 0
    # ``found`` runs in (layer, head, query, key) order, so the first big differences come first
    for j, m, diff, q1, k1, q2, k2 in found:
        if m == 0 and j == 0:
            n_pairs += diff.size
        max_diff[j, m] = max(max_diff[j, m], float(diff.max(initial=0.0)))
        total[j, m] += float(diff.sum(dtype=np.float64))
        over = np.flatnonzero(diff > threshold)
        n_big += len(over)
        for v in over[:max(0, max_positions - len(big))]:
            big.append(BigDiff(lsel[j], hsel[m], int(q1[v]), int(k1[v]), int(q2[v]), int(k2[v]),
                               float(diff[v])))
    return AttentionComparison(max_diff, total / max(n_pairs, 1), big, n_big, qal, kal, float(threshold),
                               lsel, hsel, weighting)


Diffs = Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
"""``(j, m, diff, q1, k1, q2, k2)``: ``|A1 − A2|`` of selected layer ``j`` and head ``m`` over some
visible aligned (query, key) pairs, flat, with their positions in both traces."""


def _visible_pairs(causal: bool, qal: SequenceAlignment, kal: SequenceAlignment,
                   queries: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``qal.pairs[queries]`` and ``kal.pairs`` of the aligned (query, key) pairs a
    query can see, in (query, key) order; the alignment is monotonic, so a pair visible in run 1
    is visible in run 2."""
    qp = qal.pairs[queries]
    if causal:
        return np.nonzero(kal.pairs[None, :, 0] <= qp[:, 0, None])
    return np.nonzero(np.ones((len(qp), len(kal.pairs)), bool))


def _stored_diffs(b1, b2, li1, hi1, li2, hi2, qal, kal) -> Diffs:
    """Every visible pair of two ``"weights"`` blocks, a layer at a time, read in place."""
    qi, ki = _visible_pairs(b1.causal, qal, kal)
    q1, k1, q2, k2 = qal.pairs[qi, 0], kal.pairs[ki, 0], qal.pairs[qi, 1], kal.pairs[ki, 1]
    g1, g2 = geometry_of(b1), geometry_of(b2)
    idx1, idx2 = g1.flat_index(q1, k1)[0], g2.flat_index(q2, k2)[0]
    for j in range(len(li1)):
        diff = as_float32(flat_entries(b1.data[li1[j]][hi1], g1)[:, idx1])
        diff -= as_float32(flat_entries(b2.data[li2[j]][hi2], g2)[:, idx2])
        np.abs(diff, out=diff)
        for m in range(len(hi1)):
            yield j, m, diff[m], q1, k1, q2, k2


def _streamed_diffs(b1, b2, li1, hi1, li2, hi2, qal, kal, progress, weighting) -> Diffs:
    """The visible pairs of two blocks, either keeping queries and keys, a chunk of aligned
    query rows of one head at a time (each chunk under ``chunk_rows`` rows in both traces)."""
    qp, kp = qal.pairs, kal.pairs
    step = chunk_rows(max(b1.n_keys, b2.n_keys))
    groups = []
    a = 0
    while a < len(qp):
        z = min(np.searchsorted(qp[:, 0], qp[a, 0] + step), np.searchsorted(qp[:, 1], qp[a, 1] + step))
        groups.append((a, int(z)))
        a = int(z)
    cells = len(li1) * len(hi1) * sum(row_cells(b1, qp[a, 0], qp[z - 1, 0] + 1)
                                      + row_cells(b2, qp[a, 1], qp[z - 1, 1] + 1) for a, z in groups)
    with whole_head_pass(cells, "compare_attention", progress) as advance:
        for j in range(len(li1)):
            for m in range(len(hi1)):
                for a, z in groups:
                    qi, ki = _visible_pairs(b1.causal, qal, kal, slice(a, z))
                    (s1, s2), (e1, e2) = qp[a], qp[z - 1] + 1
                    diff = block_rows(b1, li1[j], hi1[m], s1, e1, weighting)[qp[a + qi, 0] - s1, kp[ki, 0]]
                    diff -= block_rows(b2, li2[j], hi2[m], s2, e2, weighting)[qp[a + qi, 1] - s2, kp[ki, 1]]
                    np.abs(diff, out=diff)
                    yield j, m, diff, qp[a + qi, 0], kp[ki, 0], qp[a + qi, 1], kp[ki, 1]
                    advance(row_cells(b1, s1, e1) + row_cells(b2, s2, e2))


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


def check_same_model(t1: AttentionTrace, t2: AttentionTrace) -> None:
    """Refuse two traces of different models (name, layers, heads): they cannot be compared."""
    def ident(t):
        return (t.model_name, t.model.get("n_layers"), t.model.get("n_heads"))

    if ident(t1) != ident(t2):
        raise ValueError(f"cannot compare traces from different models: trace_1 is {t1.model_name!r} "
                         f"({t1.model.get('n_layers')} layers × {t1.model.get('n_heads')} heads), trace_2 is "
                         f"{t2.model_name!r} ({t2.model.get('n_layers')} layers × {t2.model.get('n_heads')} "
                         "heads); capture both runs with the same model")
