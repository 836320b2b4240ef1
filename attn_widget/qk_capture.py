"""Attention from fast kernels: keep the queries and keys, recompute the weights when asked.

SDPA and flash attention return no weights. Instead of switching a model to eager attention,
capture wraps the model's own attention function (the one transformers' ``AttentionInterface``
maps its ``attn_implementation`` to) for the duration of the call. The wrapper runs the model's
kernel unchanged for the output and, for the attention modules being captured, keeps the
post-RoPE (post q/k-norm) queries of the captured heads and the new keys of the key/value
groups they read, with the layer's scaling, sliding window, soft-capping and sink logits:
:class:`~attn_widget.querykeys.QueryKeys` recomputes the weights from them exactly. Keys are
kept by absolute position, so sliding-window caches, which drop old keys, still give rows laid
out over every position (zeros outside the window).

An eager model is tapped the same way, through its modeling module's own eager function
registered under a name of ours for the call (:func:`eager_alias`). What this cannot see is an
additive position bias inside the mask (ALiBi) or computed in the module (T5):
:func:`attn_widget.capturing.recompute_matches` checks the recompute against an eager pass once
per model class, and capture falls back to eager hooks where they differ.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .querykeys import QueryKeys

_TAPS: dict[str, tuple[Callable, int]] = {}  # implementation → (its original function, users)
_TAPS_LOCK = threading.Lock()
_ACTIVE: dict[int, QueryKeyTap] = {}  # capturing thread → its tap


class QueryKeyTap:
    """Keeps the queries and keys of the modules one capture watches.

    slots : ``{id(module): (kind, li, layer)}`` for the attention modules to record.
    heads : ``{kind: [query heads kept]}``.
    causal : ``{kind: bool}``.
    lengths : ``{kind: (queries, keys)}``: the most positions the run can produce.
    on_step : called once per decode step (one new query in the first watched module).
    on_layer : called as each watched module finishes a pass of several queries (the prompt).
    on_values : called with ``(kind, li, start, values)`` for each pass: the values (1, n_kv_groups,
        n, head_dim) of key positions ``start .. start + n`` as the kernel received them, on its
        device (:class:`attn_widget.values.ValueRecorder` keeps their norms).
    """

    def __init__(self, slots: dict[int, tuple[str, int, int]], heads: dict[str, list[int]],
                 causal: dict[str, bool], lengths: dict[str, tuple[int, int]],
                 on_step: Callable[[], None] | None = None, on_layer: Callable[[], None] | None = None,
                 on_values: Callable[[str, int, int, torch.Tensor], None] | None = None):
        self.on_values = on_values
        self.slots = slots
        self.heads = {kind: list(hs) for kind, hs in heads.items()}
        self.causal = causal
        self.lengths = lengths
        self.on_step, self.on_layer = on_step, on_layer
        self.n_layers = {kind: 1 + max(li for k, li, _ in slots.values() if k == kind) for kind in heads}
        self.first = min(slots.values(), key=lambda s: s[1])[0:2] if slots else None
        # One preallocated host buffer per kind (layers × kept heads or groups × positions × dim),
        # filled in place: no chunk lists to concatenate, so the peak stays at the final size.
        self.queries: dict[str, torch.Tensor] = {}
        self.keys: dict[str, torch.Tensor] = {}
        self.filled: dict[tuple[str, int], int] = {}
        self.facts: dict[tuple[str, int], dict[str, Any]] = {}
        self._index: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.group_of: dict[str, Any] = {}  # per kind: the position in ``keys`` each kept head reads

    def record(self, module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None, kwargs: dict[str, Any]) -> None:
        """Keep the kept heads' new queries and their groups' new keys, on the host, and hand the
        new values to ``on_values``."""
        kind, li, layer = self.slots[id(module)]
        n_new = query.shape[2]
        heads, groups = self._indices(kind, query.shape[1], key.shape[1], query.device)
        new_keys = key[:, :, -n_new:] if self.causal[kind] else key
        if kind not in self.queries:
            q_max, k_max = self.lengths[kind]
            d = query.shape[-1]
            self.queries[kind] = torch.zeros((self.n_layers[kind], len(heads), q_max, d), dtype=torch.float32)
            self.keys[kind] = torch.zeros((self.n_layers[kind], len(groups), k_max, d), dtype=torch.float32)
        start = self.filled.get((kind, li), 0) if self.causal[kind] else 0
        stop = start + n_new
        if stop > self.queries[kind].shape[2]:
            raise RuntimeError(f"{kind} attention layer {layer} produced more than the "
                               f"{self.queries[kind].shape[2]} positions expected")
        self.queries[kind][li, :, start:stop] = query[0].index_select(0, heads)
        self.keys[kind][li, :, start:start + new_keys.shape[2]] = new_keys[0].index_select(0, groups)
        if self.on_values is not None:
            self.on_values(kind, li, start, value[:, :, -n_new:] if self.causal[kind] else value)
        self.filled[(kind, li)] = stop
        if (kind, li) not in self.facts:
            sinks = kwargs.get("s_aux")
            self.facts[(kind, li)] = {
                "scaling": scaling if scaling is not None else query.shape[-1] ** -0.5,
                "window": int(kwargs.get("sliding_window") or 0), "softcap": kwargs.get("softcap") or 0.0,
                "sinks": None if sinks is None else sinks.detach().index_select(0, heads).to("cpu").float()}
        if n_new == 1 and self.on_step is not None and (kind, li) == self.first:
            self.on_step()
        elif n_new > 1 and self.on_layer is not None:
            self.on_layer()

    def _indices(self, kind: str, n_heads: int, n_groups: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept heads, and the key/value groups they read, as index tensors on ``device``."""
        key = (kind, str(device))
        if key not in self._index:
            heads = torch.tensor(self.heads[kind])
            group_of_head = heads // (n_heads // n_groups)
            groups = torch.unique(group_of_head)
            self.group_of[kind] = torch.searchsorted(groups, group_of_head).numpy()
            self._index[key] = (heads.to(device), groups.to(device))
        return self._index[key]

    def positions(self, kind: str, li: int) -> int:
        """Query positions recorded so far for captured layer ``li``."""
        return self.filled.get((kind, li), 0)

    def query_keys(self, kind: str, n: int) -> QueryKeys:
        """What was recorded for ``kind``, over its first ``n`` positions."""
        facts = [self.facts[(kind, li)] for li in range(self.n_layers[kind])]
        sinks = None if facts[0]["sinks"] is None else torch.stack([f["sinks"] for f in facts]).numpy()

        def first(buf: torch.Tensor, count: int) -> np.ndarray:
            # a view would pin the whole preallocation (generation stopped early): copy then
            out = buf[:, :, :count].numpy()
            return out.copy() if count < 0.9 * buf.shape[2] else out

        n_keys = n if self.causal[kind] else self.lengths[kind][1]
        return QueryKeys(queries=first(self.queries[kind], n), keys=first(self.keys[kind], n_keys),
                         groups=self.group_of[kind].astype(np.int64),
                         scaling=np.array([f["scaling"] for f in facts], np.float64),
                         windows=np.array([f["window"] for f in facts], np.int64),
                         softcap=float(facts[0]["softcap"]), sinks=sinks, causal=self.causal[kind])


