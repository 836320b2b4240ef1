"""AttentionWidget's traits and its answers to the front end (PROTOCOL.md), without a browser."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import traitlets

from attn_widget import encoding
from attn_widget.figures import figure_items
from attn_widget.trace import AttentionTrace
from attn_widget.widget import MEAN, AttentionWidget, compare_widget


def random_trace(n_layers=3, n_heads=4, t=12, prompt_len=8, seed=0, heads=None, tokens=None):
    rng = np.random.default_rng(seed)
    n_heads = n_heads if heads is None else len(heads)
    a = np.tril(rng.random((n_layers, n_heads, t, t)) ** 4)
    a /= a.sum(-1, keepdims=True)
    return AttentionTrace.from_dense(a, tokens or [f"w{i}" for i in range(t)], prompt_len=prompt_len,
                                     heads=heads)


class Recorder:
    """Stands in for the kernel's comm: collects what the widget sends."""

    def __init__(self, widget):
        self.sent = []
        widget.send = lambda content, buffers=None: self.sent.append((content, list(buffers or [])))
        self.widget = widget

    def ask(self, wait=True, **content):
        """One custom message from the front end; the widget's replies (with ``wait``, also
        those it sends later from its threads: a prompt-box run, a grid being prepared)."""
        start = len(self.sent)
        self.widget._handle_custom_msg(content, [])
        if wait:
            self.widget.wait(timeout=120)
        return self.sent[start:]


@pytest.fixture
def trace():
    return random_trace()


@pytest.fixture
def widget(trace):
    return AttentionWidget(trace)


def test_defaults_show_the_first_layer_and_head_and_the_first_generated_token(widget):
    assert (widget.layer, widget.head, widget.scale) == (0, 0, "auto")
    assert (widget.step, widget.selected_token) == (0, -1)


def test_a_forward_pass_has_no_step(trace):
    fwd = random_trace(prompt_len=12)
    assert AttentionWidget(fwd).step == -1


def test_trace_show_returns_a_widget(trace):
    w = trace.show(layer=2, head="mean")
    assert isinstance(w, AttentionWidget)
    assert (w.layer, w.head) == (2, MEAN)


def test_layer_and_head_follow_python_assignment(widget):
    widget.layer, widget.head = 2, 3
    assert (widget.layer, widget.head) == (2, 3)
    widget.head = MEAN
    assert widget.head == -1


@pytest.mark.parametrize("name, value, message", [
    ("layer", 3, r"layer must be one of the captured layers 0..2; got 3"),
    ("head", 7, r"head must be one of the captured heads 0..3 or -1 \(mean of heads\); got 7"),
    ("step", 4, r"step must be between 0 and 3 \(the generated tokens\); got 4"),
    ("selected_token", 12, r"selected_token must be -1 \(none\) or a position 0..11; got 12"),
    ("scale", "sqrt", r"'sqrt'"),
])
def test_python_values_out_of_range_are_refused_with_what_is_allowed(widget, name, value, message):
    with pytest.raises(traitlets.TraitError, match=message):
        setattr(widget, name, value)


def test_uncaptured_heads_are_refused(trace):
    w = AttentionWidget(random_trace(heads=[0, 2, 5, 7]))
    with pytest.raises(traitlets.TraitError, match="0,2,5,7"):
        w.head = 1


def test_front_end_values_out_of_range_are_clamped_and_reported(widget):
    rec = Recorder(widget)
    widget.set_state({"layer": 99, "head": -5, "step": 40, "selected_token": 3})
    assert (widget.layer, widget.head, widget.step, widget.selected_token) == (2, 0, 3, 3)
    notices = [c for c, _ in rec.sent if c.get("type") == "notice"]
    assert len(notices) == 1
    assert "layer 99 is out of range; showing 2" in notices[0]["message"]
    assert "step 40 is out of range; showing 3" in notices[0]["message"]


