"""AttentionWidget: the live anywidget view of an :class:`~attn_widget.trace.AttentionTrace`.

The widget declares traits and answers the front end's requests; the bytes come from
:mod:`attn_widget.encoding`, the Bokeh figure skeletons from :func:`figure_items`, and the
front end (``js/`` built into ``attn_widget/static/widget.js``) draws. The traits and
messages are specified in ``js/PROTOCOL.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

from . import encoding
from .trace import AttentionTrace, _ranges

MEAN = -1
"""``head`` value that shows the mean over the captured heads of the layer."""

SCALES = ("linear", "log", "row")
THEMES = ("auto", "light", "dark")
_ESM = Path(__file__).parent / "static" / "widget.js"
if not _ESM.is_file():
    raise ImportError(
        f"attn_widget's front end is not built ({_ESM} is missing). Build it from the repository "
        "root with: cd js && npm ci && npm run build")

METRIC_DESCRIPTIONS = {
    "normalised_entropy": "row entropy ÷ log(keys seen), averaged over queries: 0 = focused, 1 = uniform",
    "sink_score": "attention paid to position 0 (attention sink), averaged over queries",
    "previous_token_score": "attention paid to the previous token, averaged over queries",
    "self_score": "attention of each query to its own position, averaged",
}


class AttentionWidget(anywidget.AnyWidget):
    """Interactive heatmaps of a trace: layer/head sliders, token strip, all-heads grid,
    generation scrubber, and (with ``compare``) A, B and |A − B| side by side.

    Parameters
    ----------
    trace : AttentionTrace
    compare : AttentionTrace, optional
        A second trace of the same model: the view shows A, B and |A − B|.
    layer, head : int, optional
        Model layer and head shown first (``head=MEAN`` or ``"mean"``: mean of heads).
    scale : {"linear", "log", "row"}
        Colour scale: linear 0…1, log 1e-4…1, or each query row divided by its max.
    theme : {"auto", "light", "dark"}
    send_all_below : int
        Bytes under which every head is sent at once; above it, heads are fetched on demand.
    run : callable, optional
        ``run(prompt) -> AttentionTrace``: shows the prompt box and re-runs from it (used by
        :class:`~attn_widget.session.AttentionSession`).
    block : str, optional
        Attention block shown first (``"encoder"``, ``"decoder"``, ``"cross"`` for
        encoder-decoder traces); the view offers a menu of the trace's blocks.
    push_bokeh : bool
        Send BokehJS along if this is the process's first widget (saves the page a request);
        False for widgets that are never displayed.

    Attributes
    ----------
    layer, head, scale, selected_token, step, theme : synced with the view both ways;
        observe them with ``widget.observe(callback, names="layer")``.
    """

    _esm = _ESM
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    scale = traitlets.Enum(SCALES, "linear").tag(sync=True)
    selected_token = traitlets.Int(-1).tag(sync=True)
    step = traitlets.Int(-1).tag(sync=True)
    theme = traitlets.Enum(THEMES, "auto").tag(sync=True)
    prompt = traitlets.Unicode("").tag(sync=True)
    block = traitlets.Unicode("").tag(sync=True)
    _blocks = traitlets.List(traitlets.Unicode()).tag(sync=True)
    _live = traitlets.Bool(False).tag(sync=True)
    _payload = traitlets.Bytes(b"").tag(sync=True)
    _figures = traitlets.Dict().tag(sync=True)
    # BokehJS (bokeh.min.js) with the first widget of a kernel, so that a fresh page need not
    # ask for it (a round trip of ~0.1–0.15 s before the first paint); empty for later widgets,
    # whose page asks only if it lacks BokehJS (a reloaded page, a second tab).
    _bokeh_js = traitlets.Bytes(b"").tag(sync=True)

    def __init__(self, trace: AttentionTrace, *, compare: AttentionTrace | None = None,
                 layer: int | None = None, head: int | str | None = None, scale: str = "linear",
                 theme: str = "auto", labels: Sequence[str] = ("A", "B"),
                 send_all_below: int = 8 * 2**20,
                 run: Callable[[str], AttentionTrace] | None = None, prompt: str = "",
                 block: str | None = None, push_bokeh: bool = True, **kwargs: Any):
        self._labels = tuple(labels)
        self._send_all_below = int(send_all_below)
        self._run = run
        self._running: Future[None] | None = None  # the prompt-box run in progress
        self._later: list[Future[None]] = []  # replies to send once the grid is ready
        self._swap = threading.RLock()  # a fetch never sees half of a trace swap
        self._grid: list[Future[bytes]] = []
        self._set_traces(trace, compare, block)
        layer, head = self._first_view(layer, head)
        payload, figures = self._encode(layer, head)
        super().__init__(layer=layer, head=head, scale=scale, theme=theme,
                         step=0 if self.trace.n_generated else -1, prompt=prompt,
                         block=self._block, _blocks=self._block_names,
                         _live=run is not None, _payload=payload, _figures=figures,
                         _bokeh_js=_bokeh_once() if push_bokeh else b"", **kwargs)
        self.on_msg(_on_message)
        self.observe(self._on_block, names="block")

    # ----------------------------------------------------------------- public
    @property
    def trace(self) -> AttentionTrace:
        """The trace shown (A in the compare view)."""
        return self._traces[0]

    @property
    def traces(self) -> tuple[AttentionTrace, ...]:
        return self._traces

    def set_trace(self, trace: AttentionTrace, compare: AttentionTrace | None = None, *,
                  prompt: str | None = None) -> None:
        """Show another trace in place (keeps layer/head/scale and the attention block when
        they still exist)."""
        keep = self.block if all(self.block in getattr(t, "blocks", ()) for t in (trace, compare)
                                 if t is not None) else None
        self._show(trace, compare, keep, new_run=True, prompt=prompt)

    def _on_block(self, change) -> None:
        """Show another attention block of the same traces (encoder, decoder, cross)."""
        if change["new"] != self._block:
            self._show(self._traces[0], self._traces[1] if len(self._traces) > 1 else None,
                       change["new"], new_run=False)

    def _show(self, trace: AttentionTrace, compare: AttentionTrace | None, block: str | None, *,
              new_run: bool, prompt: str | None = None) -> None:
        """Encode and send the traces' ``block`` in place; layer and head stay where they exist.
        ``new_run``: new traces (the generation step and the blocks offered start over)."""
        with self._swap:
            self._set_traces(trace, compare, block)
            keep_head = self.head if self.head == MEAN or self.head in self._heads else None
            layer, head = self._first_view(self.layer if self.layer in self._layers else None, keep_head)
            payload, figures = self._encode(layer, head)
        with self.hold_sync(), self.hold_trait_notifications():
            self.set_trait("layer", layer)
            self.set_trait("head", head)
            self.selected_token = -1
            if new_run:
                self.step = 0 if self.trace.n_generated else -1
                self.set_trait("block", self._block)
                self._blocks = self._block_names
            if prompt is not None:
                self.prompt = prompt
            self._figures = figures
            self._payload = payload

    def save_html(self, path, **kwargs):
        """Write this view as one self-contained offline HTML file (see :func:`save_snapshot`)."""
        from .snapshot import save_snapshot

        return save_snapshot(self, path, **kwargs)

    def static(self, **kwargs):
        """This view as an ``<iframe srcdoc>`` that stays interactive in an exported notebook."""
        from .snapshot import static

        return static(self, **kwargs)

    # ----------------------------------------------------------------- traces and views
    def _set_traces(self, trace: AttentionTrace, compare: AttentionTrace | None,
                    block: str | None = None) -> None:
        traces = (trace,) if compare is None else (trace, compare)
        for i, t in enumerate(traces):
            if not isinstance(t, AttentionTrace):
                name = "trace" if i == 0 else "compare"
                raise TypeError(f"{name} must be an AttentionTrace; got {type(t).__name__}")
        names = [n for n in trace.blocks if all(n in t.blocks for t in traces)]
        if not names:
            raise ValueError(f"the traces to compare share no attention block: A has {sorted(trace.blocks)}, "
                             f"B has {sorted(traces[-1].blocks)}")
        block = trace.default_block if block is None and trace.default_block in names else block
        block = names[0] if block is None else block
        if block not in names:
            raise traitlets.TraitError(f"block must be one of {names}; got {block!r}")
        views = tuple(_block_view(t, block) for t in traces)
        blocks = [t.block() for t in views]
        self._layers = [x for x in blocks[0].layers if all(x in b.layers for b in blocks)]
        self._heads = [x for x in blocks[0].heads if all(x in b.heads for b in blocks)]
        if not self._layers or not self._heads:
            raise ValueError("the traces to compare share no captured layer and head: A has layers "
                             f"{_ranges(blocks[0].layers)}, heads {_ranges(blocks[0].heads)}; B has "
                             f"layers {_ranges(blocks[1].layers)}, heads {_ranges(blocks[1].heads)}")
        self._traces = traces
        self._views = views  # what is encoded and sent: the chosen block of each trace
        self._block, self._block_names = block, names

    def _first_view(self, layer: int | None, head: int | str | None) -> tuple[int, int]:
        layer = self._layers[0] if layer is None else layer
        head = MEAN if head == "mean" else (self._heads[0] if head is None else head)
        self._check("layer", layer, self._layers)
        self._check("head", head, self._heads + [MEAN])
        return int(layer), int(head)

    def _encode(self, layer: int, head: int) -> tuple[bytes, dict[str, Any]]:
        views = self._views
        complete = sum(encoding.all_bytes(t) for t in views) <= self._send_all_below
        trace_id = uuid.uuid4().hex[:12]
        metrics = [head_metrics(t) for t in views] if complete else None
        payload, _ = encoding.trace_payload(
            views, layer=layer, head=head, labels=self._labels, metrics=metrics,
            metric_descriptions=_descriptions(metrics), send_all_below=self._send_all_below,
            bokeh_version=_bokeh_version(), trace_id=trace_id)
        self._trace_id = trace_id
        # Long traces: the grid (thumbnails + analysis metrics, ~0.7 s at 1024 tokens × 270
        # heads) is prepared on a worker thread, so the kernel stays free for the first paint
        # and the next cell; the browser asks for it after its first paint.
        self._grid = [] if complete else [
            _WORKER.submit(grid_payload, t, source=i, trace_id=trace_id)
            for i, t in enumerate(views)]
        n_queries = max(t.block().n_queries for t in views)
        n_keys = max(t.block().n_keys for t in views)
        return payload, figure_items(n_queries, compact=len(views) > 1, n_keys=n_keys)

    @staticmethod
    def _check(name: str, value: Any, allowed: Sequence[int]) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in allowed:
            shown = _ranges([a for a in allowed if a != MEAN])
            extra = f" or {MEAN} (mean of heads)" if MEAN in allowed else ""
            raise traitlets.TraitError(f"{name} must be one of the captured {name}s {shown}{extra}; "
                                       f"got {value!r}")

    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        self._check("layer", proposal.value, self._layers)
        return proposal.value

    @traitlets.validate("head")
    def _valid_head(self, proposal):
        self._check("head", proposal.value, self._heads + [MEAN])
        return proposal.value

    @traitlets.validate("block")
    def _valid_block(self, proposal):
        if proposal.value not in self._block_names:
            raise traitlets.TraitError(f"block must be one of {self._block_names}; got {proposal.value!r}")
        return proposal.value

    @traitlets.validate("step")
    def _valid_step(self, proposal):
        n = self.trace.n_generated
        allowed = range(n) if n else range(-1, 0)
        if proposal.value not in allowed:
            raise traitlets.TraitError(
                f"step must be between 0 and {n - 1} (the generated tokens); got {proposal.value}"
                if n else f"step must be -1: this trace has no generated tokens; got {proposal.value}")
        return proposal.value

    @traitlets.validate("selected_token")
    def _valid_selected_token(self, proposal):
        n = len(self._views[0].tokens)  # the shown block's queries
        if not -1 <= proposal.value < n:
            raise traitlets.TraitError(f"selected_token must be -1 (none) or a position 0..{n - 1}; "
                                       f"got {proposal.value}")
        return proposal.value

    # ----------------------------------------------------------------- front end input
    def set_state(self, sync_data: dict[str, Any]) -> None:
        """Apply values from the front end, clamping bad ones instead of failing."""
        fixed, notes = {}, []
        for name, value in sync_data.items():
            ok = self._clamped(name, value)
            fixed[name] = ok
            if ok != value:
                notes.append(f"{name} {value!r} is out of range; showing {ok!r}")
        super().set_state(fixed)
        if notes:
            self.send_state([n for n in fixed if fixed[n] != sync_data[n]])
            self.send({"type": "notice", "message": "; ".join(notes)})

    def _clamped(self, name: str, value: Any) -> Any:
        def nearest(allowed: Sequence[int], current: int) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return current
            return min(allowed, key=lambda a: (abs(a - value), a))

        if name == "layer":
            return nearest(self._layers, self.layer)
        if name == "head":
            return MEAN if value == MEAN else nearest(self._heads, self.head)
        if name == "step":
            n = self.trace.n_generated
            return nearest(list(range(n)) if n else [-1], self.step)
        if name == "selected_token":
            return nearest(list(range(-1, len(self._views[0].tokens))), self.selected_token)
        if name == "scale":
            return value if value in SCALES else self.scale
        if name == "theme":
            return value if value in THEMES else self.theme
        if name == "block":
            return value if value in self._block_names else self.block
        return value

    def _reply(self, content: Mapping[str, Any]) -> tuple[dict[str, Any], list[bytes]] | None:
        """The answer to one custom message from the front end (PROTOCOL.md), or None when it
        will be sent later from another thread (the kernel is not held up meanwhile)."""
        kind, rid = content.get("type"), content.get("id")
        if kind == "fetch":
            grid = self._grid
            source = content.get("source", 0)
            if (content.get("key") == "grid" and content.get("trace_id") == self._trace_id
                    and isinstance(source, int) and 0 <= source < len(grid) and not grid[source].done()):
                # Still being computed on the grid thread: answered from there once it is done
                # (that thread runs one job at a time, in order).
                self._later = [f for f in self._later if not f.done()]
                self._later.append(_WORKER.submit(self._send_reply, content))
                return None
            return self._fetch_reply(content)
        if kind == "bokeh":
            return {"type": "bokeh", "id": rid, "version": _bokeh_version()}, [bokeh_source()]
        if kind == "run":
            return self._run_reply(content)
        return {"type": "error", "id": rid, "message": f"unknown request type {kind!r}; expected "
                "'fetch', 'bokeh' or 'run'"}, []

    def _fetch_reply(self, content: Mapping[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        rid, key, source = content.get("id"), content.get("key"), content.get("source", 0)
        # Errors echo the request's trace_id so that the view that asked shows them.
        base = {"id": rid, "trace_id": content.get("trace_id"), "key": key, "source": source}
        if not isinstance(source, int) or not 0 <= source < len(self._traces):
            return {**base, "type": "error", "message": f"source must be 0..{len(self._traces) - 1}; "
                    f"got {source!r}"}, []
        with self._swap:
            trace, trace_id, grid = self._views[source], self._trace_id, self._grid
        if content.get("trace_id") != trace_id:
            return {**base, "type": "error", "message": f"{key} was not sent: the trace shown was "
                    "replaced (re-run?); the new one is on its way"}, []
        try:
            if key == "grid":
                buf = (grid[source].result() if grid
                       else grid_payload(trace, source=source, trace_id=trace_id))
            else:
                buf = encoding.fetch_payload(trace, key, source=source, trace_id=trace_id)
        except encoding.FetchError as e:
            return {**base, "type": "error", "message": str(e)}, []
        return {**base, "type": "data", "trace_id": trace_id}, [buf]

    def _send_reply(self, content: Mapping[str, Any]) -> None:
        answer = self._reply(content)
        if answer is not None:
            reply, buffers = answer
            self.send(reply, buffers or None)

    def _run_reply(self, content: Mapping[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        rid, prompt = content.get("id"), content.get("prompt")
        if self._run is None:
            return {"type": "run", "id": rid, "state": "error",
                    "message": "this widget has no live session: re-running a prompt needs "
                    "AttentionSession(model, tokenizer).run(...)"}, []
        if not isinstance(prompt, str) or not prompt.strip():
            return {"type": "run", "id": rid, "state": "error", "message": "the prompt is empty"}, []
        if self._running is not None and not self._running.done():
            return {"type": "run", "id": rid, "state": "error",
                    "message": "a run is already in progress; wait for it to finish"}, []
        self.send({"type": "run", "id": rid, "state": "running"})
        # Captured on a thread: the kernel stays free for the sliders' fetches and for cells
        # (a cell that captures with the same model waits for this run: capture locks the model).
        self._running = _RUNNER.submit(self._run_in_background, rid, prompt)
        return None

    def _run_in_background(self, rid: Any, prompt: str) -> None:
        try:
            trace = self._run(prompt)
            self.set_trace(trace, prompt=prompt)
        except Exception as e:  # shown to the user in the prompt box; the widget keeps working
            self.send({"type": "run", "id": rid, "state": "error", "message": f"{type(e).__name__}: {e}"})
        else:
            self.send({"type": "run", "id": rid, "state": "done"})

    def wait(self, timeout: float | None = None) -> AttentionWidget:
        """Block until a prompt-box run in progress and replies still being prepared (the
        all-heads grid) are done and sent (for scripts and tests)."""
        for job in [self._running, *self._later]:
            if job is not None:
                job.result(timeout)
        return self


def _block_view(trace: AttentionTrace, name: str) -> AttentionTrace:
    """``trace`` with only block ``name``, on that block's query tokens: what the widget encodes.

    The encoder block of an encoder-decoder trace runs over ``source_tokens``; its view has them
    as tokens (and one ``input`` span). Cross-attention keeps the decoder tokens as queries; its
    keys are ``source_tokens`` (sent as ``key_tokens``). Shares the arrays: no copy.
    """
    if list(trace.blocks) == [name]:
        return trace
    b = trace.blocks[name]
    if b.queries == "source_tokens":
        tokens, spans = trace.source_tokens, {"input": (0, len(trace.source_tokens))}
        b = dataclasses.replace(b, queries="tokens", keys="tokens" if b.keys == b.queries else b.keys)
    else:
        tokens, spans = trace.tokens, dict(trace.spans)
    return AttentionTrace(tokens, {name: b}, spans, trace.model, trace.options,
                          source_tokens=trace.source_tokens)


def _on_message(widget: AttentionWidget, content: Any, buffers: list) -> None:
    widget._send_reply(content if isinstance(content, Mapping) else {"type": None})


def compare_widget(a: AttentionTrace, b: AttentionTrace, *, labels: Sequence[str] = ("A", "B"),
                   **kwargs: Any) -> AttentionWidget:
    """A, B and |A − B| for the same layer and head, side by side.

    The traces should come from the same model; their common captured layers and heads are
    shown. When their token counts differ, |A − B| covers the positions both have.
    """
    return AttentionWidget(a, compare=b, labels=labels, **kwargs)


# --------------------------------------------------------------------- grid metrics
def _lower_priority() -> None:
    # Linux niceness is per thread: the grid yields the CPU to the kernel and the browser,
    # which are busy with the first paint when it starts.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attn_widget-grid",
                             initializer=_lower_priority)
_RUNNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attn_widget-run")


def grid_payload(trace: AttentionTrace, *, source: int, trace_id: str) -> bytes:
    """The ``data`` reply buffer for a ``grid`` fetch: thumbnails and analysis badges."""
    metrics = head_metrics(trace)
    return encoding.fetch_payload(trace, "grid", source=source, trace_id=trace_id, metrics=metrics,
                                  metric_descriptions=_descriptions([metrics]))


def head_metrics(trace: AttentionTrace) -> dict[str, np.ndarray]:
    """Per-head badge values ``{name: (n_layers, n_heads)}`` from :func:`analysis.head_scores`."""
    from . import analysis

    scores = analysis.head_scores(trace)
    return {name: np.asarray(getattr(scores, name), dtype=np.float32) for name in scores.METRICS}


def _descriptions(metrics: Sequence[Mapping[str, np.ndarray]] | None) -> dict[str, str]:
    names = dict.fromkeys(n for m in metrics or [] for n in (m or {}))  # analysis's order
    return {n: METRIC_DESCRIPTIONS.get(n, n.replace("_", " ")) for n in names}


# --------------------------------------------------------------------- Bokeh
# Neither needs ``import bokeh`` (≈0.3 s) and the figure skeletons are cached on disk, so the
# first widget of a fresh kernel does not pay for importing Bokeh's Python models (1–2 s).
@lru_cache(maxsize=1)
def _bokeh_version() -> str:
    from importlib.metadata import version

    return version("bokeh")


def _bokeh_dir() -> Path:
    from importlib.util import find_spec

    spec = find_spec("bokeh")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("bokeh is not installed: pip install bokeh")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def bokeh_source() -> bytes:
    """The installed bokeh's own ``bokeh.min.js`` (so the JS and Python versions match)."""
    return (_bokeh_dir() / "server" / "static" / "js" / "bokeh.min.js").read_bytes()


