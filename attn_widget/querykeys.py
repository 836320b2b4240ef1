"""Attention kept as queries and keys: memory grows with T, weights are recomputed exactly.

A head's T × T weights come from its T queries and its key/value group's T keys (post-RoPE,
post q/k-norm, as the model's kernel saw them)::

    A = softmax(q · kᵀ · scaling  [soft-capped]  + causal mask + sliding window  [+ sink logit])

so a capture can keep ``T · d`` numbers per head instead of ``T² / 2`` and compute rows, heads
or layer means when they are asked for. Float32 throughout, as eager attention computes them.

Pure numpy: traces that hold queries and keys load and recompute without torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .geometry import tril_offset

ROW_CHUNK = 512
"""Query rows computed at a time when a whole head or layer is materialised."""


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
        a time so the temporaries stay small."""
        stop = self.n_queries if stop is None else stop
        if stop - start > ROW_CHUNK:
            return np.concatenate([self.rows(li, hi, s, min(s + ROW_CHUNK, stop))
                                   for s in range(start, stop, ROW_CHUNK)])
        q = self.queries[li, hi, start:stop]
        k = self.keys[li, self.groups[hi]]
        scores = q @ k.T
        scores *= np.float32(self.scaling[li])
        if self.softcap:
            scores = np.tanh(scores / np.float32(self.softcap)) * np.float32(self.softcap)
        if self.causal or self.windows[li]:
            i = np.arange(start, stop)[:, None]
            j = np.arange(self.n_keys)[None, :]
            hidden = j > i if self.causal else np.zeros((stop - start, self.n_keys), bool)
            if self.windows[li]:
                hidden |= j <= i - int(self.windows[li])
            scores[hidden] = -np.inf
        top = scores.max(axis=1, keepdims=True)
        if self.sinks is not None:
            top = np.maximum(top, self.sinks[li, hi])
        np.exp(scores - top, out=scores)
        total = scores.sum(axis=1, keepdims=True)
        if self.sinks is not None:
            total += np.exp(self.sinks[li, hi] - top)
        scores /= total
        return scores

    def packed(self, li: int, hi: int) -> np.ndarray:
        """float16 weights of one head in the stored layout: the packed lower triangle (causal)
        or the dense matrix."""
        t = self.n_queries
        if not self.causal:
            return self.rows(li, hi).astype(np.float16)
        out = np.empty(tril_offset(t), np.float16)
        for s in range(0, t, ROW_CHUNK):
            e = min(s + ROW_CHUNK, t)
            seen = np.arange(e)[None, :] <= np.arange(s, e)[:, None]  # row-major: the packed order
            out[tril_offset(s):tril_offset(e)] = self.rows(li, hi, s, e)[:, :e][seen]
        return out

    def select(self, li: Sequence[int], hi: Sequence[int]) -> QueryKeys:
        """These queries and keys for captured layers ``li`` and heads ``hi`` (positions)."""
        li, hi = np.asarray(li, np.intp), np.asarray(hi, np.intp)
        used, groups = np.unique(self.groups[hi], return_inverse=True)
        return dataclasses.replace(
            self, queries=self.queries[np.ix_(li, hi)], keys=self.keys[np.ix_(li, used)],
            groups=groups.astype(np.int64), scaling=self.scaling[li], windows=self.windows[li],
            sinks=None if self.sinks is None else self.sinks[np.ix_(li, hi)])
