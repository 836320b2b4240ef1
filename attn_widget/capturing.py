"""Capture the attention of a Hugging Face model, forward pass or ``generate``.

Hugging Face keeps every layer of every decode step as float32 until ``generate`` returns, and
under SDPA or flash attention returns no weights at all, without an error. We instead take what
we need while the model runs, on the model as it was loaded: on a fast kernel, the queries and
keys it computes (weights recomputed exactly from them, :mod:`attn_widget.qk_capture`); on eager
attention, its weights the moment a layer produces them (:mod:`attn_widget.recording`); and, for
value-weighted views, the norms of what each head's values contribute (:mod:`attn_widget.values`).
Only the requested layers and heads are kept; decode steps are stitched in order, so the trace
equals one forward pass over the final text. The memory estimate lives in
:mod:`attn_widget.budget`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .budget import MemoryBudgetError, check_budget, estimate_bytes
from .qk_capture import EAGER_PREFIX, fast_implementation
from .recording import CaptureError, captured_block, recorder_for, recording
from .selection import check_count, check_positive, index_list, indices_below, is_int
from .tokens import token_table
from .trace import AttentionBlock, AttentionTrace
from .values import check_values, plan_values

__all__ = ["CaptureError", "MemoryBudgetError", "capture", "capture_options", "estimate_bytes",
           "recompute_matches"]

log = logging.getLogger("attn_widget")

FORMS = ("auto", "weights", "queries-keys")
LONG_PROMPT = 2048
"""Prompt tokens from which a capture shows a progress bar by default."""


def capture(model, tokenizer, prompt: str | Sequence[dict], *, max_new_tokens: int = 0,
            layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
            chat: bool = False, target: str | None = None, memory_budget: float | None = None,
            progress: bool | None = None, form: str = "auto", values: str | bool = "auto",
            **generate_kwargs: Any) -> AttentionTrace:
    """Run ``model`` on ``prompt`` and capture its attention as an :class:`AttentionTrace`.

    Parameters
    ----------
    model, tokenizer : a Hugging Face model (decoder-only, encoder-only or encoder-decoder)
        and its tokenizer, on whatever attention implementation it was loaded with. The model
        keeps running it (SDPA, flash attention, or its own eager function): capture keeps the
        queries and keys it computes and recomputes the weights exactly (see
        :mod:`attn_widget.qk_capture`). Encoder-decoder models, models whose attention does not go
        through transformers' attention interface and models whose recompute does not match
        eager attention (checked once per model class) are captured from eager attention weights
        by hooks; a model switched for the call is always put back.
    prompt : str, token ids (a list of ints, a 1-D tensor or one row of a 2-D one), or a list of
        chat messages (``{"role": ..., "content": ...}``). One sequence: a batch is refused.
    max_new_tokens : 0 for one forward pass; otherwise tokens to ``generate`` (greedy unless
        ``generate_kwargs`` say otherwise). Every decode step is stitched in, and the last
        generated token gets its row too, so the trace is square over the final text.
    layers, heads : model layer and query-head indices to keep (default: all): an integer, a
        list, a range or any iterable of integers. Negative indices count from the end.
    chat : True to wrap a string prompt in the tokenizer's chat template (for instruct models).
    target : encoder-decoder models only, with ``max_new_tokens=0``: the decoder text to
        teacher-force (default: just the decoder start token).
    memory_budget : bytes the capture may use, a finite number above 0 (default: half the
        memory available now). An estimate above it raises :class:`MemoryBudgetError` before
        the model runs; its ``choices`` are keyword arguments that would fit.
    progress : show a progress bar over each layer's prompt pass and each decode step (default:
        for prompts of ``LONG_PROMPT`` (2048) tokens or more, or 64 or more new tokens).
    form : how the trace stores attention: ``"weights"`` (float16, T²/2 per head),
        ``"queries-keys"`` (grows with T; weights recomputed when asked; not for models captured
        by hooks) or
        ``"auto"``: queries and keys when they take less memory than the weights.
    values : what to keep of the values, for ``weighting="norm"`` views (Kobayashi et al. 2020):
        ``"norms"``, ``‖f_h(x_j)‖`` per kept layer, head and key position (4 bytes each, checked
        once per model class); ``"layer"``, also the heads' Gram per layer and key, for
        :meth:`AttentionTrace.layer_contribution` (``H (H + 1) / 2`` floats; forming it costs
        about one more output projection per token); ``False``, nothing; ``"auto"`` (default):
        the norms when the model's value and output projections are found, nothing otherwise
        (``trace.options["values_unavailable"]`` says why).
    **generate_kwargs : passed to ``model.generate``.

    Every argument is checked, and the layers and heads against the model, before the model
    runs. Only this call's own passes are recorded: another thread running the same model
    meanwhile (a plain forward pass, say) is neither recorded nor disturbed.

    Returns
    -------
    AttentionTrace; ``trace.block().form`` says which form it holds, ``trace.options["attention"]``
    which attention implementation it was taken from.
    """
    options = capture_options(max_new_tokens=max_new_tokens, layers=layers, heads=heads, chat=chat,
                              target=target, memory_budget=memory_budget, progress=progress, form=form,
                              values=values, **generate_kwargs)
    # One capture at a time per model: they would switch its attention under each other. A
    # second one waits its turn.
    with _model_lock(model):
        return _capture(model, tokenizer, prompt, options)


def capture_options(*, max_new_tokens: int = 0, layers=None, heads=None, chat: bool = False,
                    target: str | None = None, memory_budget: float | None = None,
                    progress: bool | None = None, form: str = "auto", values: str | bool = "auto",
                    **generate_kwargs: Any) -> dict:
    """The keyword arguments of :func:`capture`, checked and normalised as it does first (layers
    and heads read once into lists), without a model: what :class:`AttentionSession` checks its
    defaults with. Raises ``ValueError`` or ``TypeError`` naming the argument."""
    max_new_tokens = check_count(max_new_tokens, "max_new_tokens")
    if not isinstance(chat, (bool, np.bool_)):
        raise TypeError(f"chat must be True or False; got {chat!r}")
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True, False or None; got {progress!r}")
    if target is not None and not isinstance(target, str):
        raise TypeError(f"target must be the decoder text (a string) or None; got {type(target).__name__}")
    if memory_budget is not None:
        memory_budget = check_positive(memory_budget, "memory_budget (bytes)", example="4 * 2**30")
    if not isinstance(form, str) or form not in FORMS:
        raise ValueError(f"form must be one of {list(FORMS)}; got {form!r}")
    values = check_values(values)
    for bad in ("num_beams", "num_return_sequences"):
        if generate_kwargs.get(bad, 1) != 1:
            raise ValueError(f"{bad}={generate_kwargs[bad]} is not supported: a trace follows one "
                             "sequence; use 1")
    return {"max_new_tokens": max_new_tokens, "layers": index_list(layers, "layers"),
            "heads": index_list(heads, "heads"), "chat": bool(chat), "target": target,
            "memory_budget": memory_budget, "progress": progress, "form": form, "values": values,
            "generate_kwargs": dict(generate_kwargs)}


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


@dataclasses.dataclass
class _Plan:
    """What a capture will run, settled from the arguments and the model's config before it does."""

    prompt_ids: torch.Tensor
    dec_ids: torch.Tensor | None
    enc_dec: bool
    decoder_only: bool
    modules: dict
    kinds: dict
    causal: dict

    def lengths(self, max_new_tokens: int, prompt_len: int | None = None) -> dict[str, tuple[int, int]]:
        """Queries and keys of each kind for a run of ``max_new_tokens`` (and a prompt of
        ``prompt_len`` tokens, default this one's)."""
        p = self.prompt_ids.shape[1] if prompt_len is None else prompt_len
        if not self.enc_dec:
            return {"self": (p + max_new_tokens, p + max_new_tokens)}
        t = self.dec_ids.shape[1] if max_new_tokens == 0 else 1 + max_new_tokens
        return {"encoder": (p, p), "decoder": (t, t), "cross": (t, p)}


