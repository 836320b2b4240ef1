"""The kernel's side of the widget protocol (``js/PROTOCOL.md``): what a view holds, and the
answers to the front end's requests.

:class:`ViewData` is what one widget view shows: the chosen attention block of its traces, the
layers and heads they share, the first payload and figure skeletons, and the all-heads grid
(prepared on a worker thread for long traces, sent in parts as it fills in).
:meth:`ViewData.answer` answers every ``fetch`` request. The live widget sends its answers over
the comm (the costly ones from worker threads, so the kernel stays free); a snapshot records
them into its page. Both go through this one module.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError, ThreadPoolExecutor
from typing import Any

import numpy as np

from . import encoding
from .analysis.compare import check_same_model
from .figures import bokeh_source, bokeh_version, figure_items, frame_pixels
from .selection import format_ranges
from .trace import AttentionTrace

Reply = tuple[dict[str, Any], list[bytes]]
"""A reply's JSON content and its binary buffers."""

METRIC_DESCRIPTIONS = {
    "normalised_entropy": "row entropy ÷ log(keys seen), averaged over queries: 0 = focused, 1 = uniform",
    "sink_score": "attention paid to position 0 (attention sink), averaged over queries",
    "previous_token_score": "attention paid to the previous token, averaged over queries",
    "self_score": "attention of each query to its own position, averaged",
}


_BACKGROUND: set[int] = set()  # native ids of the grid and prefetch threads


def _lower_priority() -> None:
    # Linux niceness is per thread: the grid yields the CPU to the kernel and the browser,
    # which are busy with the first paint when it starts.
    _BACKGROUND.add(threading.get_native_id())
    _set_background_policy(idle=False)


def _set_background_policy(*, idle: bool) -> None:
    """Background threads at nice 10, or, while a view waits for a fetch, SCHED_IDLE: they then
    run only on CPU time nothing else wants (measured at 8192 tokens: a pooled head took 1.2–1.4
    s next to a grid at nice 10, 0.3–0.4 s next to one at SCHED_IDLE, as with no grid at all)."""
    for tid in list(_BACKGROUND):
        try:
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, 10)
        except (AttributeError, OSError):  # not Linux, or the thread is gone
            pass


class BackgroundWorker:
    """One daemon thread at low priority running jobs in order (``submit`` as for an executor).
    A daemon: a ThreadPoolExecutor's threads hold the program's exit until their queue is
    done, and a grid at 8k tokens takes minutes."""

    def __init__(self, name: str):
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        return future

    def _run(self) -> None:
        _lower_priority()
        while True:
            future, fn, args = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # the future carries it to whoever waits
                future.set_exception(e)


GRID_WORKER = BackgroundWorker("attn_widget-grid")
"""The thread that prepares all-heads grids, one job at a time, in order."""
FETCH_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attn_widget-fetch")
"""The thread that answers the costly fetches a view is waiting for (a pooled head, a region),
so that neither the kernel nor a grid in preparation holds them up."""
PREFETCH_WORKER = BackgroundWorker("attn_widget-prefetch")
"""The thread that answers costly prefetches (neighbours of the view), yielding to the others."""
POOL_ABOVE = 8 * 2**20
"""Bytes of one head's float16 weights above which a view sends heads pooled (``pool/…``)."""
PARTIAL_EVERY = 1.0
"""Seconds between the parts of a grid sent while it fills in."""


class Foreground:
    """Counts the fetches views are waiting for (a pooled head, a region), from :meth:`begin`
    when one is asked to :meth:`end` when it is answered. Background work (prefetches, the
    grid) calls :meth:`wait` before each step, so it starts nothing new while a user waits: the
    two cores go to what will be painted next."""

    def __init__(self) -> None:
        self._busy = 0
        self._idle = threading.Condition()

    def begin(self) -> None:
        with self._idle:
            self._busy += 1
            if self._busy == 1:
                _set_background_policy(idle=True)  # what is already running steps aside too

    def end(self) -> None:
        with self._idle:
            self._busy -= 1
            if self._busy == 0:
                _set_background_policy(idle=False)
            self._idle.notify_all()

    def wait(self, timeout: float = 5.0) -> None:
        """Return once no fetch is waited for, or after ``timeout`` seconds (background work
        is slowed, never starved)."""
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, timeout)


FOREGROUND = Foreground()


