"""AttentionSession: capture a prompt into a live widget, and re-run it from the prompt box."""

from __future__ import annotations

import pytest
from conftest import FRANCE_PROMPT, tiny_model

import attn_widget as aw
from attn_widget import encoding

PROMPT = "w1 w2 w3 w4 w5 w6"


class Recorder:
    def __init__(self, widget):
        self.sent = []
        widget.send = lambda content, buffers=None: self.sent.append(content)


@pytest.fixture
def session(word_tokenizer):
    return aw.AttentionSession(tiny_model("llama"), word_tokenizer, max_new_tokens=3, min_new_tokens=3)


def test_run_returns_a_live_widget_of_the_prompt(session):
    w = session.run(PROMPT)
    assert isinstance(w, aw.AttentionWidget)
    assert w._live is True and w.prompt == PROMPT
    assert w.trace is session.trace
    assert (w.trace.prompt_len, w.trace.n_generated) == (6, 3)
    assert w.step == 0


def test_run_options_override_the_session_defaults(session):
    w = session.run(PROMPT, max_new_tokens=0, layers=[1])
    assert w.trace.n_generated == 0 and w.trace.layers == (1,)
    assert session.capture_defaults["max_new_tokens"] == 3


def test_widget_options_reach_the_widget(session):
    w = session.run(PROMPT, widget_options={"layer": 1, "head": "mean", "scale": "log"})
    assert (w.layer, w.head, w.scale) == (1, -1, "log")


def test_the_prompt_box_recaptures_with_the_same_options_and_updates_in_place(session):
    w = session.run(PROMPT, layers=[1])
    w.head = 2
    rec = Recorder(w)
    w._handle_custom_msg({"type": "run", "id": "r1", "prompt": "w7 w8 w9"}, [])
    w.wait(timeout=120)
    assert [m["state"] for m in rec.sent] == ["running", "done"]
    assert w.prompt == "w7 w8 w9"
    assert [t.strip() for t in w.trace.tokens.text[:3]] == ["w7", "w8", "w9"]
    assert w.trace.layers == (1,) and w.trace.n_generated == 3
    assert (w.layer, w.head) == (1, 2)
    header, _ = encoding.decode_payload(w._payload)
    assert header["sources"][0]["tokens"]["text"][0].strip() == "w7"


def test_an_empty_prompt_from_the_box_is_refused_with_a_message(session):
    w = session.run(PROMPT)
    rec = Recorder(w)
    w._handle_custom_msg({"type": "run", "id": "r2", "prompt": "   "}, [])
    assert rec.sent == [{"type": "run", "id": "r2", "state": "error", "message": "the prompt is empty"}]


def test_a_prompt_box_run_leaves_the_kernel_free_and_a_second_run_waits_its_turn(session):
    import threading

    w = session.run(PROMPT)
    rec = Recorder(w)
    release = threading.Event()
    capture = session.capture

    def slow_capture(text, **kwargs):
        assert release.wait(60)
        return capture(text, **kwargs)

    session.capture = slow_capture
    w._handle_custom_msg({"type": "run", "id": "r3", "prompt": "w7 w8"}, [])
    # The handler returned while the capture waits: the kernel can answer a slider's fetch.
    assert [m["state"] for m in rec.sent] == ["running"]
    w._handle_custom_msg({"type": "fetch", "id": "f1", "trace_id": w.view_data.trace_id, "source": 0,
                          "key": "head/0/1"}, [])
    assert rec.sent[-1]["type"] == "data" and rec.sent[-1]["id"] == "f1"
    w._handle_custom_msg({"type": "run", "id": "r4", "prompt": "w9"}, [])
    assert rec.sent[-1] == {"type": "run", "id": "r4", "state": "error",
                            "message": "a run is already in progress; wait for it to finish"}
    assert w.prompt == PROMPT  # nothing changed yet
    release.set()
    w.wait(timeout=120)
    assert rec.sent[-1] == {"type": "run", "id": "r3", "state": "done"}
    assert w.prompt == "w7 w8" and w.trace.tokens.text[0].strip() == "w7"


def test_a_prompt_box_run_that_fails_reports_the_error_and_keeps_the_old_trace(session):
    w = session.run(PROMPT)
    before = w.trace
    rec = Recorder(w)
    session.capture = lambda text, **kwargs: (_ for _ in ()).throw(RuntimeError("out of memory"))
    w._handle_custom_msg({"type": "run", "id": "r5", "prompt": "w7"}, [])
    w.wait(timeout=120)
    assert rec.sent[-1] == {"type": "run", "id": "r5", "state": "error",
                            "message": "RuntimeError: out of memory"}
    assert w.trace is before and w.prompt == PROMPT


def test_a_prompt_that_is_not_text_is_refused(session):
    with pytest.raises(TypeError, match="prompt must be a string; got list"):
        session.run(["w1"])


@pytest.mark.smollm2
def test_smollm2_session_shows_the_france_prompt(smollm2):
    model, tokenizer = smollm2
    w = aw.AttentionSession(model, tokenizer).run(FRANCE_PROMPT, max_new_tokens=4, chat=True)
    assert "Paris" in w.trace.text
    assert w.trace.block().layers == tuple(range(30)) and len(w.trace.heads) == 9
    header, arrays = encoding.decode_payload(w._payload)
    assert header["complete"] is True
    assert (0, "head/29/8") in arrays