def _plan(model, tokenizer, prompt, options: dict) -> _Plan:
    """The arguments checked against the model (prompt, layers, heads, generation), before it runs."""
    config = model.config
    prompt_ids = _tokenize(tokenizer, prompt, options["chat"])
    enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    decoder_only = not enc_dec and (model.can_generate() or bool(getattr(config, "is_decoder", False)))
    max_new_tokens, target = options["max_new_tokens"], options["target"]
    if max_new_tokens and not (enc_dec or decoder_only):
        raise ValueError(f"max_new_tokens={max_new_tokens}, but {type(model).__name__} is an encoder "
                         "and cannot generate; use max_new_tokens=0 for a forward pass")
    if target is not None and not (enc_dec and max_new_tokens == 0):
        raise ValueError("target= is for encoder-decoder models with max_new_tokens=0")
    _check_vocabulary(model, prompt_ids, "prompt")
    modules = _attention_modules(model, enc_dec)
    if not modules:
        raise CaptureError(f"found no attention modules in {type(model).__name__}; attn_widget "
                           "recognises models whose classes declare _can_record_outputs "
                           "(transformers v5 models)")
    kinds = {}
    for kind, mods in modules.items():
        n_heads = _n_heads(config, kind)
        kinds[kind] = (indices_below(options["layers"], len(mods), "layers", kind),
                       indices_below(options["heads"], n_heads, "heads", kind), n_heads)
    dec_ids = None
    if enc_dec:
        start = getattr(config, "decoder_start_token_id", None)
        if start is None:
            start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
        if target is not None:
            dec_ids = _tokenize(tokenizer, target, False)
            if start is not None and dec_ids[0, 0] != start:
                dec_ids = torch.cat([torch.tensor([[start]]), dec_ids], dim=1)
            _check_vocabulary(model, dec_ids, "target")
        else:
            if start is None:
                raise CaptureError("this encoder-decoder model has no decoder_start_token_id")
            dec_ids = torch.tensor([[start]])
    causal = {k: (k == "decoder" or (k == "self" and decoder_only)) for k in kinds}
    return _Plan(prompt_ids, dec_ids, enc_dec, decoder_only, modules, kinds, causal)


