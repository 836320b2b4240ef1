"""The engine under every metric: one block's attention, read in place or recomputed in chunks.

A block holds its attention in one of two forms. ``"weights"`` blocks hold float16 weights:
packed lower triangles for causal blocks (see :mod:`attn_widget.geometry`), dense
(n_queries, n_keys) matrices otherwise; the metrics read a few entries ``A[q, k]`` of many
heads, or sum whole rows or columns, through the geometry's index arrays, in place, a layer at
a time. ``"queries-keys"`` blocks hold queries and keys; the same reads recompute only the query
rows they need, a chunk at a time (:mod:`.streaming`), and never build a block's weights.

It also turns the ``layers=``/``heads=`` and span arguments of every metric into positions in a
block (:func:`select_layers_heads`, :func:`span_positions`), so all of them read those the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

from ..geometry import Geometry, geometry
from ..selection import Indices, check_index, model_indices
from ..trace import AttentionBlock, AttentionTrace
from .streaming import block_rows, chunk_rows, row_cells, row_groups, whole_head_pass


# ===================================================================== selecting
def select_layers_heads(trace: AttentionTrace, b: AttentionBlock, layers: Indices,
                        heads: Indices) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """Positional and model indices of a layer and head selection of block ``b``.

    Returns
    -------
    li, hi : ndarray of intp, positions of the selected layers and heads in the block.
    layers, heads : tuple of int, the model indices, in the order asked for.
    """
    lsel = model_indices(layers, b.layers, trace.model.get("n_layers"), "layers")
    hsel = model_indices(heads, b.heads, trace.model.get("n_heads"), "heads")
    return (np.array([b.layer_pos(x) for x in lsel], np.intp),
            np.array([b.head_pos(x) for x in hsel], np.intp), lsel, hsel)


def span_positions(trace: AttentionTrace, b: AttentionBlock, span: str | Sequence[int], occurrence: int,
                   what: str) -> list[int]:
    """Sorted key positions of ``span``: a span name, a substring of the text or positions.

    ``what`` names the argument in errors.
    """
    table = trace.sequence(b.keys)
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
        positions = sorted({check_index(int(p), len(table), f"{what} position") for p in span})
    if not positions:
        raise ValueError(f"{what} {span!r} covers no tokens; pass a non-empty substring or positions")
    return positions


# ===================================================================== reading the store
def geometry_of(b: AttentionBlock) -> Geometry:
    """The (cached) index arrays of a ``"weights"`` block's stored layout (T²/2 of them for a
    causal block: only for blocks that hold that many weights already)."""
    return geometry(b.causal, b.n_queries, b.n_keys)


def seeing_queries(b: AttentionBlock) -> np.ndarray:
    """(n_keys,) how many queries can see each key."""
    if b.causal:
        return b.n_queries - np.arange(b.n_keys)
    return np.full(b.n_keys, b.n_queries)


def entropy_scale(b: AttentionBlock) -> np.ndarray:
    """float32 (n_queries,) ``1 / ln(keys the query sees)``, 0 where it sees one."""
    keys = np.arange(1, b.n_queries + 1) if b.causal else np.full(b.n_queries, b.n_keys)
    with np.errstate(divide="ignore"):
        return np.where(keys > 1, 1.0 / np.log(np.maximum(keys, 2)), 0.0).astype(np.float32)


def visible(b: AttentionBlock, q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Where ``A[q, k]`` exists (position arrays broadcast together): both in range and, for a
    causal block, the key not after the query."""
    ok = (k >= 0) & (k < b.n_keys) & (q >= 0) & (q < b.n_queries)
    return ok & (k <= q) if b.causal else ok