class GridJob(Future):
    """The all-heads grid of one trace, prepared on :data:`GRID_WORKER`: thumbnails layer by
    layer, then the metric badges layer by layer. Its result is the complete ``grid`` reply
    buffer (``add_done_callback`` as for any future); :meth:`follow` gets the parts made on the
    way (at most one per :data:`PARTIAL_EVERY` seconds), so a view fills its grid in as heads
    finish."""

    def __init__(self, trace: AttentionTrace, *, source: int, trace_id: str):
        super().__init__()
        self._lock = threading.Lock()
        self._followers: list[Callable[[bytes], None]] = []
        self._latest: bytes | None = None
        GRID_WORKER.submit(self._run, trace, source, trace_id)

    def follow(self, on_part: Callable[[bytes], None]) -> None:
        """Call ``on_part(buffer)`` with the latest part now (if any) and with every later part,
        from the grid's thread, until the grid is complete."""
        with self._lock:
            if self._latest is not None and not self.done():
                on_part(self._latest)
            self._followers.append(on_part)

    def _publish(self, buf: bytes) -> None:
        with self._lock:
            self._latest = buf
            for fn in self._followers:
                fn(buf)

    def cancel(self) -> bool:
        """Stop the grid (its view was closed or shows other traces): not started, it never
        starts; started, it stops before its next head or layer. Followers are dropped, so
        nothing it was given to send with is held any longer."""
        with self._lock:
            self._followers.clear()
            self._latest = None
        return super().cancel()

    def _run(self, trace: AttentionTrace, source: int, trace_id: str) -> None:
        if self.cancelled():
            return
        try:
            final = grid_payload(trace, source=source, trace_id=trace_id, on_part=self._publish,
                                 stop=self.cancelled)
        except BaseException as e:  # the view that asks is told
            self._finish(exception=e)
        else:
            self._finish(result=final)

    def _finish(self, result: bytes | None = None, exception: BaseException | None = None) -> None:
        with self._lock:
            self._followers.clear()  # done: the grid's parts are sent no more
        try:
            if exception is not None:
                self.set_exception(exception)
            else:
                self.set_result(result)
        except InvalidStateError:  # cancelled meanwhile: nobody waits for it
            pass


