"""Attention from fast kernels: keep the queries and keys, recompute the weights exactly.

SDPA and flash attention return no weights. Instead of switching a model to eager attention,
capture wraps the model's own attention function (the one transformers' ``AttentionInterface``
maps its ``attn_implementation`` to) for the duration of the call. The wrapper runs the model's
kernel unchanged for the output and, for the attention modules being captured, keeps the
post-RoPE (post q/k-norm) queries of the captured heads and every key produced so far, then
computes

    softmax(q · kᵀ · scaling  [soft-capped]  + causal mask + sliding window  [+ sink logit])

for the new query rows, with each query head reading its key/value group's keys (GQA). Keys
are kept by absolute position, so sliding-window caches, which drop old keys, still give rows
laid out over every position (zeros outside the window).

What this cannot see is an additive position bias inside the mask (ALiBi) or computed in the
module (T5): :func:`recompute_matches` checks the recompute against an eager pass once per model
class, and capture falls back to eager hooks where they differ.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

_TAPS: dict[str, tuple[Callable, int]] = {}  # implementation → (its original function, users)
_TAPS_LOCK = threading.Lock()
_ACTIVE: dict[int, QueryKeyTap] = {}  # capturing thread → its tap


class QueryKeyTap:
    """The queries and keys of the modules one capture watches, and the weights they give.

    slots : ``{id(module): (kind, li, layer)}`` for the attention modules to record.
    heads : ``{kind: [query heads kept]}``.
    take : ``take(kind, li, layer, weights, sinks)`` receives float32 weights of shape
        (1, len(heads), new queries, all keys so far), as eager attention would give them, and
        whether learned sink logits took part of each row.
    causal : ``{kind: bool}``.
    """

    def __init__(self, slots: dict[int, tuple[str, int, int]], heads: dict[str, list[int]],
                 causal: dict[str, bool], take: Callable[..., None]):
        self.slots = slots
        self.heads = {kind: list(hs) for kind, hs in heads.items()}
        self.causal = causal
        self.take = take
        self.keys: dict[int, torch.Tensor] = {}  # per module: every key produced so far
        self._index: dict[tuple[int, str], torch.Tensor] = {}

    def record(self, module, query: torch.Tensor, key: torch.Tensor, scaling: float | None,
               kwargs: dict[str, Any]) -> None:
        kind, li, layer = self.slots[id(module)]
        n_new = query.shape[2]
        new_keys = key[:, :, -n_new:] if self.causal[kind] else key
        past = self.keys.get(id(module))
        keys = new_keys if past is None or not self.causal[kind] else torch.cat([past, new_keys], dim=2)
        self.keys[id(module)] = keys
        self.take(kind, li, layer, self.weights(kind, query, keys, scaling, kwargs),
                  kwargs.get("s_aux") is not None)

    def weights(self, kind: str, query: torch.Tensor, keys: torch.Tensor, scaling: float | None,
                kwargs: dict[str, Any]) -> torch.Tensor:
        """float32 (1, kept heads, new queries, keys) attention of the kept heads."""
        n_heads, n_groups = query.shape[1], keys.shape[1]
        heads = self._heads_on(kind, query.device)
        q = query[0].index_select(0, heads).float()
        k = keys[0].index_select(0, heads // (n_heads // n_groups)).float()
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        softcap = kwargs.get("softcap")
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        n_q, n_k = scores.shape[-2:]
        if self.causal[kind]:
            rows = torch.arange(n_k - n_q, n_k, device=scores.device)[:, None]
            cols = torch.arange(n_k, device=scores.device)[None, :]
            hidden = cols > rows
            window = kwargs.get("sliding_window")
            if window is not None:
                hidden |= cols <= rows - int(window)
            scores = scores.masked_fill(hidden, float("-inf"))
        sinks = kwargs.get("s_aux")
        if sinks is not None:  # learned sink logits (gpt-oss): a softmax column that is then dropped
            sink = sinks.float().index_select(0, heads).reshape(-1, 1, 1).expand(-1, n_q, 1)
            combined = torch.cat([scores, sink], dim=-1)
            combined = combined - combined.amax(dim=-1, keepdim=True)
            return torch.softmax(combined, dim=-1)[..., :-1].unsqueeze(0)
        return torch.softmax(scores, dim=-1).unsqueeze(0)

    def _heads_on(self, kind: str, device: torch.device) -> torch.Tensor:
        index = self._index.get((id(device), kind))
        if index is None or index.device != device:
            index = self._index[(id(device), kind)] = torch.tensor(self.heads[kind], device=device)
        return index


def _wrap(original: Callable) -> Callable:
    def attention_with_tap(module, query, key, value, attention_mask, *args, **kwargs):
        out = original(module, query, key, value, attention_mask, *args, **kwargs)
        tap = _ACTIVE.get(threading.get_ident())
        if tap is not None and id(module) in tap.slots:
            tap.record(module, query, key, kwargs.get("scaling"), kwargs)
        return out

    attention_with_tap.original = original
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
    """The model's attention implementation when capture can tap it (not eager), else None."""
    impl = getattr(model.config, "_attn_implementation", None)
    if impl in (None, "eager") or getattr(model.config, "is_encoder_decoder", False):
        return None
    from transformers.modeling_utils import AttentionInterface

    return impl if impl in AttentionInterface._global_mapping else None