def test_front_end_garbage_keeps_the_current_value(widget):
    Recorder(widget)
    widget.set_state({"layer": "seven", "scale": "<b>bold</b>"})
    assert (widget.layer, widget.scale) == (0, "auto")


def test_python_observers_see_front_end_moves(widget):
    seen = []
    widget.observe(lambda change: seen.append(change["new"]), names="layer")
    Recorder(widget)
    widget.set_state({"layer": 2})
    assert seen == [2]


def test_fetch_of_a_head_replies_with_its_bytes(trace):
    w = AttentionWidget(trace, send_all_below=0)
    rec = Recorder(w)
    trace_id = w.view_data.trace_id
    [(reply, buffers)] = rec.ask(type="fetch", id="v1-1", trace_id=trace_id, source=0, key="head/1/2")
    assert reply == {"type": "data", "id": "v1-1", "trace_id": trace_id, "key": "head/1/2", "source": 0}
    header, arrays = encoding.decode_payload(buffers[0])
    want = trace.head(1, 2)[np.tril_indices(12)]
    assert np.allclose(arrays[(0, "head/1/2")].astype(np.float32), want, rtol=2**-11, atol=2**-25)


def test_fetch_of_a_head_that_was_not_captured_is_answered_with_a_message():
    w = AttentionWidget(random_trace(heads=[0, 2]), send_all_below=0)
    [(reply, buffers)] = Recorder(w).ask(type="fetch", id="v1-2", trace_id=w.view_data.trace_id, source=0,
                                         key="head/0/1")
    assert reply["type"] == "error" and buffers == []
    assert "head 1 was not captured" in reply["message"]


def test_fetch_for_a_replaced_trace_is_refused(widget):
    [(reply, _)] = Recorder(widget).ask(type="fetch", id="x", trace_id="old", source=0, key="head/0/0")
    assert reply["type"] == "error" and reply["trace_id"] == "old"
    assert reply["message"].startswith("head/0/0 was not sent: the trace shown was replaced")


def test_fetch_from_a_source_that_does_not_exist_is_refused(widget):
    [(reply, _)] = Recorder(widget).ask(type="fetch", id="x", trace_id=widget.view_data.trace_id, source=3,
                                        key="head/0/0")
    assert reply["message"] == "source must be 0..0; got 3"


def test_grid_fetch_carries_the_analysis_badges(trace):
    w = AttentionWidget(trace, send_all_below=0)
    [(reply, buffers)] = Recorder(w).ask(type="fetch", id="g", trace_id=w.view_data.trace_id, source=0,
                                         key="grid")
    header, arrays = encoding.decode_payload(buffers[0])
    assert arrays[(0, "thumbs")].shape[:2] == (3, 4)
    from attn_widget import analysis

    scores = analysis.head_scores(trace)
    assert np.allclose(arrays[(0, "metric/sink_score")], scores.sink_score, equal_nan=True)
    assert "sink_score" in header["metrics"]


def test_unknown_requests_get_an_error_not_an_exception(widget):
    [(reply, _)] = Recorder(widget).ask(type="explode", id="z")
    assert reply["type"] == "error" and "unknown request type 'explode'" in reply["message"]


def test_bokeh_request_sends_the_installed_bokeh_min_js(widget):
    import bokeh

    [(reply, buffers)] = Recorder(widget).ask(type="bokeh", id="b", version=bokeh.__version__)
    assert reply == {"type": "bokeh", "id": "b", "version": bokeh.__version__}
    assert len(buffers[0]) > 1_000_000
    assert f'"{bokeh.__version__}"'.encode() in buffers[0] or bokeh.__version__.encode() in buffers[0]