def _capture(model, tokenizer, prompt, options: dict) -> AttentionTrace:
    plan = _plan(model, tokenizer, prompt, options)
    form = options["form"]
    fast = fast_implementation(model)
    # refused before any model work, on the path capture means to take…
    check_budget(plan, options, _qk_dims(model.config, next(iter(plan.kinds))) if fast else None)
    if fast is not None and not recompute_matches(model, fast):
        fast = None
        check_budget(plan, options, None)  # …and again when it falls back to eager hooks
    if form == "queries-keys" and fast is None:
        raise ValueError(f"form='queries-keys' needs the model on a fast attention kernel (or an eager "
                         f"function) that attn_widget can tap; {type(model).__name__} is captured from "
                         "eager attention weights by hooks here; use form='weights' or 'auto'")
    with _attention_implementation(model, fast or "eager"):
        return _capture_with(model, tokenizer, prompt, plan, fast, options)


def _capture_with(model, tokenizer, prompt, plan: _Plan, fast, options: dict) -> AttentionTrace:
    config = model.config
    kinds, causal, modules, enc_dec = plan.kinds, plan.causal, plan.modules, plan.enc_dec
    max_new_tokens, form = options["max_new_tokens"], options["form"]
    device = next(model.parameters()).device
    prompt_ids = plan.prompt_ids.to(device)
    dec_ids = None if plan.dec_ids is None else plan.dec_ids.to(device)
    P = prompt_ids.shape[1]
    values, projections, no_values = plan_values(model, modules, kinds, plan.lengths(max_new_tokens),
                                                 options["values"], fast)
    rec = recorder_for(fast, modules, kinds, plan.lengths(max_new_tokens), causal, values)
    was_training = model.training
    model.eval()
    progress = options["progress"]
    if progress or (progress is None and (max_new_tokens >= 64 or P >= LONG_PROMPT)):
        rec.open_progress(sum(len(kinds[k][0]) for k in kinds), max_new_tokens)
    try:
        with torch.no_grad(), recording(rec, modules, kinds, fast, values, projections):
            if max_new_tokens == 0:
                mask = torch.ones_like(prompt_ids)
                if enc_dec:
                    model(input_ids=prompt_ids, attention_mask=mask, decoder_input_ids=dec_ids)
                    seq = dec_ids
                else:
                    model(input_ids=prompt_ids, attention_mask=mask)
                    seq = prompt_ids
            else:
                seq = _generate(model, tokenizer, prompt_ids, max_new_tokens, enc_dec,
                                options["generate_kwargs"])
    finally:
        rec.close_progress()
        if was_training:
            model.train()
    rec.check_complete(seq.shape[1])

    T = seq.shape[1]
    blocks = {}
    for kind in kinds:
        n_keys = P if kind in ("encoder", "cross") else T
        norms = None if values is None else values.result(kind, n_keys)
        b = captured_block(kind, kinds, causal, rec.result(kind, T), norms)
        if b.form == "queries-keys" and (form == "weights" or (form == "auto" and
                                                             b.weights_nbytes <= b.qk.nbytes)):
            b = AttentionBlock(b.name, b.causal, b.layers, b.heads, b.data, b.queries, b.keys, norms=norms)
        blocks[kind] = b
    if enc_dec:
        tokens = token_table(tokenizer, seq[0].tolist())
        source = token_table(tokenizer, prompt_ids[0].tolist())
        spans = {"source": (0, P), "target": (0, T)}
        if max_new_tokens:
            spans["generated"] = (1, T)
    else:
        tokens = token_table(tokenizer, seq[0].tolist())
        source = None
        spans = {"prompt": (0, P), "generated": (P, T)} if plan.decoder_only else {"input": (0, P)}
    arch = "encoder-decoder" if enc_dec else ("decoder" if plan.decoder_only else "encoder")
    first = next(iter(kinds.values()))
    model_info = {
        "name": str(getattr(config, "name_or_path", "") or type(model).__name__),
        "class": type(model).__name__, "architecture": arch,
        "model_type": getattr(config, "model_type", None),
        "n_layers": len(next(iter(modules.values()))), "n_heads": first[2],
        "n_kv_heads": int(getattr(config, "num_key_value_heads", None) or first[2]),
        "hidden_size": getattr(config, "hidden_size", getattr(config, "d_model", None)),
        "vocab_size": getattr(config, "vocab_size", None),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    import transformers

    recorded = {"prompt": prompt if isinstance(prompt, (str, list, tuple)) else plan.prompt_ids[0].tolist(),
                "max_new_tokens": max_new_tokens, "layers": options["layers"], "heads": options["heads"],
                "chat": options["chat"], "generate_kwargs": options["generate_kwargs"],
                "attention": "eager" if fast is None or fast.startswith(EAGER_PREFIX) else fast,
                "values": "none" if values is None else ("layer" if values.keep_gram else "norms"),
                "torch": torch.__version__, "transformers": transformers.__version__}
    if no_values:
        recorded["values_unavailable"] = no_values
    return AttentionTrace(tokens, blocks, spans, model_info, recorded, source)


# --------------------------------------------------------------------- attention implementation
@contextlib.contextmanager
def _attention_implementation(model, impl: str):
    """The model on ``impl`` for the block, then back on what it was (also after errors)."""
    before = getattr(model.config, "_attn_implementation", None)
    if before == impl:
        yield
        return
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        raise CaptureError(f"this model uses attn_implementation={before!r}, which returns no attention "
                           f"weights, and cannot be switched to {impl!r}; load it with "
                           f"attn_implementation={impl!r}")
    setter(impl)
    try:
        yield
    finally:
        setter(before)


_RECOMPUTE_CHECKED: dict[tuple[str, str], bool] = {}
_CHECK_TOKENS = 12


def recompute_matches(model, impl: str) -> bool:
    """Whether queries and keys taken from ``impl`` give the weights eager attention gives, on a
    short prefix, for this model class (checked once per class and implementation).

    A mismatch means the model adds something the recompute cannot see (a position bias such as
    ALiBi's); capture then uses eager attention for the call, and says so once.
    """
    key = (type(model).__qualname__, impl)
    if key not in _RECOMPUTE_CHECKED:
        vocab = int(getattr(model.config, "vocab_size", 0) or 0) or 1000
        ids = (torch.arange(_CHECK_TOKENS) * 7 + 3) % vocab
        ids = ids.reshape(1, -1).to(next(model.parameters()).device)
        with _attention_implementation(model, impl):
            fast = _forward_weights(model, ids, impl)
        with _attention_implementation(model, "eager"):
            eager = _forward_weights(model, ids, None)
        diff = max(float(np.abs(fast[k] - eager[k]).max()) for k in eager)
        _RECOMPUTE_CHECKED[key] = ok = diff <= 2e-3
        if not ok:
            log.warning("attn_widget: attention recomputed from %s queries and keys differs from eager "
                        "attention by %.1e for %s; capturing with eager attention instead", impl, diff,
                        type(model).__name__)
    return _RECOMPUTE_CHECKED[key]


def _forward_weights(model, ids: torch.Tensor, fast: str | None) -> dict[str, np.ndarray]:
    """Every head's attention of one forward pass over ``ids``, taken from ``fast``'s queries and
    keys, or from eager attention's weights when ``fast`` is None."""
    modules = _attention_modules(model, False)
    kinds = {kind: (list(range(len(mods))), list(range(_n_heads(model.config, kind))),
                    _n_heads(model.config, kind)) for kind, mods in modules.items()}
    n = ids.shape[1]
    decoder = bool(model.can_generate() or getattr(model.config, "is_decoder", False))
    causal = dict.fromkeys(kinds, decoder)
    rec = recorder_for(fast, modules, kinds, dict.fromkeys(kinds, (n, n)), causal)
    with torch.no_grad(), recording(rec, modules, kinds, fast):
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return {kind: captured_block(kind, kinds, causal, rec.result(kind, n)).data.astype(np.float32)
            for kind in kinds}


# --------------------------------------------------------------------- inputs
def _tokenize(tokenizer, prompt, chat: bool) -> torch.Tensor:
    """``prompt`` as token ids of shape (1, T): text (through the chat template when ``chat``),
    chat messages, or token ids (one sequence: a batch of several is refused)."""
    if isinstance(prompt, Mapping) and "input_ids" in prompt:  # what tokenizer(text) returns
        prompt = prompt["input_ids"]
    if isinstance(prompt, (torch.Tensor, np.ndarray)):
        ids = torch.as_tensor(prompt)
        if ids.dtype == torch.bool or ids.dtype.is_floating_point or ids.dtype.is_complex:
            raise TypeError(f"prompt token ids must be integers; got a tensor of {ids.dtype}")
        if ids.dim() == 2 and ids.shape[0] != 1 or ids.dim() > 2:
            raise ValueError(f"prompt holds a batch of shape {tuple(ids.shape)}; a trace follows one "
                             "sequence: capture each prompt on its own (one row, or a 1-D tensor)")
        return _ids(ids.reshape(-1).tolist(), chat)
    if isinstance(prompt, (list, tuple)) and prompt and all(
            isinstance(t, (list, tuple, torch.Tensor, np.ndarray)) for t in prompt):
        if len(prompt) != 1:
            raise ValueError(f"prompt holds a batch of {len(prompt)} sequences; a trace follows one "
                             "sequence: capture each prompt on its own")
        return _tokenize(tokenizer, prompt[0], chat)
    if isinstance(prompt, (list, tuple)) and prompt and all(
            isinstance(t, (int, np.integer)) for t in prompt):  # bools too: _ids names them
        return _ids(list(prompt), chat)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt is empty; pass the text to run the model on")
        if chat:
            prompt = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, (list, tuple)):
        if prompt and all(isinstance(m, str) for m in prompt):
            raise ValueError(f"prompt is a list of {len(prompt)} strings; pass one string (a trace "
                             "follows one sequence: capture each prompt on its own)")
        if not prompt or not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            raise ValueError("prompt must be a non-empty string, a list of token ids, or a non-empty "
                             "list of chat messages ({'role': ..., 'content': ...})")
    else:
        raise TypeError(f"prompt must be a string, token ids or a list of chat messages; got "
                        f"{type(prompt).__name__}")
    if isinstance(prompt, str):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("this tokenizer has no chat template; pass the prompt as plain text "
                             "with chat=False")
        out = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True,
                                            return_dict=True, return_tensors="pt")
        ids = out["input_ids"]
    if ids.shape[1] == 0:
        raise ValueError(f"prompt {prompt!r} tokenizes to no tokens")
    return ids


