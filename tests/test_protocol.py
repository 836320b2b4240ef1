"""ViewData: what a view shows, and the answers to the front end's requests, without a widget."""

from __future__ import annotations

import re

import numpy as np
import pytest

from attn_widget import encoding
from attn_widget.protocol import ViewData, bokeh_reply, unknown_reply
from attn_widget.trace import AttentionTrace


def _trace(n_layers=2, n_heads=3, t=7, seed=0) -> AttentionTrace:
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((n_layers, n_heads, t, t))) + np.tril(np.ones((t, t)))
    a /= a.sum(-1, keepdims=True)
    return AttentionTrace.from_dense(a, [f"w{i}" for i in range(t)], prompt_len=5)


def test_a_view_answers_a_head_fetch_with_the_heads_float16_values():
    trace = _trace()
    data = ViewData.of(trace).encode(1, 2, send_all_below=0)
    reply, [buf] = data.answer({"type": "fetch", "id": "f1", "trace_id": data.trace_id, "source": 0,
                                "key": "head/0/1"})
    assert reply == {"type": "data", "id": "f1", "trace_id": data.trace_id, "key": "head/0/1", "source": 0}
    _, arrays = encoding.decode_payload(buf)
    np.testing.assert_array_equal(arrays[(0, "head/0/1")], trace.block().data[0, 1])


def test_the_grid_is_prepared_once_and_answered_from_the_worker():
    data = ViewData.of(_trace()).encode(0, 0, send_all_below=0)
    assert len(data.grid) == 1
    reply, [buf] = data.answer({"type": "fetch", "id": "g", "trace_id": data.trace_id, "source": 0,
                                "key": "grid"})
    assert reply["type"] == "data" and buf == data.grid[0].result()
    assert not data.grid_pending({"key": "grid", "trace_id": data.trace_id, "source": 0})


def test_a_small_view_is_sent_whole_with_no_grid_to_prepare():
    data = ViewData.of(_trace()).encode(0, 0, send_all_below=2**20)
    header, arrays = encoding.decode_payload(data.payload)
    assert header["complete"] and data.grid == () and (0, "thumbs") in arrays


@pytest.mark.parametrize("request_, message", [
    ({"source": 2, "trace_id": None}, r"source must be 0\.\.0; got 2"),
    ({"source": 0, "trace_id": "old"}, "the trace shown was replaced"),
    ({"source": 0, "trace_id": None, "key": "head/9/0"}, r"cannot send 'head/9/0': layer 9 was not captured"),
])
def test_fetches_that_cannot_be_answered_get_an_error_that_says_why(request_, message):
    data = ViewData.of(_trace()).encode(0, 0, send_all_below=0)
    request = {"type": "fetch", "id": "x", "key": "head/0/0", **request_}
    if request["trace_id"] is None:
        request["trace_id"] = data.trace_id
    reply, buffers = data.answer(request)
    assert reply["type"] == "error" and buffers == []
    assert reply["trace_id"] == request["trace_id"]  # the view that asked shows it
    assert re.search(message, reply["message"]), reply["message"]


def test_views_share_the_layers_and_heads_both_traces_captured():
    a = _trace()
    b = _trace(seed=1).narrow(layers=[1], heads=[0, 2])
    data = ViewData.of(a, b, labels=("base", "edited"))
    assert data.layers == (1,) and data.heads == (0, 2) and data.labels == ("base", "edited")


def test_bad_traces_and_blocks_are_named():
    with pytest.raises(TypeError, match="compare must be an AttentionTrace; got str"):
        ViewData.of(_trace(), "trace")
    with pytest.raises(KeyError, match=r"block must be one of \['self'\]; got 'cross'"):
        ViewData.of(_trace(), block="cross")
    with pytest.raises(ValueError, match="share no captured layer and head"):
        ViewData.of(_trace(n_layers=2).narrow(layers=[0]), _trace(n_layers=2).narrow(layers=[1]))
    with pytest.raises(ValueError, match="cannot compare traces from different models"):
        ViewData.of(_trace(n_layers=1), _trace(n_layers=2))


def test_bokeh_and_unknown_requests_get_their_replies():
    reply, [source] = bokeh_reply({"type": "bokeh", "id": 3})
    assert reply["type"] == "bokeh" and reply["id"] == 3 and b"Bokeh" in source[:4096]
    reply, buffers = unknown_reply({"type": "paint", "id": 4})
    assert reply == {"type": "error", "id": 4, "message": "unknown request type 'paint'; expected 'fetch', "
                     "'bokeh' or 'run'"} and buffers == []


# --------------------------------------------------------------------- long traces
def _qk_trace(t: int, n_layers: int = 1, n_heads: int = 1, seed: int = 0) -> AttentionTrace:
    from test_encoding import qk_trace

    return qk_trace(t=t, n_layers=n_layers, n_heads=n_heads, seed=seed)


