"""Passes over whole heads of blocks that keep queries and keys, a chunk of query rows at a time.

A ``"queries-keys"`` block stores no weights: every metric that reads whole heads recomputes
their rows from queries and keys (:meth:`~attn_widget.querykeys.QueryKeys.rows`), one chunk at
a time, and folds each chunk into what it keeps before the next one, so memory stays at one
chunk of rows per head whatever the length (never the ``T²/2`` weights of a head). Two choices
make these passes fast on a CPU, measured on SmolLM2-shaped heads at 8192 tokens:

- chunks of about :data:`CHUNK_CELLS` weights (2 MB of float32) stay in the processor's cache
  between the softmax and the metrics: 64-row chunks took about 0.6× the CPU time of 512-row
  ones (and 0.8× that of 128-row ones);
- the many small ``q · kᵀ`` products run on one BLAS thread
  (:func:`~attn_widget.querykeys.one_blas_thread`).

A pass estimated past about a second of work shows a ``tqdm`` progress bar (see
:func:`whole_head_pass`).

Every reader takes a ``weighting``: ``"attention"`` reads the weights ``α``; ``"norm"`` reads
``α_ij ‖f_h(x_j)‖`` (:mod:`attn_widget.valuenorms`) with each row divided by its sum, so that a
row is again a distribution over keys (the share of what the head moved that came from each key)
and every metric, threshold and rollout step means what it means for weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

from ..geometry import tril_offset
from ..querykeys import ROW_CHUNK, one_blas_thread
from ..trace import AttentionBlock

CHUNK_CELLS = 2**19
"""Weights per chunk of rows (rows × keys): 2 MB of float32, kept in cache between steps."""

PROGRESS_CELLS = 2 * 10**8
"""Weights a pass must recompute before its progress bar shows by default (about a second at
the ~5 ns per weight a head's pass takes on one core)."""



def chunk_rows(n_keys: int) -> int:
    """Query rows per chunk for a block of ``n_keys`` keys: about :data:`CHUNK_CELLS` weights,
    between 16 and :data:`~attn_widget.querykeys.ROW_CHUNK` rows."""
    return max(16, min(ROW_CHUNK, CHUNK_CELLS // max(n_keys, 1)))


def row_cells(b: AttentionBlock, start: int, stop: int) -> int:
    """Weights of query rows ``start:stop`` that a query can see (what recomputing them costs)."""
    if b.causal:
        return tril_offset(stop) - tril_offset(start)
    return (stop - start) * b.n_keys


def visible_width(b: AttentionBlock, stop: int) -> int:
    """Keys that rows up to ``stop`` can see: all of them, or the first ``stop`` when causal."""
    return min(stop, b.n_keys) if b.causal else b.n_keys


def block_rows(b: AttentionBlock, layer: int, head: int, start: int, stop: int,
               weighting: str = "attention") -> np.ndarray:
    """float32 (stop - start, n_keys) rows of head position ``head`` of layer position ``layer``;
    straight from the queries and keys of a ``"queries-keys"`` block (no extra copy). With
    ``weighting="norm"``, ``α_ij ‖f_h(x_j)‖`` renormalised to sum to 1 over each row."""
    if weighting != "attention":
        return renormalised(b.rows(layer, head, start, stop, weighting))
    if b.qk is not None:
        return b.qk.rows(layer, head, start, stop)
    return b.rows(layer, head, start, stop)


def renormalised(rows: np.ndarray) -> np.ndarray:
    """``rows`` (…, n_keys) divided in place by their sums over keys (a row of zeros stays 0)."""
    total = rows.sum(axis=-1, keepdims=True)
    np.divide(rows, total, out=rows, where=total > 0)
    return rows


def head_chunks(b: AttentionBlock, layer: int, head: int, start: int = 0, stop: int | None = None,
                weighting: str = "attention") -> Iterator[tuple[int, int, np.ndarray]]:
    """``(s, e, rows)`` for query rows ``start:stop`` (default all) of one head in chunks of
    :func:`chunk_rows`; ``rows`` is float32 (e - s, :func:`visible_width` (e)): the keys after it
    are 0 for every row of the chunk."""
    stop = b.n_queries if stop is None else stop
    step = chunk_rows(b.n_keys)
    for s in range(start, stop, step):
        e = min(s + step, stop)
        yield s, e, block_rows(b, layer, head, s, e, weighting)[:, :visible_width(b, e)]


def mean_chunks(b: AttentionBlock, layer: int, start: int = 0, stop: int | None = None,
                weighting: str = "attention") -> Iterator[tuple[int, int, np.ndarray]]:
    """Like :func:`head_chunks`, for the mean over the block's heads of layer position ``layer``."""
    stop = b.n_queries if stop is None else stop
    step = chunk_rows(b.n_keys)
    for s in range(start, stop, step):
        e = min(s + step, stop)
        width = visible_width(b, e)
        total = block_rows(b, layer, 0, s, e, weighting)[:, :width].copy()
        for head in range(1, len(b.heads)):
            total += block_rows(b, layer, head, s, e, weighting)[:, :width]
        total /= len(b.heads)
        yield s, e, total


def fill_mean(b: AttentionBlock, layer: int, out: np.ndarray, scale: float = 1.0,
              advance: Callable[[int], None] = lambda n: None, weighting: str = "attention") -> np.ndarray:
    """``out`` (n_queries, n_keys), zeros, filled with ``scale`` × the mean over the block's heads
    of layer position ``layer``, a chunk of rows at a time (``advance`` is told the weights done)."""
    for s, e, mean in mean_chunks(b, layer, weighting=weighting):
        if scale != 1.0:
            mean *= scale
        out[s:e, :mean.shape[1]] = mean
        advance(len(b.heads) * row_cells(b, s, e))
    return out


def row_groups(rows: np.ndarray, step: int) -> list[tuple[int, int]]:
    """``(s, e)`` row ranges covering the sorted unique ``rows``, each under ``step`` rows long,
    so that a few scattered rows cost one small product each and a long run a chunk at a time."""
    groups: list[tuple[int, int]] = []
    i = 0
    while i < len(rows):
        j = int(np.searchsorted(rows, rows[i] + step))
        groups.append((int(rows[i]), int(rows[j - 1]) + 1))
        i = j
    return groups


@contextlib.contextmanager
def whole_head_pass(cells: int, desc: str, progress: bool | None) -> Iterator[Callable[[int], None]]:
    """The setting for a pass that recomputes ``cells`` weights: one BLAS thread, and a progress
    bar (``tqdm.auto``, cleared when done) when ``progress`` is True, or None and ``cells`` is at
    least :data:`PROGRESS_CELLS`. Yields ``advance(n)``, to call as ``n`` weights are done."""
    bar = None
    if progress or (progress is None and cells >= PROGRESS_CELLS):
        from tqdm.auto import tqdm

        bar = tqdm(total=cells, desc=desc, unit="weight", unit_scale=True, leave=False)
    with one_blas_thread():
        try:
            yield (lambda n: None) if bar is None else bar.update
        finally:
            if bar is not None:
                bar.close()