def _ids(ids: list, chat: bool) -> torch.Tensor:
    """Token ids given by the caller, as a (1, T) tensor; bools are refused (True is not id 1)."""
    if not ids:
        raise ValueError("prompt is empty; pass the text (or token ids) to run the model on")
    bad = next((t for t in ids if not is_int(t)), None)
    if bad is not None:
        raise TypeError(f"prompt token ids must be integers; got {bad!r} in {ids[:8]!r}")
    if chat:
        raise ValueError("chat=True needs the prompt as text, not token ids")
    return torch.tensor([ids], dtype=torch.long)


def _check_vocabulary(model, ids: torch.Tensor, what: str) -> None:
    """Every id within the model's embedding table (an id past it would fail inside the model,
    or on an accelerator, read memory it should not)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    n = getattr(embeddings, "num_embeddings", None) or getattr(model.config, "vocab_size", None)
    if n is None or ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"{what} token id {lo if lo < 0 else hi} is outside this model's vocabulary "
                         f"(0..{n - 1})")


def _n_heads(config, kind: str) -> int:
    side = {"encoder": "encoder", "decoder": "decoder", "cross": "decoder"}.get(kind)
    names = ([f"{side}_attention_heads"] if side else []) + ["num_attention_heads", "num_heads", "n_head"]
    for name in names:
        v = getattr(config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    raise CaptureError(f"cannot tell the number of attention heads from {type(config).__name__}")


def _attention_modules(model, enc_dec: bool) -> dict[str, list[tuple[torch.nn.Module, int]]]:
    """Attention modules by kind, in layer order, with the index of the weights in their output.

    Follows the ``_can_record_outputs`` declarations that transformers v5 models carry for
    their own ``output_attentions`` machinery, scoped per sub-model as transformers does.
    """
    from transformers import PreTrainedModel
    from transformers.utils.output_capturing import OutputRecorder

    found: dict[str, list] = {}
    encoder = model.get_encoder() if enc_dec and hasattr(model, "get_encoder") else None
    encoder_ids = {id(m) for m in encoder.modules()} if encoder is not None else set()
    seen = set()

    def tasks_of(m):
        out = []
        for key, specs in (getattr(m, "_can_record_outputs", None) or {}).items():
            if key not in ("attentions", "cross_attentions"):
                continue
            for s in specs if isinstance(specs, list) else [specs]:
                if not isinstance(s, OutputRecorder):
                    s = OutputRecorder(target_class=s if not isinstance(s, str) else None, index=1,
                                       class_name=s if isinstance(s, str) else None)
                out.append((key, s))
        return out

    def visit(module, name, tasks):
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}"
            visit(child, full, tasks_of(child) or tasks if isinstance(child, PreTrainedModel) else tasks)
        for key, s in tasks:
            hit = (s.target_class is not None and isinstance(module, s.target_class)) or (
                s.class_name is not None and name.endswith(s.class_name))
            if not hit or id(module) in seen:
                continue
            if s.layer_name is not None and f".{s.layer_name.strip('.')}." not in name + ".":
                continue
            seen.add(id(module))
            if key == "cross_attentions":
                kind = "cross"
            elif enc_dec:
                kind = "encoder" if id(module) in encoder_ids else "decoder"
            else:
                kind = "self"
            found.setdefault(kind, []).append((name, module, s.index))

    visit(model, "", tasks_of(model))
    order = {id(m): i for i, m in enumerate(model.modules())}
    return {k: [(m, idx) for _, m, idx in sorted(v, key=lambda e: order[id(e[1])])]
            for k, v in found.items()}


# --------------------------------------------------------------------- memory
def _qk_dims(config, kind: str) -> tuple[int, int]:
    """(head_dim, n_kv_heads) of the model's ``kind`` attention, for the memory estimate."""
    n_heads = _n_heads(config, kind)
    d = getattr(config, "head_dim", None) or getattr(config, "hidden_size", 0) // n_heads
    return int(d), int(getattr(config, "num_key_value_heads", None) or n_heads)