def test_an_8192_token_view_opens_with_one_pooled_head_in_a_small_payload(monkeypatch):
    from attn_widget import protocol
    from attn_widget.trace import AttentionBlock

    monkeypatch.setattr(protocol, "head_metrics", lambda trace, layers=None, progress=None: {})  # no analysis
    monkeypatch.setattr(AttentionBlock, "data", property(lambda self: pytest.fail("built every weight")))
    data = ViewData.of(_qk_trace(8192)).encode(0, 0, send_all_below=8 * 2**20, pool_above=8 * 2**20)
    header, arrays = encoding.decode_payload(data.payload)
    assert len(data.payload) < 2 * 2**20  # the goal: ≤ 8 MB
    assert header["pool_side"] == 16  # one square per pixel of the 540-pixel heatmap
    [section] = header["sections"]
    assert (section["key"], section["shape"], section["side"]) == ("pool/0/0/16", [512, 512], 16)
    assert data.grid[0].exception(timeout=120) is None  # thumbnails pooled head by head


def test_a_short_view_keeps_whole_heads_however_low_pool_above_is():
    data = ViewData.of(_trace()).encode(0, 0, send_all_below=2**20, pool_above=0)
    header, _ = encoding.decode_payload(data.payload)
    assert header["complete"] and "pool_side" not in header


def test_pool_and_region_fetches_are_costly_and_whole_heads_of_weights_are_not():
    long = ViewData.of(_qk_trace(600)).encode(0, 0, send_all_below=0, pool_above=0)
    ask = lambda data, key: {"type": "fetch", "trace_id": data.trace_id, "source": 0, "key": key}  # noqa: E731
    assert long.costly(ask(long, "pool/0/0/2")) and long.costly(ask(long, "region/0/0/0/4/0/4"))
    assert long.costly(ask(long, "head/0/0"))  # recomputed from queries and keys
    short = ViewData.of(_trace()).encode(0, 0, send_all_below=0)
    assert not short.costly(ask(short, "head/0/0"))
    assert not long.costly({**ask(long, "pool/0/0/2"), "trace_id": "old"})  # an error: cheap


def test_a_grid_in_preparation_is_sent_in_parts_then_whole(monkeypatch):
    import threading

    from attn_widget import protocol

    monkeypatch.setattr(protocol, "PARTIAL_EVERY", 0.0)
    release = threading.Event()

    def slow_metrics(trace, layers=None, progress=None):
        release.wait(30)
        return {"sink_score": np.full((1, 3), 0.5, np.float32)}

    monkeypatch.setattr(protocol, "head_metrics", slow_metrics)
    data = ViewData.of(_qk_trace(200, n_layers=2, n_heads=3)).encode(0, 0, send_all_below=0, pool_above=0)
    request = {"type": "fetch", "id": "g", "trace_id": data.trace_id, "source": 0, "key": "grid"}
    replies = []
    done = data.follow_grid(request, replies.append)
    release.set()
    done.result(timeout=60)
    parts = [encoding.decode_payload(bufs[0])[0].get("progress")
             for reply, bufs in replies if reply.get("partial")]
    assert {"thumbs": 6, "metrics": 1} in parts  # all thumbnails, the badges of layer 0
    final, [buf] = replies[-1]
    assert final["type"] == "data" and "partial" not in final
    header, arrays = encoding.decode_payload(buf)
    assert "progress" not in header and arrays[(0, "metric/sink_score")].shape == (2, 3)


def test_a_grid_whose_analysis_fails_answers_with_the_reason(monkeypatch):
    from attn_widget import protocol

    monkeypatch.setattr(protocol, "head_metrics", lambda trace, layers=None, progress=None: 1 / 0)
    data = ViewData.of(_trace()).encode(0, 0, send_all_below=0)
    reply, buffers = data.answer({"type": "fetch", "id": "g", "trace_id": data.trace_id, "source": 0,
                                  "key": "grid"})
    assert reply["type"] == "error" and buffers == []
    assert reply["message"] == "the all-heads grid could not be prepared: ZeroDivisionError: division by zero"


def test_background_work_waits_while_a_view_waits_for_a_fetch():
    import threading
    import time

    from attn_widget.protocol import Foreground

    gate = Foreground()
    gate.wait(timeout=5)  # nothing waited for: no wait
    gate.begin()
    waited = []
    worker = threading.Thread(target=lambda: (gate.wait(timeout=30), waited.append(time.monotonic())))
    worker.start()
    time.sleep(0.2)
    assert waited == []
    answered = time.monotonic()
    gate.end()
    worker.join(10)
    assert waited and waited[0] >= answered
    gate.begin()
    start = time.monotonic()
    gate.wait(timeout=0.1)  # slowed, never starved
    assert time.monotonic() - start < 5


def test_a_grid_in_preparation_stops_when_the_program_ends():
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import sys, threading, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_encoding import qk_trace
from attn_widget import protocol
from attn_widget.protocol import ViewData
started = threading.Event()

def slow(trace, layers=None, progress=None):
    print("layer", layers, flush=True)
    started.set()
    time.sleep(0.3)
    return {{}}

protocol.head_metrics = slow
ViewData.of(qk_trace(t=40, n_layers=40, n_heads=1)).encode(0, 0, send_all_below=0)
started.wait(60)  # the grid's thread runs at idle priority: on a busy machine it starts late
time.sleep(0.5)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 0 < out.stdout.count("layer") < 40  # it had started, and did not hold the exit to the end