def each_layer(b: AttentionBlock, li: np.ndarray, hi: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(j, values)`` for each selected layer ``li[j]`` of a ``"weights"`` block: its stored
    float16 values of heads ``hi``, of shape (n_heads, P) packed or (n_heads, n_queries, n_keys)
    dense."""
    # every head in stored order: a view of the layer, not a copy
    heads = slice(None) if np.array_equal(hi, np.arange(b.data.shape[1])) else hi
    for j, layer in enumerate(li):
        yield j, b.data[layer][heads]


def flat_entries(values: np.ndarray, g: Geometry) -> np.ndarray:
    """One layer's values as (n_heads, entries per head)."""
    return values if g.causal else values.reshape(values.shape[0], -1)


def take(values: np.ndarray, g: Geometry, q: ArrayLike, k: ArrayLike) -> np.ndarray:
    """float32 ``A[q, k]`` for broadcastable position arrays ``q`` and ``k`` over one layer's ``values``.

    ``values`` is (n_heads, P) packed or (n_heads, n_queries, n_keys) dense; the result is
    (n_heads, *broadcast(q, k).shape), 0 where the key is out of range or a causal query cannot see it.
    """
    idx, ok = g.flat_index(q, k)
    out = as_float32(flat_entries(values, g)[:, idx])
    out *= ok
    return out


def gather(b: AttentionBlock, li: np.ndarray, hi: np.ndarray, q: ArrayLike, k: ArrayLike, *,
           progress: bool | None = None, weighting: str = "attention") -> np.ndarray:
    """float32 ``A[q, k]`` for selected layers and heads: (n_layers, n_heads, *broadcast(q, k).shape),
    0 where the key is out of range or a causal query cannot see it.

    A ``"queries-keys"`` block recomputes only the query rows in ``q``, a chunk at a time (with a
    progress bar when that is long, see :func:`~.streaming.whole_head_pass`); so does
    ``weighting="norm"`` (rows renormalised, :func:`~.streaming.block_rows`) on either form."""
    if b.qk is None and weighting == "attention":
        g = geometry_of(b)
        return np.stack([take(b.data[layer][hi], g, q, k) for layer in li])
    q, k = np.broadcast_arrays(np.asarray(q), np.asarray(k))
    out = np.zeros((len(li), len(hi), q.size), np.float32)
    where = np.flatnonzero(visible(b, q, k))
    qv, kv = q.ravel()[where], k.ravel()[where]
    order = np.argsort(qv, kind="stable")
    groups = row_groups(np.unique(qv), chunk_rows(b.n_keys))
    cells = len(li) * len(hi) * sum(row_cells(b, s, e) for s, e in groups)
    with whole_head_pass(cells, "reading attention rows", progress) as advance:
        for s, e in groups:
            lo, up = np.searchsorted(qv, [s, e], sorter=order)
            at = order[lo:up]
            for j, layer in enumerate(li):
                for m, head in enumerate(hi):
                    out[j, m, where[at]] = block_rows(b, layer, head, s, e, weighting)[qv[at] - s, kv[at]]
            advance(len(li) * len(hi) * row_cells(b, s, e))
    return out.reshape((len(li), len(hi)) + q.shape)


def query_row(b: AttentionBlock, li: np.ndarray, hi: np.ndarray, q: int,
              keys: np.ndarray | None = None, weighting: str = "attention") -> np.ndarray:
    """float32 (n_layers, n_heads, n_keys): what query ``q`` attends to, over ``keys`` (default all)."""
    keys = np.arange(b.n_keys) if keys is None else np.asarray(keys)
    return gather(b, li, hi, np.array([[q]]), keys[None, :], weighting=weighting)[:, :, 0, :]


def row_sums(values: np.ndarray, g: Geometry) -> np.ndarray:
    """(n_heads, n_queries) sums over each query's keys of one layer's values."""
    if g.causal:
        return np.add.reduceat(values, g.row_starts, axis=-1)
    return values.sum(axis=-1)


def col_sums(values: np.ndarray, g: Geometry) -> np.ndarray:
    """(n_heads, n_keys) sums over each key's queries of one layer's values."""
    values = as_float32(values)
    if not g.causal:
        return values.sum(axis=-2)
    return np.stack([np.bincount(g.key_index, weights=v, minlength=g.n_keys) for v in values])


def row_entropy(values: np.ndarray, g: Geometry) -> np.ndarray:
    """(n_heads, n_queries) entropy in nats of each query row of one layer's values."""
    return -row_sums(xlogx(values), g)


# ===================================================================== float16 tables
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


def as_float32(values: np.ndarray) -> np.ndarray:
    """``values`` as float32 (a new array)."""
    if values.dtype == np.float16:
        return _half_tables()[0][values.view(np.uint16)]
    return values.astype(np.float32)


def xlogx(values: np.ndarray) -> np.ndarray:
    """float32 ``x·ln x`` of every value, with 0·ln 0 = 0."""
    if values.dtype == np.float16:
        return _half_tables()[1][values.view(np.uint16)]
    return _xlogx_exact(values).astype(np.float32)