_BOKEH_PUSHED = threading.Event()


def _bokeh_once() -> bytes:
    """BokehJS for the first widget made in this process, nothing for the others."""
    if _BOKEH_PUSHED.is_set():
        return b""
    _BOKEH_PUSHED.set()
    return bokeh_source()


def figure_items(n_tokens: int, *, compact: bool = False, n_keys: int | None = None) -> dict[str, Any]:
    """Bokeh skeletons (``json_item``) the front end embeds and fills with pixels.

    ``heatmap``: an image_rgba glyph over queries (y, downwards) × keys (x), a colour bar,
    row/column highlight boxes; ``bars``: the chosen output token's attention over earlier
    tokens. Models the front end drives carry names (``heat_source``, ``x_ticker``…).
    Each call returns a fresh copy, sized for ``n_tokens`` queries and ``n_keys`` keys (default:
    as many as queries).
    """
    q = max(int(n_tokens), 1)
    k = q if n_keys is None else max(int(n_keys), 1)
    items = json.loads(_skeleton_json(bool(compact)))
    ranges = {"x_range": (0, k), "y_range": (q, 0), "bars_x_range": (0, k)}
    for model in _named_models(items):
        name = model["attributes"].get("name")
        if name in ranges:
            start, end = ranges[name]
            model["attributes"].update(start=start, end=end, bounds=[min(start, end), max(start, end)])
    return items


