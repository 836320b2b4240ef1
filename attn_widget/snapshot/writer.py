"""Offline HTML snapshots of a trace or widget: which heads go in, under a size budget.

A snapshot runs the widget's own front end with no kernel: the page (:mod:`.page`) holds the
widget's ESM, BokehJS from the installed bokeh, the encoded attention and replies to the front
end's requests (head fetches), recorded here through the widget's public reply module.
The page decodes only what its first view needs (BokehJS, the widget, the shown head and
layer mean) before it paints; each other head is decoded when the view first asks for it.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..encoding import decode_payload
from ..selection import MEAN, check_count, check_positive, format_head_list, index_list, is_int
from ..storage import write_atomically
from ..tokens import printable, prompt_words
from . import long
from .page import Page, ascii_html

# --------------------------------------------------------------------------- attention snapshots
MB = 1_000_000
_MIN_MEAN_BITS = 4
_FETCH_FIELDS = ("type", "trace_id", "source", "key")
HeadChoice = Sequence[int] | Sequence[tuple[int, int]] | None


@dataclass(frozen=True)
class Snapshot:
    """What :func:`save_snapshot` wrote; usable as a path (``open(snapshot)`` works).

    Attributes
    ----------
    path : the HTML file.
    nbytes : its size in bytes.
    heads : (layer, head) pairs whose full attention is in the file, most important first.
    left_out : (layer, head) pairs left out to stay under ``budget_mb``, in the same order.
    n_layers : layers covered by per-layer means and the all-heads grid.
    cells_per_head : attention cells of one head's full matrix (T × T for self-attention).
    n_sources : traces in the file (2 for a compare view).
    budget_mb : the size limit it was written under.
    mean_bits : mantissa bits kept in the layer means: 10 is exact float16; fewer when the
        means had to be rounded to leave room for heads: relative error ≤ 2^-(mean_bits+1), or
        absolute error ≤ 2^(-15-mean_bits) for weights below 2^-14 (float16 subnormals).
    pool_side : 0, or for a long trace the resolution its heads are in: 1 px = pool_side ×
        pool_side tokens (the max of each square); ``heads`` are then the pooled heads.
    step_rows : for a long trace, the (layer, head) pairs (head -1: the layer mean) whose
        generated tokens' rows are in the file at full resolution.
    weightings : the weightings the file's views can be shown with: ``("attention", "norm")``
        when the value-weighted views (``α_ij ‖f_h(x_j)‖``: grid and layer means) are in it too.
    weighted_heads : the heads whose value-weighted view is in the file in full (the first of
        ``heads``, as many as fit after every head's weights).
    """

    path: Path
    nbytes: int
    heads: tuple[tuple[int, int], ...]
    left_out: tuple[tuple[int, int], ...]
    n_layers: int
    cells_per_head: int
    n_sources: int
    budget_mb: float
    mean_bits: int = 10
    pool_side: int = 0
    step_rows: tuple[tuple[int, int], ...] = ()
    weightings: tuple[str, ...] = ("attention",)
    weighted_heads: tuple[tuple[int, int], ...] = ()

    @property
    def bytes_per_cell(self) -> float:
        """File bytes ÷ (full views included × cells per head), everything counted: a head's
        value-weighted view counts as one more view."""
        views = len(self.heads) + len(self.weighted_heads)
        return self.nbytes / max(1, self.n_sources * views * self.cells_per_head)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        n = len(self.heads) + len(self.left_out)
        if self.pool_side:
            means = sum(1 for _, h in self.step_rows if h == MEAN)
            return (f"wrote {self.path} ({self.nbytes / MB:.2f} MB): a long trace, {len(self.heads)} of {n} "
                    f"heads and every layer mean pooled at 1 px = {self.pool_side}×{self.pool_side} tokens "
                    f"(max); generated tokens' rows at full resolution for {means} of {self.n_layers} "
                    f"layer means and {len(self.step_rows) - means} heads; zooming to full resolution "
                    "needs the live widget")
        line = (f"wrote {self.path} ({self.nbytes / MB:.2f} MB): {len(self.heads)} of {n} heads in full, "
                f"{self.bytes_per_cell:.2f} bytes per attention cell; layer means and the all-heads "
                f"grid cover all {self.n_layers} layers")
        if self.left_out:
            line += (f"\nleft out {len(self.left_out)} heads to stay under {self.budget_mb:g} MB: "
                     f"{format_head_list(self.left_out)}")
        if "norm" in self.weightings:
            line += (f"\nvalue-weighted views: every layer mean, the grid and {len(self.weighted_heads)} of "
                     f"the {len(self.heads)} heads")
        if self.mean_bits < 10:
            line += (f"\nlayer means rounded to {self.mean_bits} mantissa bits to fit (relative error "
                     f"≤ {2.0 ** -(self.mean_bits + 1):.2%}); heads are exact float16")
        return line


def save_snapshot(source, path: str | os.PathLike | None = None, *, layers: Sequence[int] | None = None,
                  heads: HeadChoice = None, budget_mb: float = 25.0, title: str | None = None):
    """Write one self-contained HTML file of a trace or widget that works offline.

    The file runs the widget's own front end with every client-side interaction (sliders,
    head mean, hover, pin, colour scales, all-heads grid, generation scrubber) and makes no
    network request: BokehJS, the widget code and the attention are inlined.

    Parameters
    ----------
    source : AttentionTrace or AttentionWidget
        A widget's view (layer, head, scale, weighting, step, pinned token) and compare trace are kept.
    path : file to write, atomically. ``None`` returns the page as a string instead (pure
        ASCII, base64 blobs: about a third larger, fit for an iframe ``srcdoc``).
    layers : model layers to include (default: every captured layer).
    heads : head indices to include in every layer (``[0, 3]``), or ``(layer, head)`` pairs
        (``[(5, 3), (17, 2)]``) in the order they matter to you: only those heads are in the
        file in full, while the layer means and the grid still cover every layer. Default: all.
    budget_mb : largest file to write (1 MB = 10⁶ bytes). Per-layer means and the all-heads
        grid are always included; heads follow, most important first, until the next would
        not fit. Importance is your order for ``(layer, head)`` pairs, otherwise the head's
        role and sink scores: ``max(previous-token, self, 1 − normalised entropy) × (1 − sink)``,
        so focused heads with a clear role come first and heads that only look at the sink
        come last. The page lists every head it left out; a fetch of one says so. A trace with
        value norms also carries value-weighted views (``weighting="norm"``) in what the weights
        leave of the budget: their grid and layer means, then the included heads in the same
        order; the page says which are missing, or that they all are. (Long, pooled snapshots
        carry the weights only, and say so.)
    title : page title (default: the model name and the start of the text).

    Returns
    -------
    Snapshot (with the path, size and the heads included and left out), or the page as a
    string when ``path`` is None.

    Raises
    ------
    ValueError : when even the layer means and grid exceed ``budget_mb`` (the message gives
        their size and cheaper choices), or for a layer or head that was not captured.
    OSError : when ``path`` cannot be written (one message naming the path and the reason).
    """
    layers, heads, budget_mb, title = _checked_arguments(path, layers, heads, budget_mb, title)
    widget, candidates = _snapshot_widget(source, layers, heads, budget_mb)
    try:
        try:
            data, included, left_out, mean_bits, content, kinds, weighted = _attention_page(
                widget, candidates, budget_mb, title, portable=path is None)
        except _ExactTooBig:  # the exact layer means do not fit: every head and mean pooled instead
            widget.close()
            widget, candidates = _snapshot_widget(source, layers, heads, budget_mb, pool=True)
            data, included, left_out, mean_bits, content, kinds, weighted = _attention_page(
                widget, candidates, budget_mb, title, portable=path is None)
    finally:
        widget.close()
    if path is None:
        return data.decode("ascii")
    path = write_atomically(path, lambda f: f.write(data), "snapshot")
    b = widget.trace.block()
    return Snapshot(path, len(data), tuple(included), tuple(left_out), len(b.layers),
                    b.n_queries * b.n_keys, len(widget.traces), float(budget_mb), mean_bits,
                    content.pool_side if content else 0, content.step_rows if content else (), kinds,
                    tuple(weighted))


def static(source, *, height: int = 1000, budget_mb: float = 10.0, **kwargs) -> StaticSnapshot:
    """The snapshot as an ``<iframe srcdoc>`` display object: interactive in any HTML copy of a
    notebook (nbconvert, nbviewer, a static site), offline, with no kernel.

    ``kwargs`` are those of :func:`save_snapshot` (``layers``, ``heads``, ``title``). The page
    is stored in the notebook, so the budget is smaller than a file's (default 10 MB). The
    iframe starts ``height`` pixels tall and fits itself to the page where scripts may run.
    """
    height = check_count(height, "height (pixels)", minimum=1)
    return StaticSnapshot(save_snapshot(source, None, budget_mb=budget_mb, **kwargs), height)


def _checked_arguments(path, layers, heads, budget_mb, title) -> tuple:
    """The arguments of :func:`save_snapshot`, checked before any work: layers read once into a
    list, heads into indices or (layer, head) pairs, the budget a finite number above 0, the
    title a string with control characters escaped (a NUL must not reach the page raw)."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path or None; got {type(path).__name__}")
    budget_mb = check_positive(budget_mb, "budget_mb (megabytes of 10⁶ bytes)", example="25")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None; got {type(title).__name__}")
    if heads is not None:
        items = [heads] if is_int(heads) else heads
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise TypeError(f"heads must be head indices ([0, 3]) or (layer, head) pairs ([(5, 3)]); got "
                            f"{heads!r}")
        items = list(items)
        if items and all(isinstance(p, (Sequence, np.ndarray)) and not isinstance(p, str) and len(p) == 2
                         and all(is_int(x) for x in p) for p in items):
            heads = [(int(a), int(b)) for a, b in items]
        else:
            heads = index_list(items, "heads")
    return (index_list(layers, "layers"), heads, budget_mb,
            None if title is None else printable(title))