@dataclasses.dataclass(frozen=True)
class ViewData:
    """What one view shows and sends: ``ViewData.of(trace, compare, block=...)`` picks the
    views, :meth:`encode` makes what is sent.

    Attributes
    ----------
    traces : the traces given (A, and B in the compare view).
    views : the shown block of each trace, narrowed (what is encoded and sent).
    block, blocks : the block shown, and the blocks every trace has (the attention menu).
    layers, heads : the captured model layers and heads the traces share.
    labels : the traces' labels (``"A"``, ``"B"``).
    trace_id : the id the front end echoes in its fetches; a new one for each encoding.
    payload, figures : the first payload (``_payload``) and Bokeh skeletons (``_figures``).
    grid : the all-heads grid replies being prepared, one per trace (empty when the payload
        is complete and holds the grid).
    """

    traces: tuple[AttentionTrace, ...]
    views: tuple[AttentionTrace, ...]
    block: str
    blocks: tuple[str, ...]
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    labels: tuple[str, ...]
    trace_id: str = ""
    payload: bytes = b""
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    grid: tuple[Future[bytes], ...] = ()

    @classmethod
    def of(cls, trace: AttentionTrace, compare: AttentionTrace | None = None, *,
           block: str | None = None, labels: Sequence[str] = ("A", "B")) -> ViewData:
        """The views of ``trace`` (and ``compare``) on ``block``, before any encoding.

        Raises ``TypeError`` for a non-trace, ``KeyError`` for a block the traces do not share
        and ``ValueError`` when they share no block or no layer and head.
        """
        traces = (trace,) if compare is None else (trace, compare)
        for i, t in enumerate(traces):
            if not isinstance(t, AttentionTrace):
                name = "trace" if i == 0 else "compare"
                raise TypeError(f"{name} must be an AttentionTrace; got {type(t).__name__}")
        if compare is not None:
            check_same_model(trace, compare)
        names = tuple(n for n in trace.blocks if all(n in t.blocks for t in traces))
        if not names:
            raise ValueError(f"the traces to compare share no attention block: A has {sorted(trace.blocks)}, "
                             f"B has {sorted(traces[-1].blocks)}")
        block = trace.default_block if block is None and trace.default_block in names else block
        block = names[0] if block is None else block
        if block not in names:
            raise KeyError(f"block must be one of {list(names)}; got {block!r}")
        views = tuple(t.narrow(block=block) for t in traces)
        shown = [t.block() for t in views]
        layers = tuple(x for x in shown[0].layers if all(x in b.layers for b in shown))
        heads = tuple(x for x in shown[0].heads if all(x in b.heads for b in shown))
        if not layers or not heads:
            raise ValueError("the traces to compare share no captured layer and head: A has layers "
                             f"{format_ranges(shown[0].layers)}, heads {format_ranges(shown[0].heads)}; "
                             f"B has layers {format_ranges(shown[1].layers)}, heads "
                             f"{format_ranges(shown[1].heads)}")
        return cls(traces, views, block, names, layers, heads, tuple(labels))

    @property
    def weightings(self) -> tuple[str, ...]:
        """The weightings every view can be shown with: ``("attention",)``, and ``"norm"``
        (value-weighted) when every trace's shown block keeps the norms of its values."""
        return min((encoding.weightings(t) for t in self.views), key=len)

    def encode(self, layer: int, head: int, *, send_all_below: int,
               pool_above: int | None = None, pool_side: int | None = None,
               weighting: str = "attention") -> ViewData:
        """These views with a new trace id, the first payload for ``layer``/``head`` and the
        figure skeletons; the grid starts on :data:`GRID_WORKER` when the payload lacks it.

        pool_above : when the payload is not complete and one head's float16 weights exceed
            this many bytes, heads are sent pooled to the heatmap's pixels (``pool/…`` keys,
            ``pool_side`` in the header) and zoomed regions at full resolution (``region/…``).
        pool_side : the pooled resolution to use then (tokens a side of each square), when not
            the heatmap's own pixels (a snapshot picks a coarser one to fit its budget).
            None: whole heads, however long the trace.
        weighting : the weighting of the first paint's sections (``"norm"``: value-weighted).
        """
        views = self.views
        complete = sum(encoding.all_bytes(t) for t in views) <= send_all_below
        trace_id = uuid.uuid4().hex[:12]
        metrics = [head_metrics(t) for t in views] if complete else None
        n_queries = max(t.block().n_queries for t in views)
        n_keys = max(t.block().n_keys for t in views)
        compact = len(views) > 1
        head_bytes = max(t.block().weights_nbytes // (len(t.layers) * len(t.heads)) for t in views)
        side = 0
        if not complete and pool_above is not None and head_bytes > pool_above:
            # One square per pixel of the heatmap's frame: the browser then draws the image as
            # it comes, and asks for full resolution only where the user zooms in.
            side = pool_side or math.ceil(max(n_queries, n_keys) / frame_pixels(compact))
        payload, _ = encoding.trace_payload(
            views, layer=layer, head=head, labels=self.labels, metrics=metrics,
            metric_descriptions=metric_descriptions(metrics), send_all_below=send_all_below,
            bokeh_version=bokeh_version(), trace_id=trace_id, pool_side=side, weighting=weighting)
        # Long traces: the grid (thumbnails + analysis metrics, ~0.7 s at 1024 tokens × 270
        # heads, minutes at 8k tokens) is prepared on a worker thread, so the kernel stays free
        # for the first paint and the next cell; the browser asks for it after its first paint.
        grid = () if complete else tuple(GridJob(t, source=i, trace_id=trace_id) for i, t in enumerate(views))
        figures = figure_items(n_queries, compact=compact, n_keys=n_keys)
        return dataclasses.replace(self, trace_id=trace_id, payload=payload, figures=figures, grid=grid)

    def cancel(self) -> None:
        """Stop the grids still being prepared for these views (they are closed or replaced):
        the worker thread drops them and holds none of their traces any longer."""
        for job in self.grid:
            job.cancel()

    def released(self) -> ViewData:
        """These views without what was made to send them (payload, figure skeletons, grids,
        stopped): what a closed widget keeps, since IPython's ``Out`` may hold it for the
        rest of the session."""
        self.cancel()
        return dataclasses.replace(self, payload=b"", figures={}, grid=())

    def grid_pending(self, request: Mapping[str, Any]) -> bool:
        """True when ``request`` asks for a grid still being prepared (answering would wait)."""
        source = request.get("source", 0)
        return (request.get("key") == "grid" and request.get("trace_id") == self.trace_id
                and isinstance(source, int) and 0 <= source < len(self.grid) and not self.grid[source].done())

    def costly(self, request: Mapping[str, Any]) -> bool:
        """True when answering ``request`` computes weights (a pooled image, a region, a head or
        mean of queries and keys, anything value-weighted): worth answering off the kernel's thread.
        Errors are cheap."""
        key, source = request.get("key"), request.get("source", 0)
        if not isinstance(key, str) or request.get("trace_id") != self.trace_id \
                or not isinstance(source, int) or not 0 <= source < len(self.views):
            return False
        kind = key.split("/", 1)[0]
        return kind in ("pool", "region") or encoding.split_weighting(key)[1] != "attention" or (
            kind in ("head", "mean") and self.views[source].block().form == "queries-keys")

    def follow_grid(self, request: Mapping[str, Any], send: Callable[[Reply], None]) -> Future[None]:
        """Answer a ``fetch`` of a grid still being prepared through ``send``, from the grid's
        thread: a ``data`` reply with ``"partial": true`` for each part made from now on, then
        the complete one (the reply :meth:`answer` gives). The future returned is done once
        that last reply is sent."""
        job = self.grid[request.get("source", 0)]
        base = {"type": "data", "id": request.get("id"), "trace_id": self.trace_id, "key": "grid",
                "source": request.get("source", 0)}
        sent: Future[None] = Future()

        def finish(_: Future) -> None:
            try:
                send(self.answer(request))
            finally:
                sent.set_result(None)

        job.follow(lambda buf: send(({**base, "partial": True}, [buf])))
        job.add_done_callback(finish)
        return sent

    def answer(self, request: Mapping[str, Any]) -> Reply:
        """The reply to a ``fetch`` request: a ``data`` reply with one payload buffer, or an
        ``error`` reply whose message is shown to the user. Waits for a grid in preparation."""
        rid, key, source = request.get("id"), request.get("key"), request.get("source", 0)
        # Errors echo the request's trace_id so that the view that asked shows them.
        base = {"id": rid, "trace_id": request.get("trace_id"), "key": key, "source": source}
        if not isinstance(source, int) or not 0 <= source < len(self.views):
            return {**base, "type": "error", "message": f"source must be 0..{len(self.views) - 1}; "
                    f"got {source!r}"}, []
        if request.get("trace_id") != self.trace_id:
            return {**base, "type": "error", "message": f"{key} was not sent: the trace shown was "
                    "replaced (re-run?); the new one is on its way"}, []
        trace = self.views[source]
        grid_weighting = encoding.split_weighting(key)[1] if isinstance(key, str) and \
            encoding.split_weighting(key)[0] == "grid" else None
        if grid_weighting not in (None, "attention"):
            try:
                trace.check_weighting(grid_weighting)
            except ValueError as e:
                return {**base, "type": "error", "message": f"cannot send {key!r}: {e}"}, []
        try:
            if key == "grid":
                buf = (self.grid[source].result() if self.grid
                       else grid_payload(trace, source=source, trace_id=self.trace_id))
            elif grid_weighting is not None:  # grid/norm: made when asked (on a worker thread)
                buf = grid_payload(trace, source=source, trace_id=self.trace_id, weighting=grid_weighting)
            else:
                buf = encoding.fetch_payload(trace, key, source=source, trace_id=self.trace_id)
        except encoding.FetchError as e:
            return {**base, "type": "error", "message": str(e)}, []
        except CancelledError:  # the view was closed, or shows other traces now
            return {**base, "type": "error", "message": f"{key} was not sent: the trace shown was "
                    "replaced (re-run?) or the widget closed"}, []
        except Exception as e:  # the grid's analysis failed on its thread: say so, keep working
            if grid_weighting is None:
                raise
            return {**base, "type": "error", "message": f"the all-heads grid could not be "
                    f"prepared: {type(e).__name__}: {e}"}, []
        return {**base, "type": "data", "trace_id": self.trace_id}, [buf]


def bokeh_reply(request: Mapping[str, Any]) -> Reply:
    """The reply to a ``bokeh`` request: the installed bokeh.min.js."""
    return {"type": "bokeh", "id": request.get("id"), "version": bokeh_version()}, [bokeh_source()]


def unknown_reply(request: Mapping[str, Any]) -> Reply:
    """The error reply to a request of a type the protocol does not have."""
    return {"type": "error", "id": request.get("id"), "message": f"unknown request type "
            f"{request.get('type')!r}; expected 'fetch', 'bokeh' or 'run'"}, []


def grid_payload(trace: AttentionTrace, *, source: int, trace_id: str,
                 on_part: Callable[[bytes], None] | None = None,
                 stop: Callable[[], bool] | None = None, weighting: str = "attention") -> bytes:
    """The ``data`` reply buffer for a ``grid`` fetch: thumbnails and analysis badges
    (``weighting="norm"``: of ``α_ij ‖f_h(x_j)‖``, for ``grid/norm``: ``thumbs/norm``,
    ``metric/<name>/norm``).

    Made step by step: the thumbnails of every head, then the badges of every layer (each
    layer's :func:`head_metrics`), each step after :data:`FOREGROUND` fetches are answered.
    With ``on_part``, a part is handed to it whenever
    :data:`PARTIAL_EVERY` seconds have passed since the last: a grid payload whose header says
    ``progress`` (``thumbs``: captured heads with thumbnails, layer-major; ``metrics``: layers
    with badges, the others NaN). ``stop``: asked before each step; when it returns True the
    grid is abandoned (``CancelledError``)."""
    b = trace.block()
    n_layers = len(b.layers)
    thumbs: np.ndarray | None = None
    metrics: dict[str, np.ndarray] = {}
    last = time.monotonic()

    def payload(progress: dict[str, int] | None) -> bytes:
        header = {"protocol": encoding.PROTOCOL_VERSION, "trace_id": trace_id,
                  "key": "grid" + encoding.suffix(weighting), "metrics": metric_descriptions([metrics])}
        if progress is not None:
            header["progress"] = progress
        return encoding.encode_payload(header, encoding.grid_sections(trace, metrics, source, thumbs=thumbs,
                                                                      weighting=weighting))

    def next_step() -> None:
        FOREGROUND.wait()
        if stop is not None and stop():
            raise CancelledError("the grid's view was closed or shows other traces")

    def part(n_thumbs: int, n_metrics: int) -> None:
        nonlocal last
        if on_part is not None and time.monotonic() - last >= PARTIAL_EVERY:
            on_part(payload({"thumbs": n_thumbs, "metrics": n_metrics}))
            last = time.monotonic()

    # Stored weights pool a layer at a time in one pass; queries and keys a head at a time
    # (~0.4 s each at 8k tokens), yielding to what a view waits for between heads.
    step = len(b.heads) if b.form == "weights" and weighting == "attention" else 1
    weighted = {} if weighting == "attention" else {"weighting": weighting}  # as the weights' grid was asked
    for li in range(n_layers):
        for h0 in range(0, len(b.heads), step):
            next_step()
            some = encoding.thumbnails(trace, layers=[li], heads=range(h0, min(h0 + step, len(b.heads))),
                                       **weighted)
            if thumbs is None:
                thumbs = np.zeros((n_layers, len(b.heads)) + some.shape[2:], np.uint8)
            thumbs[li, h0:h0 + step] = some[0]
            part(li * len(b.heads) + min(h0 + step, len(b.heads)), 0)
    for li, model_layer in enumerate(b.layers):
        next_step()
        for name, values in head_metrics(trace, layers=[model_layer], progress=False, **weighted).items():
            metrics.setdefault(name, np.full((n_layers, len(b.heads)), np.nan, np.float32))[li] = values[0]
        if li + 1 < n_layers:
            part(n_layers * len(b.heads), li + 1)
    return payload(None)


def head_metrics(trace: AttentionTrace, layers: Sequence[int] | None = None,
                 progress: bool | None = None, weighting: str = "attention") -> dict[str, np.ndarray]:
    """Per-head badge values ``{name: (n_layers, n_heads)}`` from :func:`analysis.head_scores`
    (``layers``: only these model layers; ``progress``: its progress bar, as it has it;
    ``weighting``: as head_scores takes it)."""
    from . import analysis

    scores = analysis.head_scores(trace, layers=None if layers is None else list(layers), progress=progress,
                                  weighting=weighting)
    return {name: np.asarray(getattr(scores, name), dtype=np.float32) for name in scores.METRICS}


def metric_descriptions(metrics: Sequence[Mapping[str, np.ndarray]] | None) -> dict[str, str]:
    """What each badge means, for the metrics given (in analysis's order)."""
    names = dict.fromkeys(n for m in metrics or [] for n in (m or {}))
    return {n: METRIC_DESCRIPTIONS.get(n, n.replace("_", " ")) for n in names}
