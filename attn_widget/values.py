"""Taking the norms of what each head's values contribute, during a capture.

``‖f_h(x_j)‖ = ‖v_j^{g(h)} W_O^hᵀ‖`` (see :mod:`attn_widget.valuenorms`) needs the value of every
key position as the attention saw it, and the head's slice ``W_O^h`` (hidden × head_dim) of the
output projection. Values come from the model's own attention function where capture taps it
(:mod:`attn_widget.qk_capture` hands them over as they are produced: exactly what the weights
multiply), or, for models captured by hooks (encoder-decoders), from a forward hook on the value
projection (``v_proj``, ``v``…), placed at the key positions that the attention module's weights
cover.

Only the norms are kept. Each head's slice is reduced once to the triangular factor ``R_h`` of
its QR decomposition, and ``‖W_O^h v‖ = ‖R_h v‖``: head_dim² multiply-adds per token and head
instead of head_dim · hidden. ``values="layer"`` also keeps the Gram matrix of the heads' vectors
for the layer-level view; that forms the vectors ``v W_O^hᵀ`` of every token and head, about the
cost of the output projection itself.

A model whose attention output reaches the output projection through something else (a gate)
would make the norms wrong: :func:`values_mismatch` checks, once per model class, on a short
prefix, that the projection's input is ``Σ_j α_ij v_j`` for every head.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import Any

import numpy as np
import torch

from .qk_capture import QueryKeyTap, tapped
from .recording import CaptureError
from .valuenorms import ValueNorms, head_pairs

log = logging.getLogger("attn_widget")

VALUES = ("auto", "norms", "layer")
OUTPUT_NAMES = ("o_proj", "out_proj", "o", "dense", "c_proj", "out_lin", "wo")
VALUE_NAMES = ("v_proj", "v", "value", "v_lin")
GRAM_CHUNK = 1024
"""Tokens whose vectors ``v W_O^hᵀ`` are formed at a time for the Gram (hidden floats each per head)."""


def check_values(values: Any) -> str | bool:
    """The ``values`` argument of :func:`attn_widget.capture`, checked."""
    if values is False or (isinstance(values, str) and values in VALUES):
        return values
    raise ValueError(f"values must be 'auto' (keep the norms of the values when the model allows), "
                     f"'norms', 'layer' (also what the layer-level view needs) or False; got {values!r}")


def _matrix(module: Any) -> torch.Tensor | None:
    """The (out, in) weight of a Linear layer or of transformers' ``Conv1D`` (stored (in, out))."""
    if not isinstance(module, torch.nn.Module):
        return None
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return None
    if type(module).__name__ == "Conv1D":
        return w.t()
    return w if isinstance(module, torch.nn.Linear) else None


def output_projection(module: torch.nn.Module, parent: torch.nn.Module | None,
                      n_heads: int) -> torch.nn.Module | None:
    """The layer the attention output of ``module`` goes through, a (hidden, n_heads · head_dim)
    matrix (:func:`loaded_matrix`): one inside it named like an output projection (T5 wraps
    its attention, ``SelfAttention.o``), else one beside it in ``parent`` (BERT keeps it in
    ``output.dense``); None when neither has one."""
    found = _named(module, OUTPUT_NAMES)
    if parent is not None:
        own = _child_name(parent, module)
        found += [m for name, m in parent.named_modules() if name and name != own
                  and not name.startswith(own + ".") and name.rsplit(".", 1)[-1] in OUTPUT_NAMES]
    return next((m for m in found if (w := _matrix(m)) is not None and w.shape[1] % n_heads == 0), None)


def loaded_matrix(layer: torch.nn.Module) -> torch.Tensor:
    """A float32 copy of the (out, in) matrix of a layer :func:`output_projection` found. An
    offloaded layer (accelerate's disk or CPU offload keeps it on the meta device between passes)
    is loaded for the copy."""
    if _matrix(layer).is_meta:
        from accelerate.utils import align_module_device

        with align_module_device(layer):
            return _matrix(layer).detach().float().clone()
    return _matrix(layer).detach().float()


