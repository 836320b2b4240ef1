"""Per-head sums that head metrics, entropy and sinks derive from, computed once and kept.

One pass over every row of a head gives everything :func:`~.heads.head_scores`,
:func:`~.heads.attention_entropy` and :func:`~.heads.find_attention_sinks` report: the entropy
of each query row, the attention each key receives, and the sums along the diagonal and the one
below it. :func:`head_stats` keeps them in ``trace.computed`` per (block, layer, head), so a
second call, another of these functions, or a call on fewer heads, reads them back instead of
recomputing (a few float32 values per token and head: 12 bytes · T per head).

A ``"weights"`` block reads its stored values in place and computes only the fields asked for;
a ``"queries-keys"`` block recomputes each head's rows a chunk at a time
(:mod:`.streaming`), feeding every field from each chunk, so it computes them all at once; so
does ``weighting="norm"`` on either form (rows renormalised, :func:`.streaming.block_rows`).
Each weighting is kept apart.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from ..trace import AttentionBlock, AttentionTrace
from .engine import col_sums, each_layer, geometry_of, row_entropy, take
from .streaming import head_chunks, row_cells, whole_head_pass

FIELDS = ("entropy", "received", "first", "diagonal", "previous")
"""Per head: ``entropy`` float32 (n_queries,), each row's entropy in nats; ``received``
float64 (n_keys,), each key's column sum; ``first``, ``diagonal``, ``previous``: the sums of
``A[i, 0]``, ``A[i, i]`` and ``A[i, i - 1]`` over the queries (the last two NaN unless queries
and keys are one sequence)."""

_TINY = np.float32(np.finfo(np.float32).tiny)


def head_stats(trace: AttentionTrace, b: AttentionBlock, li: np.ndarray, hi: np.ndarray,
               fields: Collection[str], *, progress: bool | None = None,
               desc: str = "attention per head", weighting: str = "attention") -> dict[str, np.ndarray]:
    """``{field: ndarray of shape (len(li), len(hi), ...)}`` for each of ``fields`` (see
    :data:`FIELDS`) of the heads ``hi`` of layers ``li`` (positions in ``b``), from
    ``trace.computed`` where already there. ``desc`` labels the progress bar."""
    missing = {}
    for layer in li:
        heads = [h for h in hi if not set(fields) <= _kept(trace, b, layer, h, weighting).keys()]
        if heads:
            missing[int(layer)] = heads
    if missing:
        _compute(trace, b, missing, fields, progress, desc, weighting)
    return {f: np.array([[_kept(trace, b, layer, h, weighting)[f] for h in hi] for layer in li])
            for f in fields}


def _compute(trace: AttentionTrace, b: AttentionBlock, missing: dict[int, list[int]], fields: Collection[str],
             progress: bool | None, desc: str, weighting: str) -> None:
    """Compute and keep ``fields`` of the heads ``missing[layer]`` of each layer (positions)."""
    per_head = row_cells(b, 0, b.n_queries)
    with whole_head_pass(sum(map(len, missing.values())) * per_head, desc, progress) as advance:
        for layer, heads in missing.items():
            if b.qk is None and weighting == "attention":
                _from_weights(trace, b, layer, heads, fields)
                advance(len(heads) * per_head)
                continue
            for head in heads:
                _kept(trace, b, layer, head, weighting).update(_streamed(b, layer, head, weighting))
                advance(per_head)


def _kept(trace: AttentionTrace, b: AttentionBlock, layer: int, head: int,
          weighting: str = "attention") -> dict[str, np.ndarray]:
    """The fields kept for one head (positions in ``b``) and weighting, keyed by model indices."""
    return trace.computed.setdefault(("head stats", b.name, b.layers[layer], b.heads[head], weighting), {})


def _square(b: AttentionBlock) -> bool:
    return b.queries == b.keys


def _from_weights(trace: AttentionTrace, b: AttentionBlock, layer: int, heads: list[int],
                  fields: Collection[str]) -> None:
    """Fields of some heads of one layer of a ``"weights"`` block, read from its stored values in place."""
    g = geometry_of(b)
    queries = np.arange(g.n_queries)
    _, values = next(each_layer(b, np.array([layer]), np.array(heads)))
    found: dict[str, np.ndarray] = {}
    if "entropy" in fields:
        found["entropy"] = row_entropy(values, g)
    if "received" in fields:
        found["received"] = col_sums(values, g)
    if "first" in fields:
        found["first"] = take(values, g, queries, np.zeros_like(queries)).sum(axis=-1, dtype=np.float64)
    if "diagonal" in fields:
        found["diagonal"] = (take(values, g, queries, queries).sum(axis=-1, dtype=np.float64)
                             if _square(b) else np.full(len(heads), np.nan))
    if "previous" in fields:
        found["previous"] = (take(values, g, queries[1:], queries[1:] - 1).sum(axis=-1, dtype=np.float64)
                             if _square(b) else np.full(len(heads), np.nan))
    for m, head in enumerate(heads):
        _kept(trace, b, layer, head).update({f: v[m] for f, v in found.items()})


def _streamed(b: AttentionBlock, layer: int, head: int, weighting: str) -> dict[str, np.ndarray]:
    """Every field of one head, from one pass over its rows (recomputed from queries and keys, or
    weighted by the value norms)."""
    entropy = np.empty(b.n_queries, np.float32)
    received = np.zeros(b.n_keys)
    diagonal = previous = 0.0
    logs = None
    for s, e, rows in head_chunks(b, layer, head, weighting=weighting):
        if logs is None:
            logs = np.empty((e - s, b.n_keys), np.float32)  # the first chunk is the tallest
        # x·ln x with 0·ln 0 = 0: a zero weight meets ln of the smallest float32, not -inf
        log = logs[:e - s, :rows.shape[1]]
        np.maximum(rows, _TINY, out=log)
        np.log(log, out=log)
        entropy[s:e] = np.einsum("ij,ij->i", rows, log)
        np.negative(entropy[s:e], out=entropy[s:e])
        received[:rows.shape[1]] += rows.sum(axis=0)
        if _square(b):
            i = np.arange(s, e)
            diagonal += float(rows[i - s, i].sum())
            i = i[i > 0]
            previous += float(rows[i - s, i - 1].sum())
    nan = float("nan")
    return {"entropy": entropy, "received": received, "first": received[0],
            "diagonal": diagonal if _square(b) else nan, "previous": previous if _square(b) else nan}
