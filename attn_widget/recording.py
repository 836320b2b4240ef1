"""Recording attention during a capture: eager weights from forward hooks, or queries and keys
from the model's own kernel.

:class:`Recorder` takes eager attention weights the moment a layer produces them: only the kept
layers and heads, downcast to float16, causal rows appended to a packed lower triangle (a decode
step with a KV cache produces one query row over all earlier keys: exactly the next row), and
checks them (rows sum to 1, nothing above the diagonal, no NaN). :class:`QueryKeyRecorder` keeps
queries and keys instead (:mod:`attn_widget.qk_capture`). :func:`recording` attaches either one,
and a :class:`~attn_widget.values.ValueRecorder` beside it when the norms of the values are kept.
"""

from __future__ import annotations

import contextlib
import threading
from functools import lru_cache

import numpy as np
import torch

from .geometry import tril_offset
from .qk_capture import QueryKeyTap, tapped
from .querykeys import QueryKeys
from .trace import AttentionBlock
from .valuenorms import ValueNorms

ROW_SUM_TOLERANCE = 1e-3
FUTURE_TOLERANCE = 1e-4  # total weight a query may put above the diagonal (float rounding)


def row_sum_tolerance(dtype: torch.dtype) -> float:
    """How far from 1 a row of weights computed in ``dtype`` may sum: 1e-3 in float32, two
    machine epsilons where rounding each weight to a half-precision type costs more (bfloat16:
    1.6e-2, float16: 2.0e-3)."""
    if not dtype.is_floating_point:
        return ROW_SUM_TOLERANCE
    return max(ROW_SUM_TOLERANCE, 2 * torch.finfo(dtype).eps)


class CaptureError(RuntimeError):
    """The model's attention could not be captured (no weights, invalid weights, bad setup)."""


@lru_cache(maxsize=8)
def _tril_index(q: int, k: int, device: str) -> torch.Tensor:
    """Flat indices into a (q, k) block of the causal rows k-q..k-1, in packed order."""
    start = k - q
    keep = torch.arange(k)[None, :] <= torch.arange(start, k)[:, None]
    return keep.reshape(-1).nonzero().squeeze(1).to(device)


class Progress:
    """One progress bar over a capture: each watched layer's prompt pass, then each decode step
    (shown for long prompts and long generations; see :func:`attn_widget.capture`)."""

    bar = None

    def open_progress(self, n_layers: int, n_steps: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=n_layers + n_steps, desc="attention capture", unit="step", leave=False,
                        postfix={"prompt pass": f"{n_layers} layers", "decode": f"{n_steps} tokens"})

    def layer(self) -> None:
        """One watched layer finished its prompt pass."""
        if self.bar is not None and self.bar.n < self.bar.total:
            self.bar.update(1)

    def step(self) -> None:
        if self.bar is not None and self.bar.n < self.bar.total:
            self.bar.update(1)

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class QueryKeyRecorder(Progress):
    """Keeps queries and keys from the model's own kernel (see :mod:`attn_widget.qk_capture`)."""

    def __init__(self, modules, kinds, lengths, causal, on_values=None):
        self.kinds = kinds
        self.causal = causal
        slots = {id(mods[layer][0]): (kind, li, layer) for kind, mods in modules.items()
                 for li, layer in enumerate(kinds[kind][0])}
        self.tap = QueryKeyTap(slots, {kind: hs for kind, (_, hs, _) in kinds.items()}, causal, lengths,
                               self.step, self.layer, on_values)

    def check_complete(self, n_rows: int) -> None:
        for kind, (ls, _, _) in self.kinds.items():
            for li, layer in enumerate(ls):
                done = self.tap.positions(kind, li)
                if done != n_rows and (self.causal[kind] or done == 0):
                    raise CaptureError(
                        f"{kind} attention layer {layer} produced queries for {done} of {n_rows} "
                        "positions; the model's attention function did not see every step")

    def result(self, kind: str, n: int) -> QueryKeys:
        qk = self.tap.query_keys(kind, n)
        for li, layer in enumerate(self.kinds[kind][0]):
            if not (np.isfinite(qk.queries[li]).all() and np.isfinite(qk.keys[li]).all()):
                raise CaptureError(f"{kind} attention layer {layer} has queries or keys that are NaN or "
                                   "infinite")
        return qk


