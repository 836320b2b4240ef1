"""The kernel's side of the widget protocol (``js/PROTOCOL.md``): what a view holds, and the
answers to the front end's requests.

:class:`ViewData` is what one widget view shows: the chosen attention block of its traces, the
layers and heads they share, the first payload and figure skeletons, and the all-heads grid
(prepared on a worker thread for long traces). :meth:`ViewData.answer` answers a ``fetch``
request. The live widget sends its answers over the comm; a snapshot records them into its
page. Both go through this one module.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from . import encoding
from .figures import bokeh_source, bokeh_version, figure_items
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


def _lower_priority() -> None:
    # Linux niceness is per thread: the grid yields the CPU to the kernel and the browser,
    # which are busy with the first paint when it starts.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


GRID_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attn_widget-grid",
                                 initializer=_lower_priority)
"""The thread that prepares all-heads grids, one job at a time, in order."""


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

    def encode(self, layer: int, head: int, *, send_all_below: int) -> ViewData:
        """These views with a new trace id, the first payload for ``layer``/``head`` and the
        figure skeletons; the grid starts on :data:`GRID_WORKER` when the payload lacks it."""
        views = self.views
        complete = sum(encoding.all_bytes(t) for t in views) <= send_all_below
        trace_id = uuid.uuid4().hex[:12]
        metrics = [head_metrics(t) for t in views] if complete else None
        payload, _ = encoding.trace_payload(
            views, layer=layer, head=head, labels=self.labels, metrics=metrics,
            metric_descriptions=metric_descriptions(metrics), send_all_below=send_all_below,
            bokeh_version=bokeh_version(), trace_id=trace_id)
        # Long traces: the grid (thumbnails + analysis metrics, ~0.7 s at 1024 tokens × 270
        # heads) is prepared on a worker thread, so the kernel stays free for the first paint
        # and the next cell; the browser asks for it after its first paint.
        grid = () if complete else tuple(
            GRID_WORKER.submit(grid_payload, t, source=i, trace_id=trace_id) for i, t in enumerate(views))
        n_queries = max(t.block().n_queries for t in views)
        n_keys = max(t.block().n_keys for t in views)
        figures = figure_items(n_queries, compact=len(views) > 1, n_keys=n_keys)
        return dataclasses.replace(self, trace_id=trace_id, payload=payload, figures=figures, grid=grid)

    def grid_pending(self, request: Mapping[str, Any]) -> bool:
        """True when ``request`` asks for a grid still being prepared (answering would wait)."""
        source = request.get("source", 0)
        return (request.get("key") == "grid" and request.get("trace_id") == self.trace_id
                and isinstance(source, int) and 0 <= source < len(self.grid) and not self.grid[source].done())

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
        try:
            if key == "grid":
                buf = (self.grid[source].result() if self.grid
                       else grid_payload(trace, source=source, trace_id=self.trace_id))
            else:
                buf = encoding.fetch_payload(trace, key, source=source, trace_id=self.trace_id)
        except encoding.FetchError as e:
            return {**base, "type": "error", "message": str(e)}, []
        return {**base, "type": "data", "trace_id": self.trace_id}, [buf]


def bokeh_reply(request: Mapping[str, Any]) -> Reply:
    """The reply to a ``bokeh`` request: the installed bokeh.min.js."""
    return {"type": "bokeh", "id": request.get("id"), "version": bokeh_version()}, [bokeh_source()]


def unknown_reply(request: Mapping[str, Any]) -> Reply:
    """The error reply to a request of a type the protocol does not have."""
    return {"type": "error", "id": request.get("id"), "message": f"unknown request type "
            f"{request.get('type')!r}; expected 'fetch', 'bokeh' or 'run'"}, []


def grid_payload(trace: AttentionTrace, *, source: int, trace_id: str) -> bytes:
    """The ``data`` reply buffer for a ``grid`` fetch: thumbnails and analysis badges."""
    metrics = head_metrics(trace)
    return encoding.fetch_payload(trace, "grid", source=source, trace_id=trace_id, metrics=metrics,
                                  metric_descriptions=metric_descriptions([metrics]))


def head_metrics(trace: AttentionTrace) -> dict[str, np.ndarray]:
    """Per-head badge values ``{name: (n_layers, n_heads)}`` from :func:`analysis.head_scores`."""
    from . import analysis

    scores = analysis.head_scores(trace)
    return {name: np.asarray(getattr(scores, name), dtype=np.float32) for name in scores.METRICS}


def metric_descriptions(metrics: Sequence[Mapping[str, np.ndarray]] | None) -> dict[str, str]:
    """What each badge means, for the metrics given (in analysis's order)."""
    names = dict.fromkeys(n for m in metrics or [] for n in (m or {}))
    return {n: METRIC_DESCRIPTIONS.get(n, n.replace("_", " ")) for n in names}