def _child_name(parent: torch.nn.Module, module: torch.nn.Module) -> str:
    return next((name for name, m in parent.named_children() if m is module), "\0")


def _named(module: torch.nn.Module, names: tuple[str, ...]) -> list[torch.nn.Module]:
    """Layers inside ``module`` whose name is one of ``names``: shallowest first, then in the
    order of ``names``."""
    inside = [(name.count("."), names.index(last), i, m) for i, (name, m) in enumerate(module.named_modules())
              if name and (last := name.rsplit(".", 1)[-1]) in names]
    return [m for *_, m in sorted(inside, key=lambda e: e[:3])]


def value_projection(module: torch.nn.Module, head_dim: int) -> torch.nn.Module | None:
    """The layer inside ``module`` that makes its values (a Linear whose outputs are whole heads)."""
    return next((m for m in _named(module, VALUE_NAMES) if (w := _matrix(m)) is not None
                 and w.shape[0] % head_dim == 0), None)


BATCH = 64
"""Key positions whose norms are computed in one product. A decode step brings one position per
layer: it waits on the host (a small copy) until this many have come, because a product per step
costs far more than its arithmetic on a busy CPU (measured on this project's 2-core machine under
load: 0.6 ms instead of 7 µs for SmolLM2's 9 heads, the time to wake torch's second thread)."""

_FACTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # output layer → {facts: factors}
_FACTORS_LOCK = threading.Lock()


def head_slices(layer: torch.nn.Module, heads: tuple[int, ...], n_heads: int, d: int) -> torch.Tensor:
    """``W_O^hᵀ`` (heads, d, hidden): the kept ``heads``' slices of an output projection taking
    ``n_heads`` × ``d`` inputs, float32 on the host."""
    w = loaded_matrix(layer).cpu()
    if w.shape[1] != n_heads * d:
        raise CaptureError(f"the output projection takes {w.shape[1]} inputs, not {n_heads} heads × {d}")
    return w.reshape(w.shape[0], n_heads, d).permute(1, 2, 0)[list(heads)].contiguous()


def head_factors(layer: torch.nn.Module, heads: tuple[int, ...], n_heads: int, d: int) -> torch.Tensor:
    """``R_hᵀ`` (heads, d, d) for the kept ``heads`` of an output projection: the triangular
    factor of each head's slice ``W_O^h`` (hidden × d), with ``‖W_O^h v‖ = ‖v R_hᵀ‖``. On the
    host, float32; kept per layer while its weights stay the same version (a few KiB per head),
    so later captures of the model reuse them."""
    w = _matrix(layer)
    facts = (heads, d, w._version, None if w.is_meta else w.data_ptr())
    with _FACTORS_LOCK:
        found = _FACTORS.setdefault(layer, {}).get(facts)
    if found is None:
        found = torch.linalg.qr(head_slices(layer, heads, n_heads, d).transpose(1, 2), mode="r").R
        found = found.transpose(1, 2).contiguous()
        with _FACTORS_LOCK:
            _FACTORS[layer] = {facts: found}  # an older version of the weights is of no more use
    return found


