"""The packed lower triangle: how causal self-attention is stored.

A causal head of ``T`` queries has ``T (T + 1) / 2`` weights that can be non-zero. They are
stored row after row: row ``i`` holds keys ``0..i`` and starts at ``tril_offset(i) = i (i + 1) / 2``.
Capture appends one decode step as one contiguous slice; the trace, the analysis, the payload
and the front end (``js/src/payload.js``) all read this layout, from here.

>>> tril_offset(3)
6
>>> g = geometry(True, 3, 3)
>>> g.row_starts.tolist(), g.key_index.tolist()
([0, 1, 3], [0, 0, 1, 0, 1, 2])
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np


def tril_offset(row: int) -> int:
    """Offset of row ``row`` in a packed lower triangle (rows laid end to end)."""
    return row * (row + 1) // 2


def n_from_packed(n_packed: int) -> int:
    """``T`` for a packed triangle of ``n_packed`` values; ``ValueError`` if there is none."""
    t = int((np.sqrt(8 * n_packed + 1) - 1) // 2)
    if tril_offset(t) != n_packed:
        raise ValueError(f"{n_packed} values are not a packed lower triangle")
    return t


@lru_cache(maxsize=8)
def tril_flat_index(t: int) -> np.ndarray:
    """Flat indices into a (t, t) matrix of the packed lower triangle's entries, in order."""
    r, c = np.tril_indices(t)
    idx = r * t + c
    idx.setflags(write=False)
    return idx


def pack_causal(attention: np.ndarray) -> np.ndarray:
    """float16 (…, T(T+1)/2) packed lower triangles of (…, T, T) attention."""
    a = np.asarray(attention)
    t = a.shape[-1]
    return a.reshape(a.shape[:-2] + (t * t,))[..., tril_flat_index(t)].astype(np.float16)


def unpack_causal(packed: np.ndarray, t: int) -> np.ndarray:
    """float32 (…, T, T) of packed lower triangles (…, T(T+1)/2); zeros above the diagonal."""
    out = np.zeros(packed.shape[:-1] + (t * t,), dtype=np.float32)
    out[..., tril_flat_index(t)] = packed
    return out.reshape(packed.shape[:-1] + (t, t))


def packed_rows(packed: np.ndarray, start: int, stop: int, width: int) -> np.ndarray:
    """float32 (…, stop - start, width) query rows ``start:stop`` of packed triangles, zero-filled
    above the diagonal (each packed row is one contiguous slice)."""
    out = np.zeros(packed.shape[:-1] + (stop - start, width), dtype=np.float32)
    for i in range(start, stop):
        out[..., i - start, :i + 1] = packed[..., tril_offset(i):tril_offset(i + 1)]
    return out


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Index arrays for one attention shape, packed causal or dense.

    row_starts : (Q,) offset of each packed row (causal only).
    key_index : (P,) key of each packed entry (causal only).
    seeing_queries : (K,) how many queries can see each key.
    entropy_scale : (Q,) ``1 / ln(keys the query sees)``, 0 where it sees one.
    """

    causal: bool
    n_queries: int
    n_keys: int
    row_starts: np.ndarray
    key_index: np.ndarray
    seeing_queries: np.ndarray
    entropy_scale: np.ndarray

    def flat_index(self, q, k) -> tuple[np.ndarray, np.ndarray]:
        """Index of ``A[q, k]`` in one head's flattened store, and where it exists.

        Broadcasts ``q`` and ``k``; the index is 0 where the key is out of range or, for causal
        attention, after the query (``ok`` is False there).
        """
        q, k = np.broadcast_arrays(np.asarray(q), np.asarray(k))
        ok = (k >= 0) & (k < self.n_keys) & (q >= 0) & (q < self.n_queries)
        if self.causal:
            ok &= k <= q
            return np.where(ok, q * (q + 1) // 2 + k, 0), ok
        return np.where(ok, q * self.n_keys + k, 0), ok


@lru_cache(maxsize=8)
def geometry(causal: bool, n_queries: int, n_keys: int) -> Geometry:
    """The (cached) :class:`Geometry` of a ``n_queries`` × ``n_keys`` attention block."""
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
    return Geometry(causal, n_queries, n_keys, starts, key_index, seeing, scale)