def _generate(model, tokenizer, prompt_ids, max_new_tokens, enc_dec, kwargs):
    kwargs = dict(kwargs)
    kwargs.setdefault("do_sample", False)
    if not kwargs["do_sample"]:
        for k in ("temperature", "top_p", "top_k"):
            kwargs.setdefault(k, None)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is not None:
        kwargs.setdefault("pad_token_id", pad)
    for k in ("output_attentions", "return_dict_in_generate"):
        kwargs.pop(k, None)
    encoder_state = {}
    handle = None
    if enc_dec:
        encoder = model.get_encoder()
        thread = threading.get_ident()  # another thread's encoder pass is not this run's

        def keep_encoder_output(module, args, out) -> None:
            if threading.get_ident() == thread:
                encoder_state["out"] = out

        handle = encoder.register_forward_hook(keep_encoder_output)
    try:
        out = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                             max_new_tokens=max_new_tokens, return_dict_in_generate=True, **kwargs)
    finally:
        if handle is not None:
            handle.remove()
    seq = out.sequences
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    # transformers renamed past_key_values to cache during v5
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    # generate never feeds its last token back; one more cached step gives that token's row.
    if enc_dec:
        if cache is not None and "out" in encoder_state:
            model(encoder_outputs=encoder_state["out"], attention_mask=torch.ones_like(prompt_ids),
                  decoder_input_ids=seq[:, -1:], **{cache_kw: cache})
        else:
            model(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), decoder_input_ids=seq)
    elif cache is not None:
        model(input_ids=seq[:, -1:], attention_mask=torch.ones_like(seq), **{cache_kw: cache})
    else:
        model(input_ids=seq, attention_mask=torch.ones_like(seq))
    return seq