class Recorder(Progress):
    """Takes attention weights from hooks into preallocated float16 buffers.

    Only passes run on the thread that made the recorder are taken: a forward hook fires on
    whichever thread runs the module, and another thread's pass of the same model (a notebook
    cell while a prompt box captures, say) is not part of this capture.
    """

    def __init__(self, kinds, lengths, causal):
        self.thread = threading.get_ident()
        self.kinds = kinds
        self.causal = causal
        self.buffers = {}
        self.rows_done = {}
        for kind, (ls, hs, _) in kinds.items():
            q, k = lengths[kind]
            shape = (len(ls), len(hs), tril_offset(q)) if causal[kind] else (len(ls), len(hs), q, k)
            self.buffers[kind] = torch.zeros(shape, dtype=torch.float16)
            self.rows_done[kind] = np.zeros(len(ls), dtype=np.int64)
        self.head_index = {kind: torch.tensor(hs) for kind, (_, hs, _) in kinds.items()}
        self.all_heads = {kind: hs == list(range(n)) for kind, (_, hs, n) in kinds.items()}
        self.first_kind = "decoder" if "decoder" in kinds else "self"

    def hook(self, kind: str, li: int, layer: int, index: int):
        def _hook(module, args, output):
            if threading.get_ident() != self.thread:
                return
            weights = output[index] if isinstance(output, (tuple, list)) else None
            if not isinstance(weights, torch.Tensor):
                raise CaptureError(
                    f"{kind} attention layer {layer} ({type(module).__name__}) returned no attention "
                    "weights; the model's attention implementation does not expose them. Load it "
                    "with attn_implementation='eager' (attn_widget.load_model does this)")
            self.take(kind, li, layer, weights, sinks=getattr(module, "sinks", None) is not None)
        return _hook

    def take(self, kind: str, li: int, layer: int, weights: torch.Tensor, selected: bool = False,
             sinks: bool = False) -> None:
        """Store one pass's weights (1, heads, queries, keys): all the model's heads, or only the
        kept ones when ``selected``. With learned ``sinks`` (gpt-oss) a row sums to at most 1: the
        sink logit takes the rest."""
        if weights.dim() != 4 or weights.shape[0] != 1:
            raise CaptureError(f"{kind} attention layer {layer} gave weights of shape "
                               f"{tuple(weights.shape)}; expected (1, heads, queries, keys)")
        index = self.head_index[kind]
        if index.device != weights.device:  # models on an accelerator: select there, store here
            index = self.head_index[kind] = index.to(weights.device)
        all_heads = selected or (self.all_heads[kind] and len(index) == weights.shape[1])
        q, k = weights.shape[-2:]
        buf = self.buffers[kind]
        causal = self.causal[kind]
        if causal:
            start = k - q
            lo, hi = tril_offset(start), tril_offset(k)
            if hi > buf.shape[-1]:
                raise CaptureError(f"{kind} attention grew past the {buf.shape[-1]} expected values; "
                                   "the model produced more positions than generate asked for")
            keep = None if q == 1 else _tril_index(q, k, str(weights.device))
        elif kind == "cross":
            r0 = int(self.rows_done[kind][li])
            if r0 + q > buf.shape[2]:
                r0 = 0  # a full teacher-forced pass restarts the rows
        # A long prompt pass gives (heads, T, T) float32 per layer; take it a few heads at a time
        # so our copies stay near 64 MiB instead of adding several times the model's own.
        step = max(1, (64 << 20) // (4 * q * k))
        for h0 in range(0, len(index), step):
            w = weights[0, h0:h0 + step] if all_heads else weights[0].index_select(0, index[h0:h0 + step])
            tolerance = row_sum_tolerance(w.dtype)
            w = w.float()
            if causal:
                rows = w[:, 0, :] if keep is None else w.reshape(w.shape[0], -1).index_select(1, keep)
                self._validate(kind, layer, w, rows if keep is not None else None, h0, sinks, tolerance)
                buf[li, h0:h0 + step, lo:hi] = rows.to("cpu", torch.float16)
            else:
                self._validate(kind, layer, w, None, h0, sinks, tolerance)
                if kind == "cross":
                    buf[li, h0:h0 + step, r0:r0 + q, :k] = w.to("cpu", torch.float16)
                else:
                    buf[li, h0:h0 + step, :q, :k] = w.to("cpu", torch.float16)
        if causal:
            self.rows_done[kind][li] = max(self.rows_done[kind][li], k)
            if q == 1 and kind == self.first_kind and li == 0:
                self.step()
        else:
            self.rows_done[kind][li] = r0 + q if kind == "cross" else q
        if q > 1:
            self.layer()

    def _validate(self, kind, layer, w, kept, h0: int = 0, sinks: bool = False,
                  tolerance: float = ROW_SUM_TOLERANCE) -> None:
        """Rows sum to 1 (a NaN anywhere fails this too) and, for causal attention, the kept
        lower triangle holds all of it: weights are non-negative, so a total above the diagonal
        (all weight minus the kept weight, summed in float64) is the weight on future keys."""
        heads = self.kinds[kind][1][h0:]
        sums = w.sum(dim=-1)
        err = ((sums - 1).clamp(min=0) if sinks else (sums - 1).abs()).flatten(1).amax(dim=1)
        if not bool((err <= tolerance).all()):
            i = int((~(err <= tolerance)).nonzero()[0])
            if torch.isnan(err[i]):
                raise CaptureError(f"{kind} attention layer {layer} head {heads[i]} contains NaN")
            raise CaptureError(f"{kind} attention layer {layer} head {heads[i]}: rows sum to 1 ± "
                               f"{float(err[i]):.2e}, outside ± {tolerance:g}; this model's "
                               "weights are not a softmax over keys")
        if kept is not None:
            above = sums.sum(dim=-1, dtype=torch.float64) - kept.sum(dim=-1, dtype=torch.float64)
            future = FUTURE_TOLERANCE * tolerance / ROW_SUM_TOLERANCE
            if not bool((above.abs() <= future).all()):
                i = int((above.abs() > future).nonzero()[0])
                raise CaptureError(f"{kind} attention layer {layer} head {heads[i]} attends to future "
                                   f"positions (weight {float(above[i]):.2e} above the diagonal) in "
                                   "causal attention")

    def check_complete(self, n_rows: int) -> None:
        for kind, done in self.rows_done.items():
            if kind == "encoder" or (kind == "self" and not self.causal[kind]):
                continue  # bidirectional blocks come from one pass, not steps
            if (done < n_rows).any():
                li = int(np.argmin(done))
                raise CaptureError(
                    f"{kind} attention layer {self.kinds[kind][0][li]} produced rows for "
                    f"{int(done[li])} of {n_rows} positions; the model's forward hooks did not "
                    "see every step")

    def result(self, kind: str, n: int) -> np.ndarray:
        buf = self.buffers[kind]
        if self.causal[kind]:
            buf = buf[..., :tril_offset(n)]
        elif kind == "cross":
            buf = buf[:, :, :n]
        out = buf.numpy()
        # a much larger preallocation (early stop) would pin its memory through the view
        return out.copy() if out.base is not None and out.nbytes < 0.9 * buf.untyped_storage().nbytes() \
            else out


def captured_block(kind: str, kinds, causal, stored, norms: ValueNorms | None = None) -> AttentionBlock:
    """The captured block ``kind``: float16 weights, or queries and keys (``stored``), with the
    norms of its values when they were kept."""
    qk = stored if isinstance(stored, QueryKeys) else None
    return AttentionBlock(kind, causal[kind], tuple(kinds[kind][0]), tuple(kinds[kind][1]),
                          None if qk is not None else stored,
                          queries="source_tokens" if kind == "encoder" else "tokens",
                          keys="source_tokens" if kind in ("encoder", "cross") else "tokens", qk=qk,
                          norms=norms)


def recorder_for(fast: str | None, modules, kinds, lengths, causal,
                 values=None) -> Recorder | QueryKeyRecorder:
    """The recorder of a capture: of ``fast``'s queries and keys (handing the values to
    ``values``, a :class:`~attn_widget.values.ValueRecorder`, when given), or of eager weights
    (``fast`` None)."""
    if fast is None:
        return Recorder(kinds, lengths, causal)
    return QueryKeyRecorder(modules, kinds, lengths, causal, None if values is None else values.take)


@contextlib.contextmanager
def recording(rec, modules, kinds, fast: str | None, values=None, projections=None):
    """Within the block, the kept layers' attention goes into ``rec``: eager weights taken by
    forward hooks (a :class:`Recorder`), or the queries and keys of ``fast``, the model's own
    kernel (a :class:`QueryKeyRecorder`). With hooks, ``values`` (a
    :class:`~attn_widget.values.ValueRecorder`) takes the values from the value ``projections``
    of the captured layers; on a tapped kernel it gets them from the tap."""
    if fast is not None:
        with tapped(fast, rec.tap):
            yield
        return
    handles = [mods[layer][0].register_forward_hook(rec.hook(kind, li, layer, mods[layer][1]))
               for kind, mods in modules.items() for li, layer in enumerate(kinds[kind][0])]
    try:
        with values.hooked(modules, kinds, projections) if values is not None else contextlib.nullcontext():
            yield
    finally:
        for h in handles:
            h.remove()