class ValueRecorder:
    """Keeps ``‖f_h(x_j)‖`` (and, with ``gram``, the heads' Gram) per captured layer, head and key.

    outputs : ``{kind: [output projection of each captured layer]}`` (:func:`output_projection`).
    heads : ``{kind: [query heads kept]}``; n_heads : ``{kind: heads of the model}``.
    lengths : ``{kind: (queries, keys)}``, the most positions the run can produce.
    """

    def __init__(self, outputs: dict[str, list[torch.nn.Module]], heads: dict[str, list[int]],
                 n_heads: dict[str, int], lengths: dict[str, tuple[int, int]], gram: bool = False):
        self.thread = threading.get_ident()
        self.outputs, self.heads, self.n_heads = outputs, heads, n_heads
        self.keep_gram = gram
        self.norms = {k: torch.zeros((len(outs), len(heads[k]), lengths[k][1]))
                      for k, outs in outputs.items()}
        self.gram = {k: torch.zeros((len(outs), lengths[k][1], len(head_pairs(len(heads[k]))[0])))
                     for k, outs in outputs.items()} if gram else {}
        self.done: dict[tuple[str, int], int] = {}
        self._factors: dict[tuple[str, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._waiting: dict[tuple[str, int], list[tuple[int, torch.Tensor]]] = {}
        self._n_waiting: dict[tuple[str, int], int] = {}
        self._projected: dict[tuple[str, int], torch.Tensor] = {}

    def take(self, kind: str, li: int, start: int, values: torch.Tensor) -> None:
        """The values (1, n_kv_groups, n, head_dim) of key positions ``start .. start + n`` of
        captured layer ``li``: their norms now when there are :data:`BATCH` or more, else later
        (a copy waits on the host)."""
        n = values.shape[2]
        if start + n > self.norms[kind].shape[2]:
            raise CaptureError(f"{kind} attention layer {li} produced values past the "
                               f"{self.norms[kind].shape[2]} positions expected")
        self.done[(kind, li)] = max(self.done.get((kind, li), 0), start + n)
        if n >= BATCH:
            self._compute(kind, li, torch.arange(start, start + n), values[0])
            return
        waiting = self._waiting.setdefault((kind, li), [])
        waiting.append((start, values[0].to("cpu", torch.float32, copy=True)))  # not a view of the cache
        self._n_waiting[(kind, li)] = self._n_waiting.get((kind, li), 0) + n
        if self._n_waiting[(kind, li)] >= BATCH:
            self._flush(kind, li)

    def _flush(self, kind: str, li: int) -> None:
        waiting = self._waiting.pop((kind, li), [])
        self._n_waiting[(kind, li)] = 0
        if waiting:
            positions = torch.cat([torch.arange(s, s + v.shape[1]) for s, v in waiting])
            self._compute(kind, li, positions, torch.cat([v for _, v in waiting], dim=1))

    def _compute(self, kind: str, li: int, positions: torch.Tensor, values: torch.Tensor) -> None:
        """Norms (and Gram) of ``values`` (n_kv_groups, n, d) into key ``positions`` (n,)."""
        n_groups, n, d = values.shape
        group, rt = self._factors_of(kind, li, n_groups, d, values.device)
        v = values.index_select(0, group).float()  # (kept heads, n, d)
        self.norms[kind][li][:, positions] = torch.linalg.vector_norm(v @ rt, dim=-1).cpu()
        if self.keep_gram:  # the slices themselves, not kept between calls (hidden × d per head)
            wt = head_slices(self.outputs[kind][li], tuple(self.heads[kind]), self.n_heads[kind], d)
            wt = wt.to(v.device)
            rows, cols = (torch.as_tensor(x, device=v.device) for x in head_pairs(v.shape[0]))
            for s in range(0, n, GRAM_CHUNK):
                f = (v[:, s:s + GRAM_CHUNK] @ wt).transpose(0, 1)  # (chunk, kept heads, hidden)
                g = f @ f.transpose(1, 2)  # (chunk, kept heads, kept heads)
                self.gram[kind][li][positions[s:s + GRAM_CHUNK]] = g[:, rows, cols].cpu()

    def _factors_of(self, kind: str, li: int, n_groups: int, d: int,
                    device) -> tuple[torch.Tensor, torch.Tensor]:
        """On ``device``: the key/value group each kept head reads, and :func:`head_factors`."""
        key = (kind, li, str(device))
        if key not in self._factors:
            n_heads = self.n_heads[kind]
            if n_heads % n_groups:
                raise CaptureError(f"{kind} attention layer {li}: {n_heads} heads over {n_groups} "
                                   "key/value groups")
            rt = head_factors(self.outputs[kind][li], tuple(self.heads[kind]), n_heads, d)
            group = torch.tensor(self.heads[kind]) // (n_heads // n_groups)
            self._factors[key] = (group.to(device), rt.to(device))
        return self._factors[key]

    def result(self, kind: str, n_keys: int) -> ValueNorms:
        """What was kept for ``kind`` over its first ``n_keys`` key positions."""
        for li in range(self.norms[kind].shape[0]):
            self._flush(kind, li)
            done = self.done.get((kind, li), 0)
            if done < n_keys:
                raise CaptureError(f"{kind} attention layer {li} gave values for {done} of {n_keys} key "
                                   "positions; the value projection did not see every step")
        norms = self.norms[kind][:, :, :n_keys].numpy().copy()
        gram = self.gram[kind][:, :n_keys].numpy().copy() if self.keep_gram else None
        if not (np.isfinite(norms).all() and (gram is None or np.isfinite(gram).all())):
            raise CaptureError(f"{kind} attention has values that are NaN or infinite")
        return ValueNorms(norms, gram)

    @contextlib.contextmanager
    def hooked(self, modules, kinds, projections: dict[str, list[torch.nn.Module]]):
        """Within the block, values come from forward hooks on ``projections`` (the value
        projection of each captured layer), each placed at the key positions that the attention
        module's weights (``modules[kind][layer]``: module, index of the weights) cover next."""
        handles = []
        for kind, mods in modules.items():
            for li, layer in enumerate(kinds[kind][0]):
                handles.append(projections[kind][li].register_forward_hook(self._keep_values(kind, li)))
                module, index = mods[layer]
                handles.append(module.register_forward_hook(self._place_values(kind, li, index)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _keep_values(self, kind: str, li: int):
        def hook(module, args, output) -> None:
            if threading.get_ident() == self.thread:
                self._projected[(kind, li)] = output.detach()
        return hook

    def _place_values(self, kind: str, li: int, index: int):
        def hook(module, args, output) -> None:
            if threading.get_ident() != self.thread:
                return  # another thread's pass of the same model is not this capture's
            values = self._projected.pop((kind, li), None)
            if values is None:
                return  # cross-attention reuses the values it cached on the first step
            n_keys = output[index].shape[-1]
            n, d = values.shape[1], _matrix(self.outputs[kind][li]).shape[1] // self.n_heads[kind]
            start = n_keys - n if kind in ("decoder", "self") else 0
            self.take(kind, li, start, values.reshape(1, n, -1, d).transpose(1, 2))
        return hook


def parents_of(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """``{id(module): its parent}`` for every module of ``model``."""
    return {id(child): m for m in model.modules() for child in m.children()}


def plan_values(model, modules, kinds, lengths, mode: str | bool, fast: str | None
                ) -> tuple[ValueRecorder | None, dict[str, list[torch.nn.Module]] | None, str | None]:
    """The value recorder of a capture, the value projections it hooks (None on a tapped model),
    and why there is none when ``mode`` is ``"auto"`` and the model does not allow it.

    Raises :class:`~attn_widget.recording.CaptureError` when ``mode`` asks for norms
    (``"norms"``, ``"layer"``) that this model cannot give, before the model runs.
    """
    if mode is False:
        return None, None, None
    parents = parents_of(model)
    outputs: dict[str, list[torch.nn.Module]] = {}
    projections: dict[str, list[torch.nn.Module]] = {}
    why = None
    for kind, mods in modules.items():
        n_heads = kinds[kind][2]
        for layer in kinds[kind][0]:
            module = mods[layer][0]
            out = output_projection(module, parents.get(id(module)), n_heads)
            d = None if out is None else _matrix(out).shape[1] // n_heads
            v = None if out is None or fast is not None else value_projection(module, d)
            if out is None or (fast is None and v is None):
                names = OUTPUT_NAMES if out is None else VALUE_NAMES
                why = (f"{type(module).__name__} has no {'output' if out is None else 'value'} projection "
                       f"attn_widget recognises (a Linear named one of {list(names)})")
                break
            outputs.setdefault(kind, []).append(out)
            projections.setdefault(kind, []).append(v)
        if why:
            break
    if why is None and fast is not None:
        why = values_mismatch(model, fast, modules, {k: kinds[k][2] for k in modules})
    if why is not None:
        if mode != "auto":
            raise CaptureError(f"values={mode!r}: {why}; capture with values=False")
        return None, None, why
    rec = ValueRecorder(outputs, {k: list(kinds[k][1]) for k in outputs}, {k: kinds[k][2] for k in outputs},
                        lengths, gram=mode == "layer")
    return rec, (None if fast is not None else projections), None


# --------------------------------------------------------------------- the once-per-class check
_CHECKED: dict[tuple[str, str], str | None] = {}
_CHECK_TOKENS = 12


def values_mismatch(model, impl: str, modules, n_heads: dict[str, int]) -> str | None:
    """Why norms of the values taken from ``impl`` would be wrong for this model class, or None.

    One pass over a short prefix (once per model class and implementation): for every layer and
    head, the output projection's input must be ``Σ_j α_ij v_j``, the head's weights times the
    values its key/value group handed to the attention function; otherwise something between
    them (a gate, say) changes what each token contributes.
    """
    key = (type(model).__qualname__, impl)
    if key not in _CHECKED:
        _CHECKED[key] = _check(model, impl, modules, n_heads)
        if _CHECKED[key]:
            log.warning("attn_widget: no value norms for %s: %s", type(model).__name__, _CHECKED[key])
    return _CHECKED[key]


def _check(model, impl: str, modules, heads_of: dict[str, int]) -> str | None:
    kind, mods = next(iter(modules.items()))
    config = model.config
    n_heads = heads_of[kind]
    parents = parents_of(model)
    outputs = [output_projection(m, parents.get(id(m)), n_heads) for m, _ in mods]
    if any(out is None for out in outputs):
        return "an attention layer has no output projection attn_widget recognises"
    vocab = int(getattr(config, "vocab_size", 0) or 0) or 1000
    ids = ((torch.arange(_CHECK_TOKENS) * 7 + 3) % vocab).reshape(1, -1).to(next(model.parameters()).device)
    decoder = bool(model.can_generate() or getattr(config, "is_decoder", False))
    slots = {id(m): (kind, li, li) for li, (m, _) in enumerate(mods)}
    values: dict[int, torch.Tensor] = {}
    tap = QueryKeyTap(slots, {kind: list(range(n_heads))}, {kind: decoder},
                      {kind: (_CHECK_TOKENS, _CHECK_TOKENS)},
                      on_values=lambda _, li, start, v: values.__setitem__(li, v.detach().float().cpu()))
    inputs: dict[int, torch.Tensor] = {}
    handles = [out.register_forward_pre_hook(_keep_input(inputs, li, threading.get_ident()))
               for li, out in enumerate(outputs)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tapped(impl, tap):
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
        if was_training:
            model.train()
    qk = tap.query_keys(kind, _CHECK_TOKENS)
    dtype = next(model.parameters()).dtype
    tolerance = max(1e-3, 8 * torch.finfo(dtype).eps)
    for li in range(len(mods)):
        if li not in values or li not in inputs:
            return f"layer {li} did not hand its values or its output projection's input to the check"
        v, got = values[li][0].numpy(), inputs[li][0].float().numpy()
        d = v.shape[-1]
        for h in range(n_heads):
            expected = qk.rows(li, h) @ v[h // (n_heads // v.shape[0])]
            seen = got[:, h * d:(h + 1) * d]
            err = float(np.abs(seen - expected).max()) / max(float(np.abs(expected).max()), 1e-6)
            if not err <= tolerance:
                return (f"layer {li} head {h}: the output projection's input differs from the weights "
                        f"times the values by {err:.1e} (relative); something between them changes "
                        "what each token contributes")
    return None


def _keep_input(inputs: dict[int, torch.Tensor], li: int, thread: int):
    def hook(module, args) -> None:
        if threading.get_ident() == thread:  # another thread's pass is not the check's
            inputs[li] = args[0].detach()
    return hook
