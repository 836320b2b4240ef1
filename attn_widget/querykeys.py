"""Attention kept as queries and keys: memory grows with T, weights are recomputed exactly.

A head's T × T weights come from its T queries and its key/value group's T keys (post-RoPE,
post q/k-norm, as the model's kernel saw them)::

    A = softmax(q · kᵀ · scaling  [soft-capped]  + causal mask + sliding window  [+ sink logit])

so a capture can keep ``T · d`` numbers per head instead of ``T² / 2`` and compute rows, heads
or layer means when they are asked for. Float32 throughout, as eager attention computes them.

Pure numpy: traces that hold queries and keys load and recompute without torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from .geometry import tril_offset

ROW_CHUNK = 512
"""Query rows computed at a time when a whole head or layer is materialised."""

_blas_lock = threading.Lock()
_blas_users = 0
_blas_limits = None
_blas_controller = None  # made once: making one scans every loaded library (~10 ms)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the recompute's many small ``q · kᵀ`` products on one BLAS thread (``threadpoolctl``).

    Measured on this project's 2-core CI machine under load: with OpenBLAS's two threads a pass
    over a head took 2.5–5× the CPU time, and one query row at 8192 keys 12 ms instead of 0.12 ms
    (the threads spin waiting for each other on products this small). The limit is
    process-wide and reference-counted: the first user sets it, the last one out restores it.
    """
    global _blas_users, _blas_limits, _blas_controller
    with _blas_lock:
        if _blas_users == 0:
            if _blas_controller is None:
                from threadpoolctl import ThreadpoolController

                _blas_controller = ThreadpoolController()
            _blas_limits = _blas_controller.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limits.restore_original_limits()
                _blas_limits = None


@dataclasses.dataclass(frozen=True)
class QueryKeys:
    """Queries of the captured heads and keys of their key/value groups, per captured layer.

    queries : float32 (n_layers, n_heads, n_queries, head_dim)
    keys : float32 (n_layers, n_groups, n_keys, head_dim), the groups the captured heads read.
    groups : int (n_heads,) which of ``keys``' groups each captured head reads (GQA).
    scaling : float (n_layers,) the factor on q · kᵀ.
    windows : int (n_layers,) sliding window per layer (a query sees keys ``i - w < j``); 0: none.
    softcap : logit soft-capping ``tanh(s / c) · c`` (0: none).
    sinks : float32 (n_layers, n_heads) learned sink logits (gpt-oss), or None.
    causal : whether a query sees only keys at or before its position.
    """

    queries: np.ndarray
    keys: np.ndarray
    groups: np.ndarray
    scaling: np.ndarray
    windows: np.ndarray
    softcap: float = 0.0
    sinks: np.ndarray | None = None
    causal: bool = True

    @property
    def n_queries(self) -> int:
        return self.queries.shape[2]

    @property
    def n_keys(self) -> int:
        return self.keys.shape[2]

    @property
    def nbytes(self) -> int:
        return self.queries.nbytes + self.keys.nbytes + (0 if self.sinks is None else self.sinks.nbytes)

    def rows(self, li: int, hi: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 (stop - start, n_keys): query rows ``start:stop`` of captured layer ``li``,
        head ``hi`` (positions into the arrays, not model indices), computed ``ROW_CHUNK`` rows at
        a time so the temporaries stay small. A causal chunk multiplies only by the keys it can
        see (``< stop``; and ``> start - window`` with a sliding window); the rest stays 0."""
        stop = self.n_queries if stop is None else stop
        if stop - start > ROW_CHUNK:
            out = np.zeros((stop - start, self.n_keys), np.float32)
            for s in range(start, stop, ROW_CHUNK):
                e = min(s + ROW_CHUNK, stop)
                out[s - start:e - start] = self.rows(li, hi, s, e)
            return out
        w = int(self.windows[li])
        lo = max(0, start - w + 1) if w else 0
        hi_key = min(stop, self.n_keys) if self.causal else self.n_keys
        q = np.asarray(self.queries[li, hi, start:stop], np.float32)
        k = np.asarray(self.keys[li, self.groups[hi], lo:hi_key], np.float32)
        scores = q @ k.T
        scores *= np.float32(self.scaling[li])
        if self.softcap:
            scores = np.tanh(scores / np.float32(self.softcap)) * np.float32(self.softcap)
        i = np.arange(start, stop)[:, None]
        if self.causal and start + 1 < hi_key:  # keys after the query: only columns start+1 .. stop-1
            j = np.arange(start + 1, hi_key)[None, :]
            np.copyto(scores[:, start + 1 - lo:], -np.inf, where=j > i)
        if w and lo <= stop - 1 - w:  # keys out of the window: only columns lo .. stop-1-w
            j = np.arange(lo, stop - w)[None, :]
            np.copyto(scores[:, :stop - w - lo], -np.inf, where=j <= i - w)
        top = scores.max(axis=1, keepdims=True)
        if self.sinks is not None:
            top = np.maximum(top, self.sinks[li, hi])
        np.exp(scores - top, out=scores)
        total = scores.sum(axis=1, keepdims=True)
        if self.sinks is not None:
            total += np.exp(self.sinks[li, hi] - top)
        scores /= total
        if lo == 0 and hi_key == self.n_keys:
            return scores
        out = np.zeros((stop - start, self.n_keys), np.float32)
        out[:, lo:hi_key] = scores
        return out

    def packed(self, li: int, hi: int | None) -> np.ndarray:
        """float16 weights of one head in the stored layout: the packed lower triangle (causal)
        or the dense matrix. ``hi=None``: float32, the mean over the heads (summed in float32 a
        chunk of rows at a time, packed once)."""
        t = self.n_queries
        heads = range(self.queries.shape[1]) if hi is None else (hi,)

        def chunk(s: int, e: int) -> np.ndarray:
            rows = self.rows(li, heads[0], s, e)
            for h in heads[1:]:
                rows += self.rows(li, h, s, e)
            return rows / np.float32(len(heads)) if hi is None else rows

        dtype = np.float32 if hi is None else np.float16
        if not self.causal:
            return chunk(0, t).astype(dtype)
        out = np.empty(tril_offset(t), dtype)
        for s in range(0, t, ROW_CHUNK):
            e = min(s + ROW_CHUNK, t)
            rows = chunk(s, e)
            at = tril_offset(s)
            for q in range(s, e):  # row q keeps keys 0..q; slices, since a boolean mask is ~10× slower
                out[at:at + q + 1] = rows[q - s, :q + 1]
                at += q + 1
        return out

    def select(self, li: Sequence[int], hi: Sequence[int]) -> QueryKeys:
        """These queries and keys for captured layers ``li`` and heads ``hi`` (positions)."""
        li, hi = np.asarray(li, np.intp), np.asarray(hi, np.intp)
        used, groups = np.unique(self.groups[hi], return_inverse=True)
        return dataclasses.replace(
            self, queries=self.queries[np.ix_(li, hi)], keys=self.keys[np.ix_(li, used)],
            groups=groups.astype(np.int64), scaling=self.scaling[li], windows=self.windows[li],
            sinks=None if self.sinks is None else self.sinks[np.ix_(li, hi)])