def _named_models(node: Any):
    """Every serialised Bokeh model (``{"type": "object", "attributes": {"name": ...}}``) in a
    json_item tree."""
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "object" and isinstance(node.get("attributes"), dict) \
                    and "name" in node["attributes"]:
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


@lru_cache(maxsize=2)
def _skeleton_json(compact: bool) -> str:
    """The skeletons as JSON text, from the disk cache when this bokeh and this file made them.

    Building them imports bokeh.models and bokeh.embed (1–2 s in a fresh kernel); the cache file
    is keyed by the bokeh version and a digest of this module's source, so an upgrade or an edit
    here rebuilds it. An unwritable cache folder only costs the rebuild.
    """
    import hashlib

    from .models import cache_dir

    digest = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:12]
    kind = "compact" if compact else "full"
    path = cache_dir() / "figures" / f"bokeh-{_bokeh_version()}-{digest}-{kind}.json"
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)  # a damaged file is rebuilt
        return text
    except (OSError, ValueError):
        pass
    text = _build_skeleton_json(compact)
    try:
        from .trace import write_atomically

        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda f: f.write(text.encode("utf-8")), "figure cache")
    except OSError:
        pass
    return text


def _build_skeleton_json(compact: bool) -> str:
    # Every embed makes its own Bokeh document, so one skeleton (same model ids) can serve
    # any number of widgets and views. Ranges are sized per trace by figure_items.
    t = 1
    from bokeh.embed import json_item
    from bokeh.models import (
        BoxAnnotation,
        BoxZoomTool,
        ColorBar,
        ColumnDataSource,
        FixedTicker,
        GlyphRenderer,
        ImageRGBA,
        LinearAxis,
        LinearColorMapper,
        LogColorMapper,
        PanTool,
        Plot,
        Range1d,
        ResetTool,
        SaveTool,
        VBar,
        WheelZoomTool,
    )
    from bokeh.palettes import Viridis256

    size = 260 if compact else 540  # frame pixels: ~52 token labels fit at 10 px each
    heat = Plot(name="heatmap", width=size + 80, height=size + 40, min_border=6,
                x_range=Range1d(0, t, bounds=(0, t), name="x_range"),
                y_range=Range1d(t, 0, bounds=(0, t), name="y_range"),
                # No toolbar for the first paint (its buttons cost ~0.1 s of the embed); the front
                # end adds it on the right once the heatmap is on screen (TOOLBAR in index.js).
                toolbar_location=None, output_backend="canvas")
    source = ColumnDataSource({"image": [np.zeros((1, 1), np.uint32)], "x": [0], "y": [0],
                               "dw": [t], "dh": [t]}, name="heat_source")
    # The image and the highlight boxes live on Bokeh's "overlay" canvas layer: a new image then
    # repaints that layer alone, not the axes, token labels and colour bar under it (the front
    # end clips the image to the frame, as Bokeh does for the lower levels).
    heat.renderers.append(GlyphRenderer(data_source=source, name="heat_image", level="overlay",
                                        glyph=ImageRGBA(image="image", x="x", y="y", dw="dw", dh="dh")))
    for place, name, label in (("above", "x", "key (attended to)"), ("left", "y", "query (attending)")):
        axis = LinearAxis(ticker=FixedTicker(ticks=[], name=f"{name}_ticker"), axis_label=label,
                          name=f"{name}_axis", major_label_text_font_size="10px",
                          axis_label_text_font_size="11px", axis_label_text_font_style="normal")
        if name == "x":
            axis.major_label_orientation = math.pi / 2
        heat.add_layout(axis, place)
    mapper = dict(palette=Viridis256, nan_color=(0, 0, 0, 0))
    linear = LinearColorMapper(low=0, high=1, name="linear_mapper", **mapper)
    log = LogColorMapper(low=1e-4, high=1, name="log_mapper", **mapper)
    heat.add_layout(ColorBar(color_mapper=linear, name="colour_bar", width=10,
                             major_label_text_font_size="10px", title_text_font_size="10px",
                             title_text_font_style="normal", padding=4), "right")
    box = dict(fill_alpha=0.12, line_alpha=0.9, line_width=1, visible=False, level="overlay")
    for name, colour in (("hover_row", "#ffffff"), ("hover_col", "#ffffff"),
                         ("pin_row", "#ff4f9a"), ("pin_col", "#ff4f9a"), ("step_row", "#ffb000")):
        heat.add_layout(BoxAnnotation(name=name, fill_color=colour, line_color=colour, **box))
    heat.add_tools(PanTool(), WheelZoomTool(), BoxZoomTool(), ResetTool(), SaveTool())
    heat.toolbar.active_scroll = heat.tools[1]
    heat.tags = [log]  # keeps the log mapper in the document, for the front end to swap in

    bars = Plot(name="bars", width=3 * (size + 80) + 16 if compact else size + 330, height=190,
                min_border=6, x_range=Range1d(0, t, bounds=(0, t), name="bars_x_range"),
                y_range=Range1d(0, 1.02, name="bars_y_range"), toolbar_location=None)
    bar_source = ColumnDataSource({"x": [], "top": [], "color": []}, name="bars_source")
    bars.renderers.append(GlyphRenderer(data_source=bar_source, glyph=VBar(
        x="x", top="top", width=0.8, fill_color="color", line_color=None)))
    bars.add_layout(LinearAxis(ticker=FixedTicker(ticks=[], name="bars_x_ticker"), name="bars_x_axis",
                               major_label_orientation=math.pi / 2, major_label_text_font_size="10px"),
                    "below")
    bars.add_layout(LinearAxis(name="bars_y_axis", axis_label="weight",
                               major_label_text_font_size="10px", axis_label_text_font_size="11px",
                               axis_label_text_font_style="normal"), "left")
    return json.dumps({"heatmap": json_item(heat), "bars": json_item(bars)})