def test_small_traces_send_everything_and_large_ones_only_the_view(trace):
    small = AttentionWidget(trace)
    large = AttentionWidget(trace, layer=1, head=2, send_all_below=100)
    small_keys = {k for _, k in encoding.decode_payload(small._payload)[1]}
    large_keys = {k for _, k in encoding.decode_payload(large._payload)[1]}
    assert "head/2/3" in small_keys and "thumbs" in small_keys
    assert large_keys == {"head/1/2", "mean/1"}


def test_run_without_a_session_explains_what_is_needed(widget):
    [(reply, _)] = Recorder(widget).ask(type="run", id="r", prompt="hello")
    assert reply["state"] == "error" and "AttentionSession" in reply["message"]
    assert widget._live is False


def test_run_replaces_the_trace_in_place(trace):
    other = random_trace(t=15, prompt_len=10, seed=3)
    w = AttentionWidget(trace, layer=2, head=1, run=lambda prompt: other, prompt="first")
    old_payload = w._payload
    replies = Recorder(w).ask(type="run", id="r", prompt="second")
    assert [c["state"] for c, _ in replies] == ["running", "done"]
    assert w.trace is other and w.prompt == "second" and w._payload != old_payload
    assert (w.layer, w.head) == (2, 1)
    assert encoding.decode_payload(w._payload)[0]["sources"][0]["n_queries"] == 15


def test_a_failing_run_reports_the_error_and_keeps_the_old_trace(trace):
    def boom(prompt):
        raise RuntimeError("model exploded")

    w = AttentionWidget(trace, run=boom)
    replies = Recorder(w).ask(type="run", id="r", prompt="x")
    assert replies[-1][0] == {"type": "run", "id": "r", "state": "error",
                              "message": "RuntimeError: model exploded"}
    assert w.trace is trace


def test_compare_shows_common_layers_and_heads():
    a = random_trace(heads=[0, 1, 2, 3])
    b = random_trace(heads=[1, 2, 3], seed=1)
    w = compare_widget(a, b, head=1)
    header, arrays = encoding.decode_payload(w._payload)
    assert header["mode"] == "compare" and [s["label"] for s in header["sources"]] == ["A", "B"]
    assert (0, "head/0/1") in arrays and (1, "head/0/1") in arrays
    with pytest.raises(traitlets.TraitError):
        w.head = 0  # only in A


def test_compare_of_traces_with_nothing_in_common_is_refused():
    a, b = random_trace(heads=[0]), random_trace(heads=[1])
    a.model["n_heads"] = a.model["n_kv_heads"] = 2  # the same model, different heads captured
    with pytest.raises(ValueError, match="share no captured layer and head"):
        compare_widget(a, b)


def test_compare_of_traces_of_two_models_is_refused_as_compare_attention_does(trace):
    other = random_trace(n_layers=2)
    with pytest.raises(ValueError, match="different models"):
        compare_widget(trace, other)
    w = AttentionWidget(trace)
    with pytest.raises(ValueError, match="different models"):
        w.set_trace(trace, compare=other)
    assert w.trace is trace


def test_the_front_end_cannot_set_what_only_the_kernel_sends(widget):
    rec = Recorder(widget)
    payload = widget._payload
    widget.set_state({"_payload": b"junk", "layer": 1})
    assert widget._payload == payload and widget.layer == 1
    assert any("only be set by the kernel" in c.get("message", "") for c, _ in rec.sent)


def test_widget_refuses_what_is_not_a_trace():
    with pytest.raises(TypeError, match="trace must be an AttentionTrace; got ndarray"):
        AttentionWidget(np.zeros((1, 1, 2, 2)))
    w = AttentionWidget(random_trace())
    before = w._payload
    with pytest.raises(TypeError, match="trace must be an AttentionTrace; got ndarray"):
        w.set_trace(np.zeros((1, 1, 2, 2)))
    assert w._payload == before


def test_figure_skeletons_name_the_models_the_front_end_drives():
    items = figure_items(40)
    text = str(items["heatmap"])
    for name in ("heat_source", "x_ticker", "y_ticker", "colour_bar", "linear_mapper", "log_mapper",
                 "hover_row", "pin_col", "step_row"):
        assert f"'{name}'" in text
    assert "'bars_source'" in str(items["bars"])


