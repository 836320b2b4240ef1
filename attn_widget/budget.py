"""The memory a capture needs, estimated before the model runs, and the refusal when it is over
its budget, with cheaper choices that fit."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .geometry import tril_offset
from .recording import CaptureError
from .storage import format_bytes


class MemoryBudgetError(CaptureError):
    """A capture would need more memory than its budget; the message lists cheaper choices.

    ``choices`` holds them as keyword arguments of :func:`capture` (``{"layers": [28, 29]}``,
    ``{"max_new_tokens": 12}``, ``{"memory_budget": 123456789}``…): each, with the rest of the
    call unchanged, fits the budget.
    """

    def __init__(self, message: str, choices: Sequence[dict] = ()):
        super().__init__(message)
        self.choices = [dict(c) for c in choices]


def available_bytes() -> int:
    """Memory available now (``MemAvailable``, else the free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def estimate(kinds, lengths, causal, prompt_len: int, qk_dims: tuple[int, int] | None = None,
             form: str = "auto", values: str | bool = False) -> tuple[int, int]:
    """(store, largest transient) bytes of a capture.

    From eager weights (``qk_dims`` None): the float16 store holds every kept row; the transient
    is one layer's float32 prompt pass while it is taken (scores, weights, a copy). From a fast
    kernel (``qk_dims`` = (head_dim, n_kv_heads)): float32 queries and keys, which grow with T,
    plus the float16 weights when they are kept instead (``auto`` keeps the smaller; both exist
    while the weights are built); the transient is one layer's queries and keys being copied.
    ``values`` (``capture``'s argument) adds the float32 norms of the values (one per kept head
    and key) and, for ``"layer"``, the heads' Gram (``H (H + 1) / 2`` per layer and key).
    """
    store = transient = 0
    for kind, (ls, hs, n_heads) in kinds.items():
        q, k = lengths[kind]
        weights = len(ls) * len(hs) * (tril_offset(q) if causal[kind] else q * k) * 2
        if values:
            store += len(ls) * k * 4 * (len(hs) + (len(hs) * (len(hs) + 1) // 2 if values == "layer" else 0))
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
                   all_heads: int | None = None, qk_dims: tuple[int, int] | None = None,
                   values: str | bool = False) -> int:
    """Bytes a decoder-only capture of ``n_layers`` × ``n_heads`` over ``n_tokens`` needs: from
    eager weights, or (``qk_dims`` = (head_dim, n_kv_heads)) from a fast kernel; ``values`` as
    :func:`attn_widget.capture` takes it."""
    kinds = {"self": (range(n_layers), range(n_heads), all_heads or n_heads)}
    return sum(estimate(kinds, {"self": (n_tokens, n_tokens)}, {"self": True}, prompt_tokens, qk_dims,
                        values=values))


def check_budget(plan, options: dict, qk_dims: tuple[int, int] | None) -> None:
    """Refuse a capture whose estimate is over its budget, with choices that fit.

    ``plan`` is what capture settled before running (its ``kinds``, ``causal``, ``prompt_ids``
    and ``lengths``); ``qk_dims`` (head_dim, n_kv_heads) when it keeps queries and keys. Each
    choice is keyword arguments of :func:`capture` that, with the rest of the call as it is,
    would pass this check (the same estimate): fewer layers, fewer heads, fewer new tokens, no
    value norms, or a larger budget; they are in the message and in the error's ``choices``.
    """
    kinds, causal = plan.kinds, plan.causal
    max_new, form, values = options["max_new_tokens"], options["form"], options["values"]
    prompt_len = plan.prompt_ids.shape[1]

    def need(ks=kinds, new=max_new, p=prompt_len, v=values) -> int:
        return sum(estimate(ks, plan.lengths(new, p), causal, p, qk_dims, form, v))

    total = need()
    budget = options["memory_budget"]
    if budget is None:
        budget = available_bytes() // 2
        source = "half the memory available now; set memory_budget= to change it"
    else:
        source = "memory_budget"
    if total <= budget:
        return

    def fits(n_bytes: int) -> bool:
        return n_bytes <= budget

    # layers and heads kept by every kind, so that one list is valid for all of them
    layers = sorted(set.intersection(*(set(ls) for ls, _, _ in kinds.values())))
    heads = sorted(set.intersection(*(set(hs) for _, hs, _ in kinds.values())))

    def keep(layer_set=None, head_set=None):
        return {k: ([x for x in ls if layer_set is None or x in layer_set],
                    [x for x in hs if head_set is None or x in head_set], n)
                for k, (ls, hs, n) in kinds.items()}

    choices: list[tuple[dict, int]] = []
    n = largest(lambda i: fits(need(keep(layer_set=layers[-i:]))), len(layers) - 1)
    if n:  # the last layers: nearest the output
        choices.append(({"layers": layers[-n:]}, need(keep(layer_set=layers[-n:]))))
    n = largest(lambda i: fits(need(keep(head_set=heads[:i]))), len(heads) - 1)
    if n:
        choices.append(({"heads": heads[:n]}, need(keep(head_set=heads[:n]))))
    longest = largest(lambda t: fits(need(new=max(0, t - prompt_len), p=min(t, prompt_len))),
                      prompt_len + max_new - 1)
    if max_new and longest >= prompt_len:
        choices.append(({"max_new_tokens": longest - prompt_len}, need(new=longest - prompt_len)))
    if values and fits(need(v=False)):
        choices.append(({"values": False}, need(v=False)))
    choices.append(({"memory_budget": int(total) + 1}, total))

    what = f"{len(kinds[next(iter(kinds))][0])} layers × {len(kinds[next(iter(kinds))][1])} heads"
    q = plan.lengths(max_new)[next(iter(kinds))][0]
    shown = "; ".join(f"{', '.join(f'{k}={literal(v)}' for k, v in c.items())} ({format_bytes(b)})"
                      for c, b in choices)
    line = (f"capturing {what} over {q} tokens (prompt {prompt_len} + {max_new} new) needs about "
            f"{format_bytes(total)}, over the budget of {format_bytes(budget)} ({source}). Cheaper choices "
            f"that fit: {shown}.")
    if longest:
        line += (f" At this budget all of them fit up to about {longest} tokens"
                 f"{', shorter than this prompt' if longest < prompt_len else ''}.")
    if len(choices) == 1:
        smallest = need(keep(layer_set=layers[-1:], head_set=heads[:1]))
        line += (f" Even one layer and one head (layers=[{layers[-1]}], heads=[{heads[0]}]) needs "
                 f"{format_bytes(smallest)}.")
    raise MemoryBudgetError(line, [c for c, _ in choices])


def largest(fits, hi: int) -> int:
    """The largest ``n`` in ``1..hi`` with ``fits(n)`` (which holds up to some ``n`` and not
    after), or 0."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def literal(value) -> str:
    """A keyword value as the user would type it: a run of indices as ``range(a, b)``."""
    if isinstance(value, list) and len(value) > 3 and value == list(range(value[0], value[-1] + 1)):
        return f"range({value[0]}, {value[-1] + 1})"
    return repr(value)