def _wrap(original: Callable) -> Callable:
    def attention_with_tap(module, query, key, value, attention_mask, *args, **kwargs):
        out = original(module, query, key, value, attention_mask, *args, **kwargs)
        tap = _ACTIVE.get(threading.get_ident())
        if tap is not None and id(module) in tap.slots:
            tap.record(module, query, key, value, kwargs.get("scaling"), kwargs)
        return out

    return attention_with_tap


class tapped:
    """``with tapped(implementation, tap):`` the model's attention function records into ``tap``
    for calls made on this thread; other threads and models run it untouched. Restored on exit,
    also on errors and KeyboardInterrupt."""

    def __init__(self, implementation: str, tap: QueryKeyTap):
        from transformers.modeling_utils import AttentionInterface

        if implementation not in AttentionInterface._global_mapping:
            raise KeyError(f"no attention function registered as {implementation!r}")
        self.implementation = implementation
        self.tap = tap
        self.mapping = AttentionInterface._global_mapping

    def __enter__(self) -> QueryKeyTap:
        with _TAPS_LOCK:
            original, users = _TAPS.get(self.implementation, (self.mapping[self.implementation], 0))
            if users == 0:
                self.mapping[self.implementation] = _wrap(original)
            _TAPS[self.implementation] = (original, users + 1)
            _ACTIVE[threading.get_ident()] = self.tap
        return self.tap

    def __exit__(self, *exc) -> None:
        with _TAPS_LOCK:
            _ACTIVE.pop(threading.get_ident(), None)
            original, users = _TAPS[self.implementation]
            if users == 1:
                self.mapping[self.implementation] = original
                del _TAPS[self.implementation]
            else:
                _TAPS[self.implementation] = (original, users - 1)


def fast_implementation(model) -> str | None:
    """The model's attention implementation when capture can tap it, else None.

    A fast kernel (SDPA, flash…) is tapped as it is. An eager model is tapped through its own
    eager function, registered under a name of ours for the call (:func:`eager_alias`): eager
    models then need no weights hook either, and sliding-window caches come out right. None for
    encoder-decoder models and models whose attention does not go through transformers'
    attention interface.
    """
    if getattr(model.config, "is_encoder_decoder", False):
        return None
    impl = getattr(model.config, "_attn_implementation", None)
    if impl == "eager":
        return eager_alias(model)
    from transformers.modeling_utils import AttentionInterface

    return impl if impl in AttentionInterface._global_mapping else None


EAGER_PREFIX = "attn_widget_eager:"


def eager_alias(model) -> str | None:
    """A registered name for the eager attention function of ``model``'s modeling module, so
    that it can be tapped like any kernel (None when the module has no such function)."""
    import sys

    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.modeling_utils import AttentionInterface

    module = sys.modules.get(type(model).__module__)
    eager = getattr(module, "eager_attention_forward", None)
    if eager is None or not getattr(model, "_can_set_attn_implementation", lambda: False)():
        return None
    name = EAGER_PREFIX + type(model).__module__
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, eager)
        AttentionMaskInterface.register(name, eager_mask)
    return name
