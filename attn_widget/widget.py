"""AttentionWidget: the live anywidget view of an :class:`~attn_widget.trace.AttentionTrace`.

The widget declares traits, validates them and offers the public API. What it shows and the
answers to the front end's requests come from :class:`~attn_widget.protocol.ViewData` (bytes
from :mod:`attn_widget.encoding`, Bokeh skeletons from :mod:`attn_widget.figures`); the front
end (``js/`` built into ``attn_widget/static/widget.js``) draws. The traits and messages are
specified in ``js/PROTOCOL.md``.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from . import protocol
from .figures import bokeh_once
from .protocol import FETCH_WORKER, FOREGROUND, POOL_ABOVE, PREFETCH_WORKER, ViewData
from .selection import MEAN, check_count, format_ranges, is_int
from .trace import AttentionTrace
from .valuenorms import WEIGHTINGS

SCALES = ("auto", "linear", "log", "row")
THEMES = ("auto", "light", "dark")
_ESM = Path(__file__).parent / "static" / "widget.js"
if not _ESM.is_file():
    raise ImportError(
        f"attn_widget's front end is not built ({_ESM} is missing). Build it from the repository "
        "root with: cd js && npm ci && npm run build")

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
    scale : {"auto", "linear", "log", "row"}
        Colour scale: linear 0…1, log 1e-4…1, or each query row divided by its max
        (value-weighted: 0…the view's max, log max·1e-4…max). ``"auto"`` (the default): log from
        256 tokens on (a long prompt's weights spread thin, and a linear scale shows one faint
        diagonal), linear below; the menu says which ("auto: log").
    weighting : {"attention", "norm"}
        ``"norm"``: show value-weighted attention, ``α_ij ‖f_h(x_j)‖`` (Kobayashi et al. 2020,
        "Attention is Not Only a Weight"), in every view; needs traces captured with value norms
        (``capture(..., values="norms")``, ``trace.has_value_norms``).
    theme : {"auto", "light", "dark"}
    send_all_below : int
        Bytes under which every head is sent at once; above it, heads are fetched on demand.
    pool_above : int or None
        Bytes of one head's float16 weights above which heads are sent pooled to the heatmap's
        pixels (max of each square, so peaks survive), and a zoomed region at full resolution
        (8 MiB: from about 2900 tokens); None sends whole heads however long the trace.
    pool_side : int or None
        Tokens a side of each pooled square then (default: one square per pixel of the heatmap).
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
    layer, head, scale, weighting, selected_token, step, theme : synced with the view both ways;
        observe them with ``widget.observe(callback, names="layer")``.
    """

    # The bundle's text, not its path: anywidget watches a path's file for hot reloading and
    # connects every widget to that watcher with a closure over the widget, which then lives as
    # long as the process (issue 17: no closed widget was ever freed).
    _esm = _ESM.read_text(encoding="utf-8")
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    scale = traitlets.Enum(SCALES, "auto").tag(sync=True)
    weighting = traitlets.Unicode("attention").tag(sync=True)
    # The weightings the traces shown can be read with (the front end's weights menu).
    _weightings = traitlets.List(traitlets.Unicode(), ["attention"]).tag(sync=True)
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
                 layer: int | None = None, head: int | str | None = None, scale: str = "auto",
                 weighting: str = "attention", theme: str = "auto", labels: Sequence[str] = ("A", "B"),
                 send_all_below: int = 8 * 2**20, pool_above: int | None = POOL_ABOVE,
                 pool_side: int | None = None, run: Callable[[str], AttentionTrace] | None = None,
                 prompt: str = "",
                 block: str | None = None, push_bokeh: bool = True, **kwargs: Any):
        self._labels = tuple(labels)
        self._send_all_below = int(send_all_below)
        self._pool_above = None if pool_above is None else int(pool_above)
        self._pool_side = None if pool_side is None else check_count(pool_side, "pool_side (tokens)",
                                                                     minimum=1)
        self._run = run
        self._running: Future[None] | None = None  # the prompt-box run in progress
        self._later: list[Future[Any]] = []  # replies being prepared on worker threads
        self._data = self._views_of(trace, compare, block, self._labels)
        layer, head = self._first_view(layer, head)
        self._check_weighting(weighting, self._data)
        self._data = self._data.encode(layer, head, send_all_below=self._send_all_below,
                                       pool_above=self._pool_above, pool_side=self._pool_side,
                                       weighting=weighting)
        super().__init__(layer=layer, head=head, scale=scale, theme=theme, weighting=weighting,
                         _weightings=list(self._data.weightings),
                         step=0 if self.trace.n_generated else -1, prompt=prompt,
                         block=self._data.block, _blocks=list(self._data.blocks),
                         _live=run is not None, _payload=self._data.payload, _figures=self._data.figures,
                         _bokeh_js=bokeh_once() if push_bokeh else b"", **kwargs)
        self.on_msg(_on_message)
        self.observe(self._on_block, names="block")

    def _repr_mimebundle_(self, **kwargs: Any):
        # The live view, plus a small text/html note for copies that cannot draw it (nbconvert
        # without a widget manager); remembered for `nbconvert --to attn_html --execute`.
        from .nbexport import mimebundle

        return mimebundle(self, super()._repr_mimebundle_(**kwargs))

    def save_png(self, path: str | os.PathLike, **kwargs: Any):
        """Save what this view shows (layer, head or mean, step, scale, weighting) as a PNG,
        rendered with Pillow, no browser; ``kwargs`` as :func:`attn_widget.save_figure`
        (``view="grid"``/``"bars"``, ``size``, ``pixel_scale``). A compare view saves trace A."""
        from .export import save_widget_png

        return save_widget_png(self, path, **kwargs)

    def save_svg(self, path: str | os.PathLike, **kwargs: Any):
        """As :meth:`save_png`, as SVG (plain SVG text: cells as an embedded image, labels as text)."""
        from .export import save_widget_svg

        return save_widget_svg(self, path, **kwargs)

    # ----------------------------------------------------------------- public
    @property
    def trace(self) -> AttentionTrace:
        """The trace shown (A in the compare view)."""
        return self._data.traces[0]

    @property
    def traces(self) -> tuple[AttentionTrace, ...]:
        return self._data.traces

    @property
    def view_data(self) -> ViewData:
        """What the view shows and sends, and the answers to its requests (see
        :class:`~attn_widget.protocol.ViewData`); replaced whenever the view is re-encoded."""
        return self._data

    def set_trace(self, trace: AttentionTrace, compare: AttentionTrace | None = None, *,
                  prompt: str | None = None) -> None:
        """Show another trace in place (keeps layer/head/scale and the attention block when
        they still exist)."""
        keep = self.block if all(self.block in getattr(t, "blocks", ()) for t in (trace, compare)
                                 if t is not None) else None
        self._show(trace, compare, keep, new_run=True, prompt=prompt)

    def _on_block(self, change) -> None:
        """Show another attention block of the same traces (encoder, decoder, cross)."""
        if change["new"] != self._data.block:
            traces = self._data.traces
            self._show(traces[0], traces[1] if len(traces) > 1 else None, change["new"], new_run=False)

    def _show(self, trace: AttentionTrace, compare: AttentionTrace | None, block: str | None, *,
              new_run: bool, prompt: str | None = None) -> None:
        """Encode and send the traces' ``block`` in place; layer and head stay where they exist.
        ``new_run``: new traces (the generation step and the blocks offered start over)."""
        data = self._views_of(trace, compare, block, self._labels)
        keep_head = self.head if self.head == MEAN or self.head in data.heads else None
        layer, head = self._first_view(self.layer if self.layer in data.layers else None, keep_head, data)
        weighting = self.weighting if self.weighting in data.weightings else "attention"
        # One assignment: a fetch answered meanwhile sees the old views or the new, never half.
        old, self._data = self._data, data.encode(layer, head, send_all_below=self._send_all_below,
                                                  pool_above=self._pool_above, pool_side=self._pool_side,
                                                  weighting=weighting)
        data = self._data
        old.cancel()  # its grid is for traces no longer shown
        with self.hold_sync(), self.hold_trait_notifications():
            self.set_trait("layer", layer)
            self.set_trait("head", head)
            self._weightings = list(data.weightings)
            self.set_trait("weighting", weighting)
            self.selected_token = -1
            if new_run:
                self.step = 0 if self.trace.n_generated else -1
                self.set_trait("block", data.block)
                self._blocks = list(data.blocks)
            if prompt is not None:
                self.prompt = prompt
            self._figures = data.figures
            self._payload = data.payload

    def save_html(self, path, **kwargs):
        """Write this view as one self-contained offline HTML file (see :func:`save_snapshot`)."""
        from .snapshot import save_snapshot

        return save_snapshot(self, path, **kwargs)

    def static(self, **kwargs):
        """This view as an ``<iframe srcdoc>`` that stays interactive in an exported notebook."""
        from .snapshot import static

        return static(self, **kwargs)

    # ----------------------------------------------------------------- traces and views
    @staticmethod
    def _views_of(trace: AttentionTrace, compare: AttentionTrace | None, block: str | None,
                  labels: Sequence[str]) -> ViewData:
        try:
            return ViewData.of(trace, compare, block=block, labels=labels)
        except KeyError as e:
            raise traitlets.TraitError(e.args[0]) from None

    def _first_view(self, layer: int | None, head: int | str | None,
                    data: ViewData | None = None) -> tuple[int, int]:
        data = self._data if data is None else data
        layer = data.layers[0] if layer is None else layer
        head = MEAN if head == "mean" else (data.heads[0] if head is None else head)
        self._check("layer", layer, data.layers)
        self._check("head", head, (*data.heads, MEAN))
        return int(layer), int(head)

    @staticmethod
    def _check(name: str, value: Any, allowed: Sequence[int]) -> None:
        if not is_int(value) or value not in allowed:
            shown = format_ranges([a for a in allowed if a != MEAN])
            extra = f" or {MEAN} (mean of heads)" if MEAN in allowed else ""
            raise traitlets.TraitError(f"{name} must be one of the captured {name}s {shown}{extra}; "
                                       f"got {value!r}")

    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        self._check("layer", proposal.value, self._data.layers)
        return proposal.value

    @traitlets.validate("head")
    def _valid_head(self, proposal):
        self._check("head", proposal.value, (*self._data.heads, MEAN))
        return proposal.value

    @staticmethod
    def _check_weighting(value: Any, data: ViewData) -> None:
        if value not in WEIGHTINGS:
            raise traitlets.TraitError("weighting must be 'attention' (the attention weights) or 'norm' "
                                       "(value-weighted: each weight times the norm of what the attended "
                                       f"token's value contributes); got {value!r}")
        if value not in data.weightings:
            which = [label for label, t in zip(data.labels, data.views) if t.block().norms is None]
            whose = "this trace holds" if len(data.views) == 1 else f"trace {' and '.join(which)} holds"
            raise traitlets.TraitError(
                f"weighting='norm' needs the norms of the values, and {whose} none (captured with "
                "values=False, read from an older file, or built from weights alone); capture with "
                "aw.capture(..., values='norms') (or values='layer'), or keep weighting='attention'")

    @traitlets.validate("weighting")
    def _valid_weighting(self, proposal):
        self._check_weighting(proposal.value, self._data)
        return proposal.value

    @traitlets.validate("block")
    def _valid_block(self, proposal):
        if proposal.value not in self._data.blocks:
            raise traitlets.TraitError(f"block must be one of {list(self._data.blocks)}; "
                                       f"got {proposal.value!r}")
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
        n = len(self._data.views[0].tokens)  # the shown block's queries
        if not -1 <= proposal.value < n:
            raise traitlets.TraitError(f"selected_token must be -1 (none) or a position 0..{n - 1}; "
                                       f"got {proposal.value}")
        return proposal.value

    # ----------------------------------------------------------------- front end input
    def set_state(self, sync_data: dict[str, Any]) -> None:
        """Apply values from the front end, clamping bad ones instead of failing."""
        fixed, notes = {}, []
        private = sorted(n for n in sync_data if n.startswith("_"))
        if private:  # the payload, figures and BokehJS go from the kernel to the front end only
            notes.append(f"{', '.join(private)} can only be set by the kernel; ignored")
            sync_data = {n: v for n, v in sync_data.items() if not n.startswith("_")}
        for name, value in sync_data.items():
            ok = self._clamped(name, value)
            fixed[name] = ok
            if ok != value and name == "weighting" and value in WEIGHTINGS:
                notes.append(f"weighting {value!r} needs value norms, which the trace shown does not "
                             f"hold (capture with values='norms'); showing {ok!r}")
            elif ok != value:
                notes.append(f"{name} {value!r} is out of range; showing {ok!r}")
        super().set_state(fixed)
        if notes:
            self.send_state([n for n in fixed if fixed[n] != sync_data[n]] + private)
            self.send({"type": "notice", "message": "; ".join(notes)})

    def _clamped(self, name: str, value: Any) -> Any:
        def nearest(allowed: Sequence[int], current: int) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return current
            return min(allowed, key=lambda a: (abs(a - value), a))

        if name == "layer":
            return nearest(self._data.layers, self.layer)
        if name == "head":
            return MEAN if value == MEAN else nearest(self._data.heads, self.head)
        if name == "step":
            n = self.trace.n_generated
            return nearest(list(range(n)) if n else [-1], self.step)
        if name == "selected_token":
            return nearest(list(range(-1, len(self._data.views[0].tokens))), self.selected_token)
        if name == "scale":
            return value if value in SCALES else self.scale
        if name == "theme":
            return value if value in THEMES else self.theme
        if name == "weighting":
            return value if value in self._data.weightings else self.weighting
        if name == "block":
            return value if value in self._data.blocks else self.block
        return value

    def _reply(self, content: Mapping[str, Any]) -> protocol.Reply | None:
        """The answer to one custom message from the front end (PROTOCOL.md), or None when it
        will be sent later from another thread (the kernel is not held up meanwhile)."""
        kind = content.get("type")
        if kind == "fetch":
            data = self._data
            self._later = [f for f in self._later if not f.done()]
            if data.grid_pending(content):
                # Still being computed on the grid thread: its parts and then the whole grid are
                # sent from there; the kernel is not held up meanwhile.
                self._later.append(data.follow_grid(content, self._sender()))
                return None
            if data.costly(content):
                # Computed on a worker (a pooled head takes ~0.4 s at 8k tokens): the kernel
                # stays free, and what the view waits for never queues behind a prefetch or a
                # grid; those start nothing new until it is answered.
                # The jobs hold a weak sender, not the widget: a closed widget is freed even
                # while they wait, and their answers then go nowhere.
                # A value-weighted grid is analysis over every head (minutes at 8k tokens): in the
                # background, as prefetches are, never ahead of what a view waits for.
                if content.get("prefetch") or str(content.get("key")).startswith("grid"):
                    job = PREFETCH_WORKER.submit(_answer_in_background, self._sender(), data, content)
                else:
                    FOREGROUND.begin()
                    job = FETCH_WORKER.submit(_answer_in_foreground, self._sender(), data, content)
                    job.add_done_callback(_end_if_cancelled)  # closed before it started
                self._later.append(job)
                return None
            return data.answer(content)
        if kind == "bokeh":
            return protocol.bokeh_reply(content)
        if kind == "run":
            return self._run_reply(content)
        return protocol.unknown_reply(content)

    def _send_reply(self, content: Mapping[str, Any]) -> None:
        answer = self._reply(content)
        if answer is not None:
            self._send_answer(answer)

    def _send_answer(self, answer: protocol.Reply) -> None:
        reply, buffers = answer
        self.send(reply, buffers or None)

    def _sender(self) -> Callable[[protocol.Reply], None]:
        """``send(reply)`` for worker threads: holds the widget weakly and sends nothing once
        it is closed or freed."""
        ref = weakref.ref(self)

        def send(answer: protocol.Reply) -> None:
            widget = ref()
            if widget is not None and widget.comm is not None:
                widget._send_answer(answer)

        return send

    def close(self) -> None:
        """Close the widget: its views leave the page, and what it was preparing (the grid,
        pooled heads, regions) and its payload are dropped; the widget and its traces are then
        freed once nothing holds them (a prompt-box run in progress finishes, then shows
        nothing). A closed widget cannot be shown again."""
        super().close()  # first: what the cancelled jobs would still answer goes nowhere
        # (Also called when a widget whose construction failed is collected: it may lack these.)
        data = getattr(self, "_data", None)
        if data is not None:
            # A widget displayed as a cell's value stays in IPython's Out after it is closed:
            # it keeps its traces, not the bytes made to send them.
            self._data = data.released()
            self.set_trait("_payload", b"")
            self.set_trait("_figures", {})
        for job in getattr(self, "_later", ()):
            job.cancel()  # not started yet: never starts
        self._later = []

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
            if self.comm is None:  # closed while capturing: nothing to show it in
                return
            self.set_trace(trace, prompt=prompt)
        except Exception as e:  # shown to the user in the prompt box; the widget keeps working
            self.send({"type": "run", "id": rid, "state": "error", "message": f"{type(e).__name__}: {e}"})
        else:
            self.send({"type": "run", "id": rid, "state": "done"})

    def wait(self, timeout: float | None = None) -> AttentionWidget:
        """Block until a prompt-box run in progress and replies still being prepared (the
        all-heads grid, pooled heads, regions) are done and sent (for scripts and tests)."""
        for job in [self._running, *self._later]:
            if job is not None:
                job.result(timeout)
        return self


def _on_message(widget: AttentionWidget, content: Any, buffers: list) -> None:
    widget._send_reply(content if isinstance(content, Mapping) else {"type": None})


def _answer_in_foreground(send: Callable[[protocol.Reply], None], data: ViewData,
                          content: Mapping[str, Any]) -> None:
    """Answer a fetch the view waits for (counted in FOREGROUND since it was asked)."""
    try:
        send(data.answer(content))
    finally:
        FOREGROUND.end()


def _end_if_cancelled(job: Future[Any]) -> None:
    if job.cancelled():
        FOREGROUND.end()


def _answer_in_background(send: Callable[[protocol.Reply], None], data: ViewData,
                          content: Mapping[str, Any]) -> None:
    FOREGROUND.wait()
    send(data.answer(content))


def compare_widget(a: AttentionTrace, b: AttentionTrace, *, labels: Sequence[str] = ("A", "B"),
                   **kwargs: Any) -> AttentionWidget:
    """A, B and |A − B| for the same layer and head, side by side.

    The traces should come from the same model; their common captured layers and heads are
    shown. When their token counts differ, |A − B| covers the positions both have.
    """
    return AttentionWidget(a, compare=b, labels=labels, **kwargs)


_RUNNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attn_widget-run")
