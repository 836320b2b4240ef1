"""Capture the attention of a Hugging Face model, forward pass or ``generate``.

Hugging Face keeps every layer of every decode step as float32 until ``generate`` returns, and
under SDPA or flash attention returns no weights at all, without an error. We instead take what
we need while the model runs, on the model as it was loaded: on a fast kernel, the queries and
keys it computes (weights recomputed exactly from them, :mod:`attn_widget.qk_capture`); on eager
attention, its weights the moment a layer produces them (:mod:`attn_widget.recording`). Only the
requested layers and heads are kept; decode steps are stitched in order, so the trace equals one
forward pass over the final text.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .geometry import tril_offset
from .qk_capture import EAGER_PREFIX, fast_implementation
from .recording import CaptureError, captured_block, recorder_for, recording
from .selection import check_count, indices_below
from .tokens import token_table
from .trace import AttentionBlock, AttentionTrace

log = logging.getLogger("attn_widget")

FORMS = ("auto", "weights", "queries-keys")


class MemoryBudgetError(CaptureError):
    """A capture would need more memory than its budget; the message lists cheaper choices."""


def capture(model, tokenizer, prompt: str | Sequence[dict], *, max_new_tokens: int = 0,
            layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
            chat: bool = False, target: str | None = None, memory_budget: int | None = None,
            progress: bool | None = None, form: str = "auto", **generate_kwargs: Any) -> AttentionTrace:
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
    prompt : str, token ids (a list of ints or a tensor), or a list of chat messages
        (``{"role": ..., "content": ...}``).
    max_new_tokens : 0 for one forward pass; otherwise tokens to ``generate`` (greedy unless
        ``generate_kwargs`` say otherwise). Every decode step is stitched in, and the last
        generated token gets its row too, so the trace is square over the final text.
    layers, heads : model layer and query-head indices to keep (default: all). Negative
        indices count from the end.
    chat : wrap a string prompt in the tokenizer's chat template (for instruct models).
    target : encoder-decoder models only, with ``max_new_tokens=0``: the decoder text to
        teacher-force (default: just the decoder start token).
    memory_budget : bytes the capture may use (default: half the memory available now). An
        estimate above it raises :class:`MemoryBudgetError` before anything runs.
    progress : show a progress bar over decode steps (default: for 64 or more new tokens).
    form : how the trace stores attention: ``"weights"`` (float16, T²/2 per head),
        ``"queries-keys"`` (grows with T; weights recomputed when asked; not for models captured
        by hooks) or
        ``"auto"``: queries and keys when they take less memory than the weights.
    **generate_kwargs : passed to ``model.generate``.

    Returns
    -------
    AttentionTrace; ``trace.block().form`` says which form it holds, ``trace.options["attention"]``
    which attention implementation it was taken from.
    """
    # One capture at a time per model: the hooks of two would record each other's passes (a
    # prompt-box run on its thread and a notebook cell, say). A second one waits its turn.
    with _model_lock(model):
        return _capture(model, tokenizer, prompt, max_new_tokens=max_new_tokens, layers=layers,
                        heads=heads, chat=chat, target=target, memory_budget=memory_budget,
                        progress=progress, form=form, **generate_kwargs)


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


def _capture(model, tokenizer, prompt, *, max_new_tokens, layers, heads, chat, target,
             memory_budget, progress, form, **generate_kwargs) -> AttentionTrace:
    prompt_ids = _tokenize(tokenizer, prompt, chat)
    max_new_tokens = check_count(max_new_tokens, "max_new_tokens")
    if form not in FORMS:
        raise ValueError(f"form must be one of {list(FORMS)}; got {form!r}")
    fast = fast_implementation(model)
    if fast is not None and not recompute_matches(model, fast):
        fast = None
    if form == "queries-keys" and fast is None:
        raise ValueError(f"form='queries-keys' needs the model on a fast attention kernel (or an eager "
                         f"function) that attn_widget can tap; {type(model).__name__} is captured from "
                         "eager attention weights by hooks here; use form='weights' or 'auto'")
    with _attention_implementation(model, fast or "eager"):
        return _capture_with(model, tokenizer, prompt, prompt_ids, fast, max_new_tokens=max_new_tokens,
                             layers=layers, heads=heads, target=target, memory_budget=memory_budget,
                             progress=progress, chat=chat, form=form, **generate_kwargs)