@dataclass(frozen=True)
class StaticSnapshot:
    """A snapshot page shown in a sandboxed iframe (``_repr_html_``); ``page`` is its HTML."""

    page: str
    height: int = 1000

    def _repr_html_(self) -> str:
        frame = f"aw-static-{uuid.uuid4().hex[:12]}"
        # The page reports its height (postMessage) so the iframe shows it without a scrollbar;
        # where scripts are not run, the iframe keeps its starting height.
        return (f'<iframe id="{frame}" srcdoc="{html.escape(self.page, quote=True)}" '
                f'sandbox="allow-scripts allow-downloads" '
                f'style="width: 100%; height: {int(self.height)}px; border: 0;" '
                f'title="attention snapshot"></iframe>\n<script>(() => {{ const f = '
                f'document.getElementById("{frame}"); addEventListener("message", (e) => {{ '
                'if (f && e.source === f.contentWindow && typeof e.data?.attnWidgetHeight === "number") '
                'f.style.height = Math.ceil(e.data.attnWidgetHeight) + "px"; }); })();</script>')


class _ExactTooBig(ValueError):
    """The page with exact layer means is over the budget (a pooled page may still fit)."""


def _snapshot_widget(source, layers: Sequence[int] | None, heads: HeadChoice, budget_mb: float,
                     pool: bool = False):
    """A fresh widget for the chosen layers/heads that fetches every head, and the (layer, head)
    pairs to include, most important first."""
    import traitlets

    from .. import analysis
    from ..trace import AttentionTrace
    from ..widget import AttentionWidget

    if isinstance(source, AttentionTrace):
        traces, view, labels = (source,), {}, ("A", "B")
    elif isinstance(source, AttentionWidget):
        traces = tuple(t.narrow(block=source.block) for t in source.traces)  # the block it shows
        view = {name: getattr(source, name) for name in ("layer", "head", "scale", "theme", "weighting")}
        labels = source.view_data.labels
    else:
        raise TypeError(f"source must be an AttentionTrace or AttentionWidget; got {type(source).__name__}")
    pairs = [tuple(int(x) for x in h) for h in heads] if heads is not None and len(heads) and \
        not isinstance(heads[0], (int, float)) else None
    head_ids = None if pairs is not None or heads is None else [int(h) for h in heads]
    if layers is not None or head_ids is not None:
        traces = tuple(t.narrow(layers=layers, heads=head_ids) for t in traces)
    b = traces[0].block()
    if pairs is not None:
        for layer, head in pairs:  # clear errors for pairs that were not captured
            b.layer_pos(layer)
            b.head_pos(head)
        candidates = list(dict.fromkeys(pairs))
    else:
        scores = analysis.head_scores(traces[0])
        order = np.argsort(-head_priority(scores), axis=None, kind="stable")
        candidates = [(b.layers[i // len(b.heads)], b.heads[i % len(b.heads)]) for i in order]
    layer, head = view.get("layer"), view.get("head")
    if layer not in b.layers:
        layer = candidates[0][0] if candidates else b.layers[0]
    if head != MEAN and (layer, head) not in candidates:
        head = next((h for lay, h in candidates if lay == layer), MEAN)
    if head != MEAN:
        candidates.remove((layer, head))
        candidates.insert(0, (layer, head))
    widget = AttentionWidget(traces[0], compare=traces[1] if len(traces) > 1 else None, labels=labels,
                             layer=layer, head=head, scale=view.get("scale", "auto"),
                             theme=view.get("theme", "auto"), send_all_below=0, push_bokeh=False,
                             **dict(zip(("pool_above", "pool_side"), _pooling(traces, budget_mb, pool))))
    widget.snapshot_weighting = view.get("weighting", "attention")  # the page's, if it fits
    if isinstance(source, AttentionWidget):
        with contextlib.suppress(traitlets.TraitError):  # both hold when the block has the steps
            widget.step, widget.selected_token = source.step, source.selected_token
    return widget, candidates


def _pooling(traces, budget_mb: float, pool: bool) -> tuple[int | None, int | None]:
    """``pool_above`` and ``pool_side`` for a snapshot's widget: a long trace (the widget pools
    it anyway), or any trace when ``pool`` (the exact layer means did not fit), is pooled at the
    resolution where every head and layer mean of every trace fits in about half the budget
    (never finer than the heatmap's pixels)."""
    from ..encoding import THUMB_SIZE
    from ..figures import frame_pixels
    from ..protocol import POOL_ABOVE

    b = traces[0].block()
    q, k = b.n_queries, b.n_keys
    frame = math.ceil(max(q, k) / frame_pixels(len(traces) > 1))
    n_images = len(traces) * len(b.layers) * (len(b.heads) + 1)
    fixed = long.fixed_bytes(len(b.layers), len(b.heads), len(traces), THUMB_SIZE)
    side = long.pool_side_for(q, k, n_images, budget_mb * MB, fixed, frame) or None
    return (0 if pool else POOL_ABOVE), side


def head_priority(scores) -> np.ndarray:
    """Importance of each head for the budget: ``max(previous-token, self, 1 − normalised
    entropy) × (1 − sink)``, from :class:`~attn_widget.analysis.HeadScores`; NaN counts as 0."""
    role = np.fmax(np.fmax(scores.previous_token_score, scores.self_score), 1 - scores.normalised_entropy)
    return np.nan_to_num(role * (1 - scores.sink_score), nan=0.0)


def _attention_page(widget, candidates: list[tuple[int, int]], budget_mb: float, title: str | None,
                    *, portable: bool) -> tuple[bytes, list[tuple[int, int]], list[tuple[int, int]], int,
                                                long.LongContent | None, tuple[str, ...],
                                                list[tuple[int, int]]]:
    """The page's bytes, the heads it holds, the heads it left out, the mantissa bits kept
    in the layer means (10: exact float16), for a long trace what it holds pooled, the
    weightings it can show, and the heads whose value-weighted views it holds (those come after
    every head's weights, when the budget has room)."""
    from ..figures import bokeh_source

    data = widget.view_data
    header = decode_payload(data.payload)[0]
    trace_id, n_sources = header["trace_id"], len(header["sources"])
    in_payload = {(s["source"], s["key"]) for s in header["sections"]}
    trace = widget.trace
    b = trace.block()
    budget = budget_mb * MB
    page = Page(title or _default_title(trace), portable=portable,
                 request_fields=_FETCH_FIELDS, echo_fields=("id",), unanswered={
                     "fetch": {"content": {"type": "error"}, "copy": ["trace_id", "source", "key"],
                               "message": f"{{key}} is not in this snapshot: it was left out to keep "
                               f"the file under {budget_mb:g} MB (the list is at the top of the page); "
                               "its layer mean and grid thumbnail are here"},
                     "*": {"content": {"type": "error"}, "copy": [],
                           "message": "{type} needs a live kernel; this is an offline snapshot"}})
    page.scripts = [page.add_bytes(bokeh_source())]
    state = widget.get_state()
    page.esm = page.add_text(str(state["_esm"]))
    state = {k: v for k, v in state.items() if k not in ("_esm", "_css", "_bokeh_js")}
    state["_blocks"] = [widget.block]  # the block shown: switching re-encodes in a kernel
    page.add_state(state, itemsize=lambda name: 2 if name == "_payload" else 1)

    def fetch(source: int, key: str) -> dict[str, Any]:
        return {"type": "fetch", "id": 0, "trace_id": trace_id, "source": source, "key": key}

    answered: dict[tuple[int, str], tuple[dict[str, Any], list]] = {}  # layer means, while rounding
    means_wanted: set[tuple[int, str]] = set()

    def add(source: int, key: str, mean_bits: int = 10) -> int:
        request = fetch(source, key)
        if (source, key) in answered:
            content, buffers = answered[source, key]
        else:
            content, buffers = data.answer(request)
            if (source, key) in means_wanted:
                answered[source, key] = (content, buffers)
        if content.get("type") != "data":
            raise RuntimeError(f"the widget could not answer {key!r}: {content.get('message')}")
        if mean_bits < 10:
            buffers = [_round_mantissa(buf, mean_bits) for buf in buffers]
        return page.add_reply(request, content, buffers, itemsize=1 if key.startswith("grid") else 2)

    def show_weightings(kinds: tuple[str, ...]) -> tuple[str, ...]:
        """The page offers ``kinds``, and opens on the widget's weighting if it is one of them."""
        page.state["_weightings"] = list(kinds)
        wanted = getattr(widget, "snapshot_weighting", "attention")
        page.state["weighting"] = wanted if wanted in kinds else "attention"
        return kinds

    for source in range(n_sources):
        if (source, "grid") not in in_payload:
            add(source, "grid")
    means = [(s, f"mean/{layer}") for s in range(n_sources) for layer in b.layers
             if (s, f"mean/{layer}") not in in_payload]
    page.header_html = _header_html(page.title, candidates, candidates, budget_mb, 10)
    base = len(page.render())
    side = int(header.get("pool_side") or 0)
    if base > budget:
        raise (ValueError if side else _ExactTooBig)(_too_small(base, b, budget_mb, "with no layer mean"))
    norm_lost = ("pooled" if side else None) if "norm" in data.weightings else "none"
    kinds = show_weightings(("attention",))
    if side:  # a long trace: pooled images and step rows (see .long)
        page.unanswered["fetch"]["message"] = long.unanswered_message(side, budget_mb)
        units = long.fill(trace, side=side, n_sources=n_sources, candidates=candidates,
                          in_payload=in_payload, add=add,
                          drop=lambda s, key: page.drop_last_reply(fetch(s, key)), size=base,
                          budget=budget, too_small=lambda size: _too_small(
                              size, b, budget_mb, f"the layer means pooled at 1 px = {side}×{side} tokens"))
        while True:
            content = long.content_of(units, side, candidates)
            page.header_html = _header_html(page.title, content.left_out, candidates, budget_mb, 10,
                                            long.header_lines(content, trace, budget_mb), norm_lost=norm_lost)
            out = page.render()
            if len(out) <= budget or len(units) <= 1:
                return out, list(content.heads), list(content.left_out), 10, content, kinds, []
            for s, key in reversed(units.pop().added):  # the running estimate was short
                page.drop_last_reply(fetch(s, key))
    # Layer means are always included. When at full float16 precision they would leave less
    # than a tenth of the budget for heads, their lowest mantissa bits are rounded away (the
    # page says so); heads themselves are never rounded.
    # Each mean is computed once (``answered``) and rounded again for each try; a try stops at
    # the first mean past its limit. The coarsest try goes first: when even it does not fit, no
    # finer one will, and the snapshot is pooled instead (save_snapshot).
    def try_means(mean_bits: int) -> tuple[int, bool]:
        limit = budget if mean_bits == _MIN_MEAN_BITS else 0.9 * budget
        size, added = base, []
        for s, key in means:
            size += add(s, key, mean_bits)
            added.append((s, key))
            if size > limit or (len(added) == 1 and (size - base) * len(means) > 2 * (limit - base)):
                break  # past the limit, or the first mean says all of them will be twice over it
        fits = size <= limit and len(added) == len(means)
        if not fits or mean_bits == _MIN_MEAN_BITS:
            for s, key in reversed(added):
                page.drop_last_reply(fetch(s, key))
        return size if fits else max(size, budget + 1), fits

    means_wanted.update(means)
    size, fits = try_means(_MIN_MEAN_BITS)
    if fits:
        for mean_bits in range(10, _MIN_MEAN_BITS - 1, -1):
            size, fits = try_means(mean_bits) if mean_bits > _MIN_MEAN_BITS else (size, True)
            if fits:
                break
        if mean_bits == _MIN_MEAN_BITS:  # the coarsest try was taken back: record it again
            size = base + sum(add(s, key, mean_bits) for s, key in means)
    else:
        mean_bits = _MIN_MEAN_BITS
    means_wanted.clear()
    answered.clear()
    if size > budget:
        raise _ExactTooBig(_too_small(size, b, budget_mb, f"with the means rounded to {mean_bits} bits"))
    def head_keys(layer: int, head: int, end: str = "") -> list[tuple[int, str]]:
        key = f"head/{layer}/{head}{end}"
        return [(s, key) for s in range(n_sources) if (s, key) not in in_payload]

    def fill(pairs, end: str, size: int) -> tuple[list[tuple[int, int]], int]:
        """Heads of ``pairs`` (of weighting suffix ``end``) added in order while they fit."""
        added: list[tuple[int, int]] = []
        for layer, head in pairs:
            missing = head_keys(layer, head, end)
            cost = sum(add(s, key) for s, key in missing)
            if size + cost > budget:
                for s, key in reversed(missing):
                    page.drop_last_reply(fetch(s, key))
                break
            size += cost
            added.append((layer, head))
        return added, size

    included, size = fill(candidates, "", size)
    weighted: list[tuple[int, int]] = []
    extra: list[tuple[int, str]] = []
    if norm_lost is None:
        # The value-weighted views come after the weights, within what is left: their grid and
        # layer means (rounded as the weights' are), then the included heads in the same order.
        extra = [(s, "grid/norm") for s in range(n_sources)] + [(s, f"{key}/norm") for s, key in means]
        cost = sum(add(s, key, 10 if key.startswith("grid") else mean_bits) for s, key in extra)
        if size + cost <= budget:
            kinds = show_weightings(data.weightings)
            weighted, size = fill(included, "/norm", size + cost)
        else:
            norm_lost = "budget"
            for s, key in reversed(extra):
                page.drop_last_reply(fetch(s, key))
            extra = []
    while True:
        left_out = candidates[len(included):]
        page.header_html = _header_html(page.title, left_out, candidates, budget_mb, mean_bits,
                                        norm_lost=norm_lost, weighted=(weighted, included)
                                        if len(kinds) > 1 else None)
        out = page.render()
        if len(out) <= budget:
            return out, included, left_out, mean_bits, None, kinds, weighted
        # The running estimate was short: give back what was added last (replies can only be
        # taken back in that order): a value-weighted head, else the value-weighted grid and
        # means, else a head.
        if weighted:
            missing = head_keys(*weighted.pop(), "/norm")
        elif extra:
            missing, extra, norm_lost = extra, [], "budget"
            kinds = show_weightings(("attention",))
        else:
            missing = head_keys(*included[-1]) if included else []
            if not missing:
                return out, included, left_out, mean_bits, None, kinds, weighted
            included.pop()
        for s, key in reversed(missing):
            page.drop_last_reply(fetch(s, key))


def _too_small(size: int, b, budget_mb: float, how: str) -> str:
    return (f"this snapshot needs {size / MB:.1f} MB before any head (BokehJS, the grid and the "
            f"layer means of {len(b.layers)} layers at {b.n_queries} tokens, {how}), over "
            f"budget_mb={budget_mb:g}; raise budget_mb, or keep fewer layers (layers=[...]) or fewer "
            "tokens")


def _round_mantissa(payload: bytes, bits: int) -> bytes:
    """The payload with its float16 values rounded to ``bits`` mantissa bits (of 10)."""
    buf = bytearray(payload)
    drop = 10 - bits
    for values in decode_payload(buf)[1].values():
        if values.dtype == np.float16:
            u = values.view(np.uint16)
            positive = u < 0x7C00  # finite, sign bit clear: attention weights and their means
            rounded = (u.astype(np.uint32) + (1 << (drop - 1))) >> drop << drop
            u[positive] = rounded[positive].astype(np.uint16)
    return bytes(buf)


def _header_html(title: str, left_out: Sequence[tuple[int, int]], candidates: Sequence[tuple[int, int]],
                 budget_mb: float, mean_bits: int, long_lines: Sequence[str] | None = None,
                 norm_lost: str | None = None, weighted: tuple[Sequence, Sequence] | None = None) -> str:
    """The page's own heading (the widget shows the run's details): its title, that it is an
    offline snapshot, and plainly which heads were left out (for a long trace, ``long_lines``:
    the resolution of each view and what needs the live widget) and, when the trace has value
    norms and the page does not carry them, that the value-weighted views are missing
    (``norm_lost``: ``"budget"`` or ``"pooled"``; ``"none"``: the trace has none), or which
    heads lack theirs (``weighted``: the heads with a value-weighted view, and those included)."""
    from .. import __version__

    lines = [f"<h1>{ascii_html(title)}</h1>",
             f"<p>Offline snapshot written by attn_widget {__version__}: every view below is in this "
             "file; no kernel and no network are needed.</p>"]
    if long_lines is not None:
        lines.extend(long_lines)
    elif left_out:
        kept = len(candidates) - len(left_out)
        lines.append(
            f'<p class="aw-snap-left-out"><b>{len(left_out)} of {len(candidates)} heads were left '
            f"out</b> to keep this file under {budget_mb:g} MB; {kept} heads are here in full, and "
            "the layer means and all-heads grid still cover every head. Left out: "
            f"{ascii_html(format_head_list(left_out))}.</p>")
    if norm_lost in ("budget", "pooled"):
        why = (f"they did not fit beside the attention weights' layer means and grid under {budget_mb:g} MB"
               if norm_lost == "budget"
               else "a long trace's pooled snapshot carries the attention weights only")
        lines.append('<p class="aw-snap-left-out aw-snap-no-norm"><b>Value-weighted views are not in this '
                     f"file</b> ({why}): the Weights menu offers the attention weights only; the live widget "
                     "or a larger budget_mb shows them.</p>")
    elif weighted is not None and len(weighted[0]) < len(weighted[1]):
        have, heads = weighted
        lines.append('<p class="aw-snap-left-out aw-snap-no-norm"><b>Value-weighted views of '
                     f"{len(heads) - len(have)} of the {len(heads)} heads here were left out</b> to stay "
                     f"under {budget_mb:g} MB (their layer means and grid are here): "
                     f"{ascii_html(format_head_list(list(heads[len(have):])))}.</p>")
    if mean_bits < 10:
        lines.append(f'<p class="aw-snap-left-out">To fit, the layer means keep {mean_bits} of the '
                     f"10 float16 mantissa bits (relative error at most {2.0 ** -(mean_bits + 1):.2%}); "
                     "every head in the file is exact float16.</p>")
    return '<header class="aw-snap-head">' + "\n".join(lines) + "</header>"


def _default_title(trace) -> str:
    """The model and the start of the prompt's words (:func:`tokens.prompt_words`)."""
    return printable(f"{trace.model_name}: \u201c{_short(prompt_words(trace), 80)}\u201d")


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"