def test_importing_the_widget_does_not_import_torch():
    code = "import attn_widget.widget, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "False"


def test_figure_skeletons_are_sized_for_the_trace():
    from attn_widget.figures import _named_models

    for n in (7, 1024):
        ranges = {m["attributes"]["name"]: m["attributes"] for m in _named_models(figure_items(n))
                  if m["attributes"]["name"].endswith("range")}
        assert ranges["x_range"]["start"] == 0 and ranges["x_range"]["end"] == n
        assert (ranges["y_range"]["start"], ranges["y_range"]["end"]) == (n, 0)  # queries downwards
        assert ranges["x_range"]["bounds"] == ranges["y_range"]["bounds"] == [0, n]
        assert ranges["bars_x_range"]["end"] == n


def test_figure_skeletons_come_from_the_disk_cache_and_a_damaged_file_is_rebuilt(tmp_path, monkeypatch):
    import json

    from attn_widget import figures

    monkeypatch.setenv("ATTN_WIDGET_CACHE", str(tmp_path))
    figures._skeleton_json.cache_clear()
    build = figures._build_skeleton_json
    built = []
    monkeypatch.setattr(figures, "_build_skeleton_json",
                        lambda compact: built.append(compact) or build(compact))
    try:
        first = figure_items(30)
        files = list((tmp_path / "figures").glob("bokeh-*-full.json"))
        assert len(files) == 1 and built == [False]
        figures._skeleton_json.cache_clear()
        assert figure_items(30) == first and built == [False]  # read back, not rebuilt
        files[0].write_text('{"heatmap": ')  # damaged
        figures._skeleton_json.cache_clear()
        assert figure_items(30)["heatmap"]["doc"]["roots"][0]["attributes"]["name"] == "heatmap"
        assert built == [False, False]
        assert json.loads(files[0].read_text())["heatmap"]  # and written again
    finally:
        figures._skeleton_json.cache_clear()


def test_a_widget_in_a_fresh_kernel_skips_importing_bokeh_once_the_skeletons_are_cached(tmp_path):
    # The first widget of every kernel would otherwise pay 1–2 s importing Bokeh's Python models.
    code = ("import sys, numpy as np, attn_widget as aw\n"
            "a = np.tril(np.ones((1, 2, 6, 6), np.float32)); a /= a.sum(-1, keepdims=True)\n"
            "w = aw.AttentionWidget(aw.AttentionTrace.from_dense(a, list('abcdef'), prompt_len=4))\n"
            "print(sorted(m for m in sys.modules if m == 'bokeh' or m.startswith('bokeh.')))")
    env = {**__import__("os").environ, "ATTN_WIDGET_CACHE": str(tmp_path)}
    run = [sys.executable, "-c", code]
    cold = subprocess.run(run, capture_output=True, text=True, timeout=120, check=True, env=env)
    assert "bokeh.models" in cold.stdout  # the first one builds and caches them
    warm = subprocess.run(run, capture_output=True, text=True, timeout=120, check=True, env=env)
    assert warm.stdout.strip() == "[]", warm.stdout