def _capture_with(model, tokenizer, prompt, prompt_ids, fast, *, max_new_tokens, layers, heads, chat,
                  target, memory_budget, progress, form, **generate_kwargs) -> AttentionTrace:
    config = model.config
    enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    decoder_only = not enc_dec and (model.can_generate() or bool(getattr(config, "is_decoder", False)))
    if max_new_tokens and not (enc_dec or decoder_only):
        raise ValueError(f"max_new_tokens={max_new_tokens}, but {type(model).__name__} is an encoder "
                         "and cannot generate; use max_new_tokens=0 for a forward pass")
    if target is not None and not (enc_dec and max_new_tokens == 0):
        raise ValueError("target= is for encoder-decoder models with max_new_tokens=0")
    for bad in ("num_beams", "num_return_sequences"):
        if generate_kwargs.get(bad, 1) != 1:
            raise ValueError(f"{bad}={generate_kwargs[bad]} is not supported: a trace follows one "
                             "sequence; use 1")

    modules = _attention_modules(model, enc_dec)
    if not modules:
        raise CaptureError(f"found no attention modules in {type(model).__name__}; attn_widget "
                           "recognises models whose classes declare _can_record_outputs "
                           "(transformers v5 models)")
    kinds = {}
    for kind, mods in modules.items():
        n_heads = _n_heads(config, kind)
        kinds[kind] = (indices_below(layers, len(mods), "layers", kind),
                       indices_below(heads, n_heads, "heads", kind), n_heads)

    device = next(model.parameters()).device
    prompt_ids = prompt_ids.to(device)
    P = prompt_ids.shape[1]
    if enc_dec:
        start = getattr(config, "decoder_start_token_id", None)
        if start is None:
            start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
        if target is not None:
            dec_ids = _tokenize(tokenizer, target, False)
            if start is not None and dec_ids[0, 0] != start:
                dec_ids = torch.cat([torch.tensor([[start]]), dec_ids], dim=1)
            dec_ids = dec_ids.to(device)
        else:
            if start is None:
                raise CaptureError("this encoder-decoder model has no decoder_start_token_id")
            dec_ids = torch.tensor([[start]], device=device)
        t_max = dec_ids.shape[1] if max_new_tokens == 0 else 1 + max_new_tokens
        lengths = {"encoder": (P, P), "decoder": (t_max, t_max), "cross": (t_max, P)}
    else:
        t_max = P + max_new_tokens
        lengths = {"self": (t_max, t_max)}
    causal = {k: (k == "decoder" or (k == "self" and decoder_only)) for k in kinds}
    _check_budget(kinds, lengths, causal, memory_budget, P, max_new_tokens,
                  None if fast is None else _qk_dims(config, next(iter(kinds))), form)

    rec = recorder_for(fast, modules, kinds, lengths, causal)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recording(rec, modules, kinds, fast):
            if max_new_tokens == 0:
                mask = torch.ones_like(prompt_ids)
                if enc_dec:
                    model(input_ids=prompt_ids, attention_mask=mask, decoder_input_ids=dec_ids)
                    seq = dec_ids
                else:
                    model(input_ids=prompt_ids, attention_mask=mask)
                    seq = prompt_ids
            else:
                seq = _generate(model, tokenizer, prompt_ids, max_new_tokens, enc_dec, rec, progress,
                                generate_kwargs)
    finally:
        rec.close_progress()
        if was_training:
            model.train()
    rec.check_complete(seq.shape[1])

    T = seq.shape[1]
    blocks = {}
    for kind in kinds:
        b = captured_block(kind, kinds, causal, rec.result(kind, T))
        weights_cheaper = form == "auto" and b.weights_nbytes <= b.nbytes
        if b.form == "queries-keys" and (form == "weights" or weights_cheaper):
            b = AttentionBlock(b.name, b.causal, b.layers, b.heads, b.data, b.queries, b.keys)
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
        spans = {"prompt": (0, P), "generated": (P, T)} if decoder_only else {"input": (0, P)}
    arch = "encoder-decoder" if enc_dec else ("decoder" if decoder_only else "encoder")
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

    options = {"prompt": prompt if isinstance(prompt, (str, list, tuple)) else prompt.tolist(),
               "max_new_tokens": max_new_tokens, "layers": None if layers is None else list(layers),
               "heads": None if heads is None else list(heads), "chat": chat,
               "generate_kwargs": generate_kwargs,
               "attention": "eager" if fast is None or fast.startswith(EAGER_PREFIX) else fast,
               "torch": torch.__version__, "transformers": transformers.__version__}
    return AttentionTrace(tokens, blocks, spans, model_info, options, source)


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
    if isinstance(prompt, torch.Tensor) or (isinstance(prompt, (list, tuple)) and prompt
                                            and all(isinstance(t, (int, np.integer)) for t in prompt)):
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(1, -1)
        if ids.shape[1] == 0:
            raise ValueError("prompt is empty; pass the text (or token ids) to run the model on")
        if chat:
            raise ValueError("chat=True needs the prompt as text, not token ids")
        return ids
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt is empty; pass the text to run the model on")
        if chat:
            prompt = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, (list, tuple)):
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
def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _estimate(kinds, lengths, causal, prompt_len: int, qk_dims: tuple[int, int] | None = None,
              form: str = "auto") -> tuple[int, int]:
    """(store, largest transient) bytes of a capture.

    From eager weights (``qk_dims`` None): the float16 store holds every kept row; the transient
    is one layer's float32 prompt pass while it is taken (scores, weights, a copy). From a fast
    kernel (``qk_dims`` = (head_dim, n_kv_heads)): float32 queries and keys, which grow with T,
    plus the float16 weights when they are kept instead (``auto`` keeps the smaller; both exist
    while the weights are built); the transient is one layer's queries and keys being copied.
    """
    store = transient = 0
    for kind, (ls, hs, n_heads) in kinds.items():
        q, k = lengths[kind]
        weights = len(ls) * len(hs) * (tril_offset(q) if causal[kind] else q * k) * 2
        if qk_dims is None:
            store += weights
            rows = prompt_len if kind in ("self", "encoder") else 1
            keys = 1 if kind == "decoder" else prompt_len
            transient = max(transient, 3 * n_heads * rows * keys * 4)
        else:
            d, groups = qk_dims
            qk = len(ls) * (len(hs) * q + min(groups, len(hs)) * k) * d * 4
            store += qk + (weights if form == "weights" or (form == "auto" and weights <= qk) else 0)
            transient = max(transient, 2 * (n_heads + groups) * prompt_len * d * 4)
    return store, transient


