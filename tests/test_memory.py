"""Long notebook sessions (issue 17): closed and replaced widgets, their traces and payloads are
freed. Checked by weak references after a collection, never by memory readings."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
from conftest import tiny_model
from test_widget import Recorder, random_trace

import attn_widget as aw
from attn_widget import protocol
from attn_widget.widget import AttentionWidget


def settle(timeout: float = 60) -> None:
    """Wait until every worker thread has run what was queued before now (each runs its jobs
    in order, so a marker job queued last is done after them), then collect."""
    for worker in (protocol.FETCH_WORKER, protocol.PREFETCH_WORKER, protocol.GRID_WORKER):
        worker.submit(lambda: None).result(timeout)
    gc.collect()


def alive(refs) -> int:
    return sum(r() is not None for r in refs)


def test_fifty_closed_widgets_are_all_freed_even_with_work_in_flight():
    refs, payloads = [], []
    for i in range(50):
        # Every other widget is long enough to have its grid prepared on the worker thread and
        # pooled heads answered there; some are closed before those replies are sent.
        long = i % 2 == 0
        w = AttentionWidget(random_trace(seed=i), send_all_below=0 if long else 8 * 2**20,
                            pool_above=0 if long else None, push_bokeh=False)
        if long:
            rec = Recorder(w)
            tid = w.view_data.trace_id
            rec.ask(wait=False, type="fetch", id="g", trace_id=tid, source=0, key="grid")
            rec.ask(wait=False, type="fetch", id="p", trace_id=tid, source=0, key="pool/1/1")
            rec.ask(wait=False, type="fetch", id="q", trace_id=tid, source=0, key="pool/2/0",
                    prefetch=True)
            del rec  # it holds the widget, as a user's variable would
        refs.append(weakref.ref(w))
        payloads.append(weakref.ref(w.view_data))
        w.close()
        del w
    settle()
    assert alive(refs) == 0, f"{alive(refs)} of 50 closed widgets are still alive"
    assert alive(payloads) == 0, "closed widgets' payloads are still held"


def test_a_closed_widget_sends_nothing_more_and_its_grid_stops(monkeypatch):
    release, started = threading.Event(), threading.Event()
    real = protocol.grid_payload

    def slow_grid(trace, **kwargs):
        started.set()
        assert release.wait(60)
        return real(trace, **kwargs)

    monkeypatch.setattr(protocol, "grid_payload", slow_grid)
    w = AttentionWidget(random_trace(), send_all_below=0, push_bokeh=False)
    rec = Recorder(w)
    sent = rec.sent
    rec.ask(wait=False, type="fetch", id="g", trace_id=w.view_data.trace_id, source=0, key="grid")
    job = w.view_data.grid[0]
    assert started.wait(60)
    ref = weakref.ref(w)
    w.close()
    del w, rec
    gc.collect()
    assert ref() is None, "a grid in preparation keeps its closed widget alive"
    assert job.cancelled()
    release.set()
    settle()
    assert sent == [], "a closed widget's worker threads sent replies"


def test_a_widget_replaced_in_place_frees_the_old_trace_and_payload():
    first = random_trace(seed=1)
    w = AttentionWidget(first, send_all_below=0, push_bokeh=False)
    old_trace, old_data = weakref.ref(first), weakref.ref(w.view_data)
    old_grid = w.view_data.grid
    del first
    w.set_trace(random_trace(seed=2, t=15, prompt_len=9))
    assert all(job.cancelled() or job.done() for job in old_grid)
    del old_grid
    settle()
    assert old_trace() is None and old_data() is None
    assert len(w.trace.tokens) == 15


@pytest.fixture
def session(word_tokenizer):
    return aw.AttentionSession(tiny_model("llama"), word_tokenizer, max_new_tokens=2, min_new_tokens=2)


def test_twenty_prompt_box_runs_keep_one_trace_alive(session):
    w = session.run("w1 w2 w3 w4", widget_options={"push_bokeh": False})
    traces = [weakref.ref(w.trace)]
    rec = Recorder(w)
    for i in range(20):
        replies = rec.ask(type="run", id=f"r{i}", prompt=f"w{i + 5} w{i + 6} w{i + 7}")
        assert [c["state"] for c, _ in replies] == ["running", "done"]
        traces.append(weakref.ref(w.trace))
    settle()
    assert alive(traces) == 1 and traces[-1]() is w.trace is session.trace
    ref = weakref.ref(w)
    w.close()
    del w, rec
    settle()
    assert ref() is None, "a closed session widget is still alive"


def test_a_closed_widget_still_referenced_keeps_its_traces_but_not_its_payload():
    # IPython's Out holds a widget displayed as a cell's value for the rest of the session.
    t = random_trace()
    w = AttentionWidget(t, push_bokeh=False)
    assert w._payload and w.view_data.payload and w._figures
    w.close()
    assert w._payload == b"" and w.view_data.payload == b"" and w._figures == {}
    assert w.trace is t and w.view_data.grid == ()