def test_bokehjs_travels_with_the_first_widget_of_a_kernel_only():
    code = ("import numpy as np, attn_widget as aw\n"
            "from attn_widget.figures import bokeh_source\n"
            "a = np.tril(np.ones((1, 1, 4, 4), np.float32)); a /= a.sum(-1, keepdims=True)\n"
            "t = aw.AttentionTrace.from_dense(a, list('abcd'), prompt_len=2)\n"
            "first, second = aw.AttentionWidget(t), aw.AttentionWidget(t)\n"
            "print(first._bokeh_js == bokeh_source(), len(second._bokeh_js))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.split() == ["True", "0"]


def test_a_grid_request_before_the_grid_is_ready_is_answered_later_not_holding_the_kernel(monkeypatch):
    import threading

    from attn_widget import protocol

    release = threading.Event()
    real = protocol.grid_payload

    def slow_grid(trace, **kwargs):
        assert release.wait(60)
        return real(trace, **kwargs)

    monkeypatch.setattr(protocol, "grid_payload", slow_grid)
    w = AttentionWidget(random_trace(), send_all_below=0)
    rec = Recorder(w)
    assert rec.ask(wait=False, type="fetch", id="g1", trace_id=w.view_data.trace_id, source=0,
                   key="grid") == []
    # Meanwhile the kernel answers other requests at once.
    (reply, _), = rec.ask(wait=False, type="fetch", id="h1", trace_id=w.view_data.trace_id, source=0,
                          key="head/1/1")
    assert reply["type"] == "data"
    release.set()
    w.wait(timeout=60)
    (reply, buffers), = [(m, b) for m, b in rec.sent if m["id"] == "g1"]
    assert reply["type"] == "data" and reply["key"] == "grid"
    header, sections = encoding.decode_payload(buffers[0])
    assert any(key == "thumbs" for _, key in sections)


# --------------------------------------------------------------------- attention blocks
@pytest.fixture(scope="module")
def seq2seq_trace(word_tokenizer):
    from conftest import tiny_model

    import attn_widget as aw

    return aw.capture(tiny_model("t5"), word_tokenizer, "w1 w2 w3 w4 w5 w6", target="w3 w8 w9")


def test_an_encoder_decoder_trace_offers_every_block_and_shows_the_decoder_first(seq2seq_trace):
    w = AttentionWidget(seq2seq_trace)
    assert w._blocks == list(seq2seq_trace.blocks) and set(w._blocks) == {"encoder", "decoder", "cross"}
    header, _ = encoding.decode_payload(w._payload)
    src = header["sources"][0]
    assert (w.block, src["block"], src["causal"]) == ("decoder", "decoder", True)
    assert "key_tokens" not in src


def test_switching_to_cross_attention_sends_decoder_queries_over_encoder_keys(seq2seq_trace):
    from attn_widget.figures import _named_models

    w = AttentionWidget(seq2seq_trace, layer=1, head=2)
    old_id = w.view_data.trace_id
    w.block = "cross"
    header, arrays = encoding.decode_payload(w._payload)
    src = header["sources"][0]
    n_dec, n_src = len(seq2seq_trace.tokens), len(seq2seq_trace.source_tokens)
    assert (src["block"], src["n_queries"], src["n_keys"], src["causal"]) == ("cross", n_dec, n_src, False)
    assert src["tokens"]["text"] == seq2seq_trace.tokens.text
    assert src["key_tokens"]["text"] == seq2seq_trace.source_tokens.text
    expected = seq2seq_trace.head(1, 2, block="cross")
    np.testing.assert_allclose(arrays[(0, "head/1/2")].astype(np.float32), expected, atol=1e-3)
    ranges = {m["attributes"]["name"]: m["attributes"] for m in _named_models(w._figures)}
    assert ranges["x_range"]["end"] == n_src and ranges["y_range"]["start"] == n_dec
    # Fetches answer from the block shown, under the new trace id.
    assert header["trace_id"] == w.view_data.trace_id != old_id
    (reply, buffers), = Recorder(w).ask(type="fetch", id="f", trace_id=w.view_data.trace_id, source=0,
                                        key="head/0/3")
    got = encoding.decode_payload(buffers[0])[1][(0, "head/0/3")]
    np.testing.assert_allclose(got.astype(np.float32), seq2seq_trace.head(0, 3, block="cross"), atol=1e-3)


def test_the_encoder_block_runs_over_the_source_tokens(seq2seq_trace):
    w = AttentionWidget(seq2seq_trace, block="encoder")
    src = encoding.decode_payload(w._payload)[0]["sources"][0]
    n_src = len(seq2seq_trace.source_tokens)
    assert (src["n_queries"], src["n_keys"], src["causal"]) == (n_src, n_src, False)
    assert src["tokens"]["text"] == seq2seq_trace.source_tokens.text
    assert src["spans"] == {"input": [0, n_src]}
    w.selected_token = n_src - 1  # a source position is a valid query now
    with pytest.raises(traitlets.TraitError, match="selected_token must be -1"):
        w.selected_token = n_src


def test_a_bad_block_is_refused_from_python_and_clamped_from_the_front_end(seq2seq_trace):
    with pytest.raises(traitlets.TraitError, match=r"block must be one of \['encoder', 'decoder', 'cross'\]"):
        AttentionWidget(seq2seq_trace, block="self")
    w = AttentionWidget(seq2seq_trace)
    with pytest.raises(traitlets.TraitError, match="block must be one of"):
        w.block = "self"
    assert w.block == "decoder" and encoding.decode_payload(w._payload)[0]["sources"][0]["block"] == "decoder"
    rec = Recorder(w)
    w.set_state({"block": "nonsense"})
    assert w.block == "decoder"
    assert any(m.get("type") == "notice" and "block 'nonsense' is out of range" in m["message"]
               for m, _ in rec.sent)


# --------------------------------------------------------------------- long traces
def test_a_long_trace_opens_pooled_and_its_fetches_are_answered_while_the_grid_is_prepared(monkeypatch):
    import threading

    from test_encoding import qk_trace

    from attn_widget import protocol

    release = threading.Event()
    real = protocol.grid_payload
    monkeypatch.setattr(protocol, "grid_payload", lambda trace, **kw: release.wait(60) and real(trace, **kw))
    w = AttentionWidget(qk_trace(t=400), layer=1, head=2, send_all_below=0, pool_above=2**15)
    header, _ = encoding.decode_payload(w._payload)
    assert header["pool_side"] == 1 and [s["key"] for s in header["sections"]] == ["pool/1/2/1"]
    sent = []
    w.send = lambda content, buffers=None: sent.append((content, threading.current_thread().name))
    ask = dict(type="fetch", trace_id=w.view_data.trace_id, source=0)
    for rid, key, extra in (("g", "grid", {}), ("p", "pool/0/mean/4", {}),
                            ("r", "region/1/0/100/164/0/64", {"prefetch": True})):
        w._handle_custom_msg({"id": rid, "key": key, **ask, **extra}, [])
    # answered from worker threads, the kernel's stays free; and not behind the grid, still blocked
    for _ in range(600):
        if {m["id"] for m, _ in sent} >= {"p", "r"}:
            break
        threading.Event().wait(0.05)
    got = {m["id"]: (m["type"], m["key"], thread.split("_")[1]) for m, thread in sent}
    assert got == {"p": ("data", "pool/0/mean/4", "widget-fetch"),
                   "r": ("data", "region/1/0/100/164/0/64", "widget-prefetch")}
    release.set()
    w.wait(timeout=120)
    assert [m["type"] for m, _ in sent if m["id"] == "g"][-1] == "data"


def test_the_grid_of_a_long_trace_arrives_in_parts(monkeypatch):
    from test_encoding import qk_trace

    from attn_widget import protocol

    monkeypatch.setattr(protocol, "PARTIAL_EVERY", 0.0)
    w = AttentionWidget(qk_trace(t=200), send_all_below=0)
    rec = Recorder(w)
    replies = rec.ask(type="fetch", id="g", trace_id=w.view_data.trace_id, source=0, key="grid")
    assert [m.get("partial", False) for m, _ in replies][-1] is False
    progress = [encoding.decode_payload(b[0])[0].get("progress") for m, b in replies]
    assert progress[-1] is None and {"thumbs": 6, "metrics": 1} in progress
