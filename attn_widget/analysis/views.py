"""Reading attention: a query's row, a key's column, head-averaged layers, the mass on a span.

Each takes ``weighting``: ``"attention"`` (the weights) or ``"norm"``: each head's rows
``α_ij ‖f_h(x_j)‖`` renormalised to sum to 1 (:mod:`attn_widget.valuenorms`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..selection import Indices, check_index
from ..trace import AttentionTrace
from ..valuenorms import describe_weighting
from .engine import gather, query_row, select_layers_heads, span_positions
from .streaming import fill_mean, row_cells, whole_head_pass


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
    weighting : ``"attention"`` or ``"norm"`` (value-weighted shares).
    """

    query_position: int
    positions: list[int]
    tokens: list[str]
    mass: np.ndarray
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    weighting: str = "attention"

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
                f"L{self.layers[li]}H{self.heads[hi]} {self.mass[li, hi]:.3f}; weighting: "
                f"{describe_weighting(self.weighting)}")


def attention_from(trace: AttentionTrace, position: int, *, layers: Indices = None,
                   heads: Indices = None, average: bool = True, block: str | None = None,
                   weighting: str = "attention") -> np.ndarray:
    """What query ``position`` attends to.

    Returns
    -------
    ndarray of float32, shape (n_keys,) averaged over the selected layers and heads, or
    (n_layers, n_heads, n_keys) with ``average=False``.
    """
    b = trace.check_weighting(weighting, block)
    li, hi, _, _ = select_layers_heads(trace, b, layers, heads)
    rows = query_row(b, li, hi, check_index(position, b.n_queries, "position"), weighting=weighting)
    return rows.mean(axis=(0, 1)) if average else rows


def attention_to(trace: AttentionTrace, position: int, *, layers: Indices = None,
                 heads: Indices = None, average: bool = True, block: str | None = None,
                 progress: bool | None = None, weighting: str = "attention") -> np.ndarray:
    """How much every query attends to key ``position`` (a column of ``A``).

    A column needs every query row that sees the key: on a ``"queries-keys"`` block they are
    recomputed (for causal attention, the rows from ``position`` on).

    Returns
    -------
    ndarray of float32, shape (n_queries,) averaged over the selected layers and heads, or
    (n_layers, n_heads, n_queries) with ``average=False``. Queries that cannot see the key hold 0.
    """
    b = trace.check_weighting(weighting, block)
    li, hi, _, _ = select_layers_heads(trace, b, layers, heads)
    k = check_index(position, b.n_keys, "position")
    cols = gather(b, li, hi, np.arange(b.n_queries)[None, :], np.array([[k]]), progress=progress,
                  weighting=weighting)[:, :, 0, :]
    return cols.mean(axis=(0, 1)) if average else cols


def layer_means(trace: AttentionTrace, *, layers: Indices = None, block: str | None = None,
                progress: bool | None = None, weighting: str = "attention") -> np.ndarray:
    """Head-averaged attention of every selected layer (the mean over the captured heads).

    Returns
    -------
    ndarray of float32, shape (n_layers, n_queries, n_keys). Memory: 4 · n_layers · T² bytes
    (a ``"queries-keys"`` block fills it a chunk of rows at a time, with nothing else that size).
    """
    b = trace.check_weighting(weighting, block)
    li, _, lsel, _ = select_layers_heads(trace, b, layers, None)
    if b.qk is None and weighting == "attention":
        return np.stack([trace.layer_mean(layer, b.name) for layer in lsel])
    out = np.zeros((len(li), b.n_queries, b.n_keys), np.float32)
    cells = len(li) * len(b.heads) * row_cells(b, 0, b.n_queries)
    with whole_head_pass(cells, "layer_means", progress) as advance:
        for j, layer in enumerate(li):
            fill_mean(b, layer, out[j], advance=advance, weighting=weighting)
    return out


def span_attention(trace: AttentionTrace, query_position: int, span: str | Sequence[int], *,
                   occurrence: int = 0, layers: Indices = None, heads: Indices = None,
                   block: str | None = None, weighting: str = "attention") -> SpanAttention:
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
    b = trace.check_weighting(weighting, block)
    li, hi, lsel, hsel = select_layers_heads(trace, b, layers, heads)
    q = check_index(query_position, b.n_queries, "query_position")
    keys = span_positions(trace, b, span, occurrence, "span")
    rows = query_row(b, li, hi, q, keys, weighting)
    display = trace.sequence(b.keys).display
    return SpanAttention(q, keys, [display[k] for k in keys], rows.sum(axis=-1), lsel, hsel, weighting)
