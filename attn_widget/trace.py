"""AttentionTrace: the captured attention of one run, stored compactly.

The trace owns the tokens, the spans (prompt / generated, or source / target) and the
attention weights of every captured layer and head, stored as float16. Causal
self-attention is stored as its packed lower triangle: row ``i`` holds keys ``0..i`` and
rows are laid end to end, so row ``i`` starts at offset ``i * (i + 1) // 2``. That layout
lets capture append one decode step as one contiguous slice.

This module knows nothing of torch, widgets or browsers; it is plain numpy. The packed
layout lives in :mod:`attn_widget.geometry`, tokens in :mod:`attn_widget.tokens`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .blockcache import ArrayCache
from .geometry import n_from_packed, pack_causal, packed_rows, tril_offset, unpack_causal
from .querykeys import ROW_CHUNK, QueryKeys, one_blas_thread
from .selection import Indices, check_index, format_ranges, model_indices, position_in
from .tokens import TokenTable
from .valuenorms import ValueNorms, check_weighting

CACHE_BYTES = 64 * 2**20
"""Bytes of pooled images and regions each block keeps for reuse (least recently used dropped)."""


class AttentionBlock:
    """One kind of attention in a trace: ``self``, or ``encoder``/``decoder``/``cross``.

    A block holds its weights in one of two forms (``form``):

    - ``"weights"``: ``data``, float16; causal blocks (n_layers, n_heads, T * (T + 1) // 2),
      packed lower triangles; otherwise (n_layers, n_heads, n_queries, n_keys);
    - ``"queries-keys"``: ``qk``, a :class:`~attn_widget.querykeys.QueryKeys` that grows with T
      instead of T²; heads, rows and layer means are recomputed from it when asked, and ``data``
      is built (once, then kept) only when something needs every weight.

    layers, heads : the model's layer and (query) head indices the block holds, in order.
    queries, keys : which token sequence each axis runs over: ``"tokens"`` or
        ``"source_tokens"``.
    norms : :class:`~attn_widget.valuenorms.ValueNorms` or None: ``‖f_h(x_j)‖`` per layer, head
        and key, for the value-weighted views (``weighting="norm"``: ``α_ij ‖f_h(x_j)‖``).
    """

    def __init__(self, name: str, causal: bool, layers: tuple[int, ...], heads: tuple[int, ...],
                 data: np.ndarray | None = None, queries: str = "tokens", keys: str = "tokens", *,
                 qk: QueryKeys | None = None, norms: ValueNorms | None = None):
        if (data is None) == (qk is None):
            raise ValueError("an attention block holds either its weights (data) or its queries and "
                             "keys (qk), exactly one of them")
        self.name, self.causal = name, bool(causal)
        self.layers, self.heads = tuple(layers), tuple(heads)
        self.queries, self.keys = queries, keys
        self._data, self.qk = data, qk
        self.norms = norms
        self._cache = ArrayCache(CACHE_BYTES)

    @property
    def form(self) -> str:
        """``"weights"`` or ``"queries-keys"``: what the block stores."""
        return "weights" if self.qk is None else "queries-keys"

    @property
    def data(self) -> np.ndarray:
        """float16 weights of every layer and head in the stored layout (built from ``qk`` on first
        use: 2 · n_layers · n_heads · T²/2 bytes for a causal block)."""
        if self._data is None:
            self._data = np.stack([np.stack([self.qk.packed(li, hi) for hi in range(len(self.heads))])
                                   for li in range(len(self.layers))])
        return self._data

    @property
    def n_queries(self) -> int:
        if self.qk is not None:
            return self.qk.n_queries
        return n_from_packed(self._data.shape[-1]) if self.causal else self._data.shape[2]

    @property
    def n_keys(self) -> int:
        if self.qk is not None:
            return self.qk.n_keys
        return self.n_queries if self.causal else self._data.shape[3]

    @property
    def weights_nbytes(self) -> int:
        """Bytes of every weight as float16 in the stored layout (what ``data`` is or would be)."""
        cells = tril_offset(self.n_queries) if self.causal else self.n_queries * self.n_keys
        return 2 * len(self.layers) * len(self.heads) * cells

    @property
    def nbytes(self) -> int:
        """Bytes the block holds now."""
        return ((0 if self._data is None else self._data.nbytes) + (0 if self.qk is None else self.qk.nbytes)
                + (0 if self.norms is None else self.norms.nbytes))

    def key_factors(self, li, hi, weighting: str) -> np.ndarray | None:
        """float32 (…, n_keys) what each key's weight is multiplied by under ``weighting`` for
        positional indices ``li``, ``hi`` (broadcast together): None for ``"attention"``,
        ``‖f_h(x_j)‖`` for ``"norm"``."""
        if check_weighting(weighting) == "attention":
            return None
        if self.norms is None:
            raise ValueError(f"block {self.name!r} holds no value norms, so weighting='norm' cannot be "
                             "computed; capture with values='norms' (a trace built from weights alone, "
                             "or captured with values=False, has none)")
        return self.norms.norms[li, hi]

    def layer_pos(self, layer: int) -> int:
        return position_in(self.layers, layer, "layer", self.name)

    def head_pos(self, head: int) -> int:
        return position_in(self.heads, head, "head", self.name)

    def _pairs(self, li, hi) -> tuple[np.ndarray, np.ndarray]:
        """Layer and head positions that ``data[li, hi]`` would select, with numpy's indexing."""
        grid = np.indices((len(self.layers), len(self.heads)))
        return grid[0][li, hi], grid[1][li, hi]

    def packed(self, li: int, hi: int, weighting: str = "attention") -> np.ndarray:
        """float16 weights of one head (positions into the block) in the stored layout; a view
        when the block holds weights and ``weighting`` is ``"attention"``."""
        if self.key_factors(li, hi, weighting) is not None:
            return self.stored_layout(li, hi, weighting).astype(np.float16)
        return self.qk.packed(li, hi) if self._data is None else self._data[li, hi]

    def stored_layout(self, li: int, hi: int | None, weighting: str) -> np.ndarray:
        """float32 rows of head position ``hi`` (None: the mean of heads) of layer position
        ``li`` in the stored layout (packed lower triangle or dense), built ``ROW_CHUNK`` rows at a
        time."""
        t = self.n_queries
        if not self.causal:
            return self.head_rows(li, hi, 0, t, weighting)
        out = np.empty(tril_offset(t), np.float32)
        for s in range(0, t, ROW_CHUNK):
            e = min(s + ROW_CHUNK, t)
            seen = np.arange(e)[None, :] <= np.arange(s, e)[:, None]  # row-major: the packed order
            out[tril_offset(s):tril_offset(e)] = self.head_rows(li, hi, s, e, weighting)[:, :e][seen]
        return out

    def dense(self, li: int | slice | np.ndarray, hi: int | slice | np.ndarray,
              weighting: str = "attention") -> np.ndarray:
        """float32 dense (…, n_queries, n_keys) for positional indices (broadcast together);
        ``weighting="norm"``: each weight times ``‖f_h(x_j)‖`` of its key."""
        if self._data is None:
            return self.rows(li, hi, 0, self.n_queries, weighting)
        factors = self.key_factors(li, hi, weighting)
        packed = self._data[li, hi]
        out = unpack_causal(packed, self.n_queries) if self.causal else packed.astype(np.float32)
        if factors is not None:
            out *= factors[..., None, :]
        return out

    def rows(self, li, hi, start: int, stop: int, weighting: str = "attention") -> np.ndarray:
        """float32 (…, stop - start, n_keys) for query rows ``start:stop``; zeros above diagonal;
        ``weighting="norm"``: each weight times ``‖f_h(x_j)‖`` of its key."""
        factors = self.key_factors(li, hi, weighting)
        if self._data is None:
            pairs = self._pairs(li, hi)
            out = np.empty(pairs[0].shape + (stop - start, self.n_keys), np.float32)
            for idx in np.ndindex(pairs[0].shape):
                out[idx] = self.qk.rows(int(pairs[0][idx]), int(pairs[1][idx]), start, stop)
        elif not self.causal:
            out = self._data[li, hi, ..., start:stop, :].astype(np.float32)
        else:
            out = packed_rows(self._data[li, hi], start, stop, self.n_keys)
        if factors is not None:
            out *= factors[..., None, :]
        return out

    def head_rows(self, li: int, hi: int | None, start: int, stop: int,
                  weighting: str = "attention") -> np.ndarray:
        """float32 (stop - start, n_keys): query rows of head position ``hi`` of layer position
        ``li``, or of the mean of the block's heads when ``hi`` is None."""
        if hi is not None:
            return self.rows(li, hi, start, stop, weighting)
        total = self.rows(li, 0, start, stop, weighting)
        for h in range(1, len(self.heads)):
            total += self.rows(li, h, start, stop, weighting)
        total /= len(self.heads)
        return total

    def pooled(self, li: int, hi: int | None, side: int, weighting: str = "attention") -> np.ndarray:
        """float32 (ceil(n_queries / side), ceil(n_keys / side)): each cell the max over a
        ``side`` × ``side`` square of head ``hi`` (None: the mean of heads) of layer ``li``
        (positions), so single strong weights survive. Computed ``ROW_CHUNK``-ish rows at a time
        from queries and keys (never the whole matrix) and kept in the block's small cache, apart
        for each ``weighting`` (``"norm"``: of ``α_ij ‖f_h(x_j)‖``)."""
        side = int(side)
        if side < 1:
            raise ValueError(f"side must be a positive number of tokens; got {side}")
        self.key_factors(li, 0 if hi is None else hi, weighting)  # refused before any work
        key = ("pooled", int(li), None if hi is None else int(hi), side, weighting)
        hit = self._cache_get(key)
        if hit is not None:
            return hit
        nq, nk = self.n_queries, self.n_keys
        c = math.ceil(nk / side)
        out = np.empty((math.ceil(nq / side), c), np.float32)
        step = side * max(1, ROW_CHUNK // side)
        with one_blas_thread():
            self._pool_into(out, li, hi, side, step, weighting)
        return self._cache_put(key, out)

    def _pool_into(self, out: np.ndarray, li: int, hi: int | None, side: int, step: int,
                   weighting: str) -> None:
        for s in range(0, self.n_queries, step):
            e = min(s + step, self.n_queries)
            self._pool_rows(out, self.head_rows(li, hi, s, e, weighting), s, e, side)

    def _pool_rows(self, out: np.ndarray, rows: np.ndarray, s: int, e: int, side: int) -> None:
        """Max-pool query rows ``s:e`` (``s`` a multiple of ``side``) into ``out``'s squares."""
        nk, c = self.n_keys, out.shape[1]
        seen = min(e, nk) if self.causal else nk  # later columns are 0 in a causal chunk
        cols = np.zeros((e - s, c), np.float32)
        cols[:, :math.ceil(seen / side)] = np.maximum.reduceat(
            rows[:, :seen], np.arange(0, seen, side), axis=1)
        out[s // side:s // side + math.ceil((e - s) / side)] = np.maximum.reduceat(
            cols, np.arange(0, e - s, side), axis=0)

    def pooled_layer(self, li: int, side: int, weighting: str = "attention") -> list[np.ndarray]:
        """:meth:`pooled` of every head of layer position ``li`` and then of their mean (``hi``
        None), from one pass over each head's rows (asked one by one, the mean recomputes every
        head). Each goes into the cache as :meth:`pooled` keeps it, so later calls are free."""
        side = int(side)
        heads = list(range(len(self.heads)))
        keys = [("pooled", int(li), h, side, weighting) for h in heads + [None]]
        hits = [self._cache_get(k) for k in keys]
        if all(h is not None for h in hits):
            return hits
        self.key_factors(li, 0, weighting)  # refused before any work
        shape = (math.ceil(self.n_queries / side), math.ceil(self.n_keys / side))
        outs = [np.empty(shape, np.float32) for _ in keys]
        step = side * max(1, ROW_CHUNK // side)
        with one_blas_thread():
            for s in range(0, self.n_queries, step):
                e = min(s + step, self.n_queries)
                total = None
                for h in heads:  # the mean sums the rows in head_rows' order: the same numbers
                    rows = self.rows(li, h, s, e, weighting)
                    self._pool_rows(outs[h], rows, s, e, side)
                    total = rows if total is None else np.add(total, rows, out=total)
                total /= len(heads)
                self._pool_rows(outs[-1], total, s, e, side)
        return [self._cache_put(k, out) for k, out in zip(keys, outs)]

    def cache_holding(self, nbytes: int) -> contextlib.AbstractContextManager[None]:
        """Let the block's cache hold at least ``nbytes`` meanwhile (a snapshot's pooled images,
        made once and read back as it is written), then shrink it back."""
        return self._cache.holding(nbytes)

    def region(self, li: int, hi: int | None, queries: tuple[int, int],
               keys: tuple[int, int], weighting: str = "attention") -> np.ndarray:
        """float32 (q1 - q0, k1 - k0): full-resolution weights of rows ``q0:q1`` and columns
        ``k0:k1`` of head ``hi`` (None: the mean of heads) of layer ``li`` (positions); rows are
        normalised over all keys, as in the model (``weighting="norm"``: ``α_ij ‖f_h(x_j)‖``, as
        :meth:`rows`). Kept in the block's small cache."""
        (q0, q1), (k0, k1) = (int(x) for x in queries), (int(x) for x in keys)
        if not (0 <= q0 < q1 <= self.n_queries and 0 <= k0 < k1 <= self.n_keys):
            raise ValueError(f"region rows {q0}:{q1} and columns {k0}:{k1} must be non-empty and "
                             f"inside {self.n_queries} queries × {self.n_keys} keys")
        self.key_factors(li, 0 if hi is None else hi, weighting)
        key = ("region", int(li), None if hi is None else int(hi), q0, q1, k0, k1, weighting)
        hit = self._cache_get(key)
        if hit is not None:
            return hit
        out = np.empty((q1 - q0, k1 - k0), np.float32)
        with one_blas_thread():
            for s in range(q0, q1, ROW_CHUNK):
                e = min(s + ROW_CHUNK, q1)
                out[s - q0:e - q0] = self.head_rows(li, hi, s, e, weighting)[:, k0:k1]
        return self._cache_put(key, out)

    def layer_rows(self, li: int, start: int, stop: int) -> np.ndarray:
        """float32 (stop - start, n_keys): ``‖Σ_h α^h_ij f_h(x_j)‖`` over the block's heads of
        layer position ``li``, for query rows ``start:stop`` (needs the Gram kept by
        ``capture(values="layer")``)."""
        self.key_factors(li, 0, "norm")
        out = np.empty((stop - start, self.n_keys), np.float32)
        with one_blas_thread():
            for s in range(start, stop, ROW_CHUNK):
                e = min(s + ROW_CHUNK, stop)
                alphas = self.rows(li, slice(None), s, e)
                out[s - start:e - start] = self.norms.layer_rows(li, alphas)
        return out

    def _cache_get(self, key: tuple) -> np.ndarray | None:
        return self._cache.get(key)

    def _cache_put(self, key: tuple, value: np.ndarray) -> np.ndarray:
        """Keep ``value`` (read-only) unless it is over a quarter of :data:`CACHE_BYTES`; drop the
        least recently used entries past the budget (:meth:`cache_holding` raises it a while)."""
        return self._cache.put(key, value)

    def mean_of_heads(self, li: int, weighting: str = "attention") -> np.ndarray:
        """float32 mean over the captured heads of layer position ``li``, in the stored layout."""
        if self.key_factors(li, slice(None), weighting) is not None:
            return self.stored_layout(li, None, weighting)
        if self._data is not None:
            return self._data[li].astype(np.float32).mean(axis=0)
        return self.qk.packed(li, None)

    def select(self, li: Sequence[int], hi: Sequence[int]) -> AttentionBlock:
        """This block for layer positions ``li`` and head positions ``hi``."""
        layers = tuple(self.layers[i] for i in li)
        heads = tuple(self.heads[i] for i in hi)
        norms = None if self.norms is None else self.norms.select(li, hi)
        if self._data is None:
            return AttentionBlock(self.name, self.causal, layers, heads, None, self.queries, self.keys,
                                  qk=self.qk.select(li, hi), norms=norms)
        return AttentionBlock(self.name, self.causal, layers, heads, self._data[np.ix_(li, hi)],
                              self.queries, self.keys, norms=norms)

    def on_axes(self, queries: str, keys: str) -> AttentionBlock:
        """The same block, its axes named ``queries`` and ``keys`` (no copy)."""
        return AttentionBlock(self.name, self.causal, self.layers, self.heads, self._data, queries, keys,
                              qk=self.qk, norms=self.norms)


class AttentionTrace:
    """Captured attention of one run, with its tokens.

    Build one with :func:`attn_widget.capture`, :meth:`from_dense` or :func:`load_trace`.

    Attributes
    ----------
    tokens : TokenTable
        Every token of the main sequence (decoder side for encoder-decoder models).
    source_tokens : TokenTable or None
        Encoder-side tokens of an encoder-decoder model.
    spans : dict of name -> (start, stop)
        ``prompt`` and ``generated`` for decoder-only models; ``input`` for encoders;
        ``source`` (over ``source_tokens``) and ``target`` for encoder-decoder models.
    blocks : dict of name -> AttentionBlock
        ``self`` for decoder-only and encoder-only models; ``encoder``, ``decoder`` and
        ``cross`` for encoder-decoder models.
    model : dict
        ``name``, ``architecture`` (``decoder``, ``encoder`` or ``encoder-decoder``),
        ``n_layers``, ``n_heads``, ``n_kv_heads`` and a config summary.
    options : dict
        The capture options (``max_new_tokens``, layers, heads, generate kwargs…).
    """

    def __init__(self, tokens: TokenTable, blocks: dict[str, AttentionBlock],
                 spans: dict[str, tuple[int, int]], model: dict[str, Any],
                 options: dict[str, Any] | None = None, source_tokens: TokenTable | None = None):
        if not blocks:
            raise ValueError("a trace needs at least one attention block")
        self.tokens = tokens
        self.source_tokens = source_tokens
        self.blocks = dict(blocks)
        self.spans = {k: (int(v[0]), int(v[1])) for k, v in spans.items()}
        self.model = dict(model)
        self.options = dict(options or {})
        self.computed: dict[tuple, Any] = {}
        """Results of analyses over this trace, keyed by what was asked (the trace never changes,
        so they stay valid); bounded by what the analyses store."""
        for b in self.blocks.values():
            for axis, n in ((b.queries, b.n_queries), (b.keys, b.n_keys)):
                seq = self.sequence(axis)
                if len(seq) != n:
                    raise ValueError(
                        f"block {b.name!r} has {n} positions on its {axis} axis but the trace has "
                        f"{len(seq)} {axis}")

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dense(cls, attention: np.ndarray, tokens: Sequence[str], *, prompt_len: int | None = None,
                   causal: bool = True, layers: Sequence[int] | None = None,
                   heads: Sequence[int] | None = None, model_name: str = "custom",
                   token_ids: Sequence[int] | None = None) -> AttentionTrace:
        """A trace from a dense array, for tests and for attention computed elsewhere.

        attention : array of shape (n_layers, n_heads, T, T); rows are queries, each a softmax
            over keys: no NaN, nothing negative, summing to 1 (± ``max(1e-3, 2 eps)`` of its
            dtype) and, when ``causal``, nothing above the diagonal.
        tokens : the T token texts.
        prompt_len : tokens before generation started (default: all of them are prompt).
        layers, heads : the model indices of the array's layers and heads (default 0, 1, …).

        Raises ``ValueError`` (``TypeError`` for a value of the wrong kind) for anything else.
        """
        from .selection import is_int

        raw = np.asarray(attention)
        if raw.dtype == bool or not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
            raise TypeError(f"attention must be an array of real numbers; got dtype {raw.dtype}")
        if raw.ndim != 4 or raw.shape[2] != raw.shape[3] or 0 in raw.shape:
            raise ValueError(f"attention must have shape (n_layers, n_heads, T, T) with at least one layer, "
                             f"head and token; got {raw.shape}")
        a = raw.astype(np.float32)
        t = a.shape[2]
        tokens = list(tokens)
        if not all(isinstance(x, str) for x in tokens):
            raise TypeError("tokens must be strings (the token texts)")
        if len(tokens) != t:
            raise ValueError(f"attention covers {t} positions but {len(tokens)} tokens were given")
        if not isinstance(causal, (bool, np.bool_)):
            raise TypeError(f"causal must be True or False; got {causal!r}")
        if not np.isfinite(a).all():
            raise ValueError("attention contains NaN or infinite values; rows must be softmax weights")
        if (a < 0).any():
            raise ValueError("attention has negative weights; rows must be softmax weights")
        eps = np.finfo(raw.dtype).eps if np.issubdtype(raw.dtype, np.floating) else 0.0
        tolerance = max(1e-3, 2 * float(eps))
        sums = a.sum(axis=-1, dtype=np.float64)
        above = sums - np.tril(a).sum(axis=-1, dtype=np.float64) if causal else np.zeros_like(sums)
        rule = f"each sums to 1 ± {tolerance:g}{', nothing above the diagonal' if causal else ''}"
        for bad, fact in ((np.abs(sums - 1) > tolerance, lambda i: f"sums to {sums[i]:.4g}"),
                          (above > tolerance, lambda i: f"puts {above[i]:.3g} of its weight above the "
                           "diagonal")):
            if bad.any():
                i = tuple(int(x) for x in np.argwhere(bad)[0])
                raise ValueError(f"attention rows must be softmax weights ({rule}); layer {i[0]} head {i[1]} "
                                 f"row {i[2]} {fact(i)}")

        def indices(given, n: int, what: str) -> tuple[int, ...]:
            out = tuple(range(n)) if given is None else tuple(given)
            if len(out) != n or not all(is_int(x) and x >= 0 for x in out) or len(set(out)) != n:
                raise ValueError(f"{what} must be {n} distinct non-negative integers (the model indices of "
                                 f"the array's {n} {what}); got {list(out)!r}")
            return tuple(int(x) for x in out)

        layers, heads = indices(layers, a.shape[0], "layers"), indices(heads, a.shape[1], "heads")
        ids = list(token_ids) if token_ids is not None else list(range(t))
        if len(ids) != t or not all(is_int(i) for i in ids):
            raise ValueError(f"token_ids must be {t} integers, one per token; got {ids!r}")
        p = t if prompt_len is None else prompt_len
        if not is_int(p) or not 0 <= p <= t:
            raise ValueError(f"prompt_len must be an integer between 0 and {t}; got {prompt_len!r}")
        p = int(p)
        data = pack_causal(a) if causal else a.astype(np.float16)
        table = TokenTable(ids, tokens, tokens)
        spans = {"prompt": (0, p), "generated": (p, t)} if causal else {"input": (0, t)}
        arch = "decoder" if causal else "encoder"
        model = {"name": str(model_name), "architecture": arch, "n_layers": max(layers) + 1,
                 "n_heads": max(heads) + 1, "n_kv_heads": max(heads) + 1}
        block = AttentionBlock("self", bool(causal), layers, heads, data)
        return cls(table, {"self": block}, spans, model, {"max_new_tokens": t - p})

    # ----------------------------------------------------------------- shape and names
    @property
    def architecture(self) -> str:
        return self.model.get("architecture", "decoder")

    @property
    def default_block(self) -> str:
        return "decoder" if "decoder" in self.blocks else next(iter(self.blocks))

    def block(self, name: str | None = None) -> AttentionBlock:
        name = self.default_block if name is None else name
        if name not in self.blocks:
            raise KeyError(f"block must be one of {sorted(self.blocks)}; got {name!r}")
        return self.blocks[name]

    def narrow(self, *, block: str | None = None, layers: Indices = None,
               heads: Indices = None) -> AttentionTrace:
        """This trace with one attention block, optionally only some of its layers and heads.

        The block (default: :attr:`default_block`) becomes the trace's only block, over its own
        query tokens: the encoder block of an encoder-decoder trace runs over ``source_tokens``,
        which become the narrowed trace's ``tokens`` (with one ``input`` span). Cross-attention
        keeps the decoder tokens as queries and ``source_tokens`` as keys. The arrays are shared
        when every layer and head is kept (no copy).

        >>> small = trace.narrow(layers=[0, 1], heads=[3])
        >>> small.layers, small.heads
        ((0, 1), (3,))
        """
        name = self.default_block if block is None else block
        b = self.block(name)
        if b.queries == "source_tokens":
            tokens, spans = self.source_tokens, {"input": (0, len(self.source_tokens))}
            b = b.on_axes("tokens", "tokens" if b.keys == b.queries else b.keys)
        else:
            tokens, spans = self.tokens, dict(self.spans)
        if layers is not None or heads is not None:
            lsel = model_indices(layers, b.layers, self.model.get("n_layers"), "layers")
            hsel = model_indices(heads, b.heads, self.model.get("n_heads"), "heads")
            b = b.select([b.layer_pos(x) for x in lsel], [b.head_pos(x) for x in hsel])
        elif list(self.blocks) == [name]:
            return self
        return AttentionTrace(tokens, {name: b}, spans, self.model, self.options, self.source_tokens)

    @property
    def layers(self) -> tuple[int, ...]:
        """Model layer indices captured (in the default block)."""
        return self.block().layers

    @property
    def heads(self) -> tuple[int, ...]:
        """Model query-head indices captured (in the default block)."""
        return self.block().heads

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return self.tokens.full_text

    @property
    def prompt_len(self) -> int:
        return self.spans.get("prompt", self.spans.get("input", self.spans.get("target", (0, 0))))[1]

    @property
    def n_generated(self) -> int:
        s = self.spans.get("generated")
        return 0 if s is None else s[1] - s[0]

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", "unknown"))

    def sequence(self, axis: str) -> TokenTable:
        """The tokens an attention axis runs over: ``"tokens"`` or ``"source_tokens"``."""
        if axis == "tokens":
            return self.tokens
        if axis == "source_tokens" and self.source_tokens is not None:
            return self.source_tokens
        raise ValueError(f"unknown token axis {axis!r}")

    def span(self, name_or_text: str | Sequence[int], occurrence: int = 0) -> list[int]:
        """Token positions of a span given by name (``"prompt"``), substring or positions.

        occurrence : which match of a substring, counting from 0; negative counts from the last
            (``-1``: the last match).
        """
        if isinstance(name_or_text, str):
            if name_or_text in self.spans:
                a, b = self.spans[name_or_text]
                return list(range(a, b))
            return self.tokens.find(name_or_text, occurrence)
        if not hasattr(name_or_text, "__iter__"):
            raise TypeError(f"span must be a span name, a substring or a sequence of positions; got "
                            f"{type(name_or_text).__name__}")
        return [check_index(i, len(self.tokens), "span position") for i in name_or_text]

    # ----------------------------------------------------------------- attention access
    # ``weighting``: "attention" (the weights α) or "norm" (α_ij · ‖f_h(x_j)‖, Kobayashi et al.
    # 2020: how much of what the head moved came from key j; see attn_widget.valuenorms).
    def head(self, layer: int, head: int, block: str | None = None, *,
             weighting: str = "attention") -> np.ndarray:
        """float32 (n_queries, n_keys) attention of one model layer and head; with
        ``weighting="norm"``, ``α_ij ‖f_h(x_j)‖`` (not normalised: rows sum to the length of what
        the head moved, up to cancellation)."""
        b = self.check_weighting(weighting, block)
        return b.dense(b.layer_pos(layer), b.head_pos(head), weighting)

    def layer_mean(self, layer: int, block: str | None = None, *, weighting: str = "attention") -> np.ndarray:
        """float32 (n_queries, n_keys): the mean over the captured heads of one layer."""
        b = self.check_weighting(weighting, block)
        mean = b.mean_of_heads(b.layer_pos(layer), weighting)
        return unpack_causal(mean, b.n_queries) if b.causal else mean

    def attention(self, block: str | None = None, layers: Sequence[int] | None = None,
                  heads: Sequence[int] | None = None, *, weighting: str = "attention") -> np.ndarray:
        """float32 dense (n_layers, n_heads, n_queries, n_keys) for model layer/head indices.

        Memory: 4 · layers · heads · T² bytes; prefer :meth:`head` or :meth:`row` for long runs.
        """
        b = self.check_weighting(weighting, block)
        li = np.array([b.layer_pos(x) for x in (b.layers if layers is None else layers)], dtype=np.intp)
        hi = np.array([b.head_pos(x) for x in (b.heads if heads is None else heads)], dtype=np.intp)
        return b.dense(li[:, None], hi[None, :], weighting)

    def row(self, position: int, block: str | None = None, *, weighting: str = "attention") -> np.ndarray:
        """float32 (n_layers, n_heads, n_keys): what query ``position`` attends to."""
        b = self.check_weighting(weighting, block)
        position = check_index(position, b.n_queries, "position")
        return b.rows(slice(None), slice(None), position, position + 1, weighting)[:, :, 0, :]

    def step(self, t: int, block: str | None = None, *, weighting: str = "attention") -> np.ndarray:
        """float32 (n_layers, n_heads, n_keys): the attention that produced generated token ``t``.

        Generated token ``t`` (0-based) sits at position ``prompt_len + t``; it was predicted by
        the query one position earlier, so this is that query's row. Keys past it are zero.
        """
        if self.n_generated == 0:
            raise ValueError("this trace has no generated tokens (it was a forward pass); capture "
                             "with max_new_tokens > 0 to step through generation")
        t = check_index(t, self.n_generated, "generation step")
        start = self.spans["generated"][0]
        if start + t == 0:
            raise ValueError("generated token 0 is at position 0 and has no producing query")
        return self.row(start + t - 1, block, weighting=weighting)

    # ----------------------------------------------------------------- value-weighted views
    @property
    def has_value_norms(self) -> bool:
        """Whether every block keeps the norms ``weighting="norm"`` needs."""
        return all(b.norms is not None for b in self.blocks.values())

    def check_weighting(self, weighting: str, block: str | None = None) -> AttentionBlock:
        """Block ``block`` when it can be read with ``weighting``; otherwise one ``ValueError``
        saying why (an unknown weighting, or no value norms and what to do)."""
        b = self.block(block)
        if check_weighting(weighting) == "norm" and b.norms is None:
            why = self.options.get("values_unavailable") or (
                "captured with values=False, read from a file of format version 3 or older, or built "
                "from weights alone")
            raise ValueError(f"weighting='norm' needs the norms of the values, and block {b.name!r} of this "
                             f"trace holds none ({why}); capture with values='norms', or use "
                             "weighting='attention'")
        return b

    def value_norms(self, layer: int, head: int, block: str | None = None) -> np.ndarray:
        """float32 (n_keys,): ``‖f_h(x_j)‖`` of each key position ``j`` for one model layer and
        head, the length of what the head would move if it put all its weight on that key."""
        b = self.check_weighting("norm", block)
        return b.norms.norms[b.layer_pos(layer), b.head_pos(head)].copy()

    def layer_contribution(self, layer: int, position: int | None = None,
                           block: str | None = None) -> np.ndarray:
        """``‖Σ_h α^h_ij f_h(x_j)‖``: what key ``j`` added to query ``i``'s position through all
        the captured heads of one layer together (heads can cancel, so it is at most the sum of
        the heads' ``α_ij ‖f_h(x_j)‖``).

        Needs ``capture(..., values="layer")``, which keeps the heads' Gram matrix per layer and
        key position (``H (H + 1) / 2`` numbers). Returns float32 (n_queries, n_keys) for the
        layer, or (n_keys,) for query ``position``: ``T² · H²`` multiply-adds for the layer.
        """
        b = self.check_weighting("norm", block)
        li = b.layer_pos(layer)
        if position is None:
            return b.layer_rows(li, 0, b.n_queries)
        position = check_index(position, b.n_queries, "position")
        return b.layer_rows(li, position, position + 1)[0]

    def step_position(self, t: int) -> int:
        """The query position whose attention produced generated token ``t``."""
        if self.n_generated == 0:
            raise ValueError("this trace has no generated tokens (it was a forward pass)")
        return self.spans["generated"][0] + check_index(t, self.n_generated, "generation step") - 1

    def __repr__(self) -> str:
        b = self.block()
        parts = [f"model={self.model_name!r}", f"tokens={len(self.tokens)}"]
        if "prompt" in self.spans:
            parts.append(f"prompt={self.prompt_len}, generated={self.n_generated}")
        parts.append(f"layers={format_ranges(b.layers)}/{self.model.get('n_layers', '?')}")
        parts.append(f"heads={format_ranges(b.heads)}/{self.model.get('n_heads', '?')}")
        if len(self.blocks) > 1:
            parts.append(f"blocks={list(self.blocks)}")
        nbytes = sum(x.nbytes for x in self.blocks.values())
        forms = {x.form for x in self.blocks.values()}
        held = "float16 weights" if forms == {"weights"} else (
            "queries and keys" if forms == {"queries-keys"} else "weights, queries and keys")
        if self.has_value_norms:
            held += " and value norms"
        parts.append(f"{nbytes / 2**20:.1f} MiB of {held}")
        text = self.text.replace("\n", "⏎")
        parts.append(f"text={text[:60]!r}{'…' if len(text) > 60 else ''}")
        return "AttentionTrace(" + ", ".join(parts) + ")"

    def show(self, **kwargs):
        """An interactive :class:`AttentionWidget` of this trace."""
        from .widget import AttentionWidget

        return AttentionWidget(self, **kwargs)

    # ----------------------------------------------------------------- disk format
    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace to one file, atomically (a temporary file, then a rename); read it
        back with :func:`attn_widget.load_trace`.

        The trace is checked before anything at ``path`` is touched (a trace broken in memory
        raises ``ValueError``); only a regular file or a new name is replaced, and a symbolic
        link is followed (the file it points to is replaced, the link stays).
        """
        from .tracefile import save_trace

        return save_trace(self, path)