def estimate_bytes(n_layers: int, n_heads: int, n_tokens: int, prompt_tokens: int,
                   all_heads: int | None = None, qk_dims: tuple[int, int] | None = None) -> int:
    """Bytes a decoder-only capture of ``n_layers`` × ``n_heads`` over ``n_tokens`` needs: from
    eager weights, or (``qk_dims`` = (head_dim, n_kv_heads)) from a fast kernel."""
    kinds = {"self": (range(n_layers), range(n_heads), all_heads or n_heads)}
    return sum(_estimate(kinds, {"self": (n_tokens, n_tokens)}, {"self": True}, prompt_tokens, qk_dims))


def _qk_dims(config, kind: str) -> tuple[int, int]:
    """(head_dim, n_kv_heads) of the model's ``kind`` attention, for the memory estimate."""
    n_heads = _n_heads(config, kind)
    d = getattr(config, "head_dim", None) or getattr(config, "hidden_size", 0) // n_heads
    return int(d), int(getattr(config, "num_key_value_heads", None) or n_heads)


def _check_budget(kinds, lengths, causal, budget, prompt_len, max_new_tokens, qk_dims=None,
                  form: str = "auto") -> None:
    store, transient = _estimate(kinds, lengths, causal, prompt_len, qk_dims, form)
    need = store + transient
    if budget is None:
        budget = _available_bytes() // 2
        source = "half the memory available now; set memory_budget= to change it"
    else:
        source = "memory_budget"
    if need <= budget:
        return
    kind, (ls, hs, n_heads) = next(iter(kinds.items()))
    q, _ = lengths[kind]
    per_head = need / max(1, sum(len(a) * len(b) for a, b, _ in kinds.values()))
    fit_heads = int(max(0, budget - transient) // max(per_head, 1))
    lo, hi = 1, q  # the longest run of every kept head that fits, prompt and generation alike
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(_estimate(kinds, dict.fromkeys(kinds, (mid, mid)), causal, min(mid, prompt_len), qk_dims,
                         form)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    gib = 2 ** 30
    raise MemoryBudgetError(
        f"capturing {len(ls)} layers × {len(hs)} heads over {q} tokens needs about "
        f"{need / gib:.2f} GiB, over the budget of {budget / gib:.2f} GiB ({source}). Cheaper "
        f"choices: about {max(fit_heads, 0)} (layer, head) pairs fit at this length (e.g. "
        f"layers=[{ls[-1]}] needs {(len(hs) * per_head + transient) / gib:.2f} GiB, "
        f"heads=[{hs[0]}] with all layers {(len(ls) * per_head + transient) / gib:.2f} GiB), or "
        f"all of them fit up to about {lo} tokens (prompt {prompt_len} + {max_new_tokens} new).")


def _generate(model, tokenizer, prompt_ids, max_new_tokens, enc_dec, rec, progress, kwargs):
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
    if progress or (progress is None and max_new_tokens >= 64):
        rec.open_progress(max_new_tokens)
    encoder_state = {}
    handle = None
    if enc_dec:
        encoder = model.get_encoder()
        handle = encoder.register_forward_hook(
            lambda m, a, out: encoder_state.__setitem__("out", out))
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

