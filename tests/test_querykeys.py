"""Traces that keep queries and keys: same answers as weights, memory that grows with T."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_capture_fast import PROMPT, eager_reference, fast_model

import attn_widget as aw
from attn_widget import encoding
from attn_widget.geometry import pack_causal, unpack_causal
from attn_widget.querykeys import QueryKeys
from attn_widget.tracefile import TraceFormatError

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def qk_trace(word_tokenizer):
    model = fast_model("mistral")  # sliding window 4, GQA: 4 query heads over 2 key groups
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=6, min_new_tokens=6, form="queries-keys")
    return model, trace


def test_a_queries_keys_trace_equals_the_eager_forward_pass(qk_trace):
    model, trace = qk_trace
    assert trace.block().form == "queries-keys" and trace.block()._data is None
    expected = eager_reference(model, trace.tokens.ids.tolist())
    assert np.abs(trace.attention() - expected).max() <= 2e-3
    np.testing.assert_allclose(trace.head(1, 2), expected[1, 2], atol=2e-3)
    np.testing.assert_allclose(trace.step(3), expected[:, :, trace.step_position(3)], atol=2e-3)
    np.testing.assert_allclose(trace.layer_mean(0), expected[0].mean(axis=0), atol=2e-3)


def test_a_queries_keys_trace_builds_all_weights_only_when_asked(qk_trace):
    _, trace = qk_trace
    small = trace.narrow(layers=[1], heads=[3])
    assert small.block().form == "queries-keys" and small.block()._data is None
    np.testing.assert_array_equal(small.head(1, 3), trace.head(1, 3))
    packed = small.block().data  # built once, kept
    assert packed.dtype == np.float16 and small.block().data is packed
    np.testing.assert_allclose(unpack_causal(packed[0, 0], len(trace)), trace.head(1, 3), atol=1e-3)


def test_queries_and_keys_grow_with_t_not_t_squared():
    rng = np.random.default_rng(0)

    def qk(t):
        return QueryKeys(rng.normal(size=(2, 4, t, 8)).astype(np.float32),
                         rng.normal(size=(2, 2, t, 8)).astype(np.float32), np.array([0, 0, 1, 1]),
                         np.full(2, 8 ** -0.5), np.zeros(2, np.int64))

    from attn_widget.trace import AttentionBlock

    small, large = (AttentionBlock("self", True, (0, 1), (0, 1, 2, 3), qk=qk(t)) for t in (256, 1024))
    assert large.nbytes == 4 * small.nbytes
    assert large.weights_nbytes > 15 * small.weights_nbytes


def test_rows_follow_the_sliding_window_and_sum_to_one(qk_trace):
    _, trace = qk_trace
    a = trace.head(0, 1)
    i, j = np.indices(a.shape)
    assert (a[(j > i) | (j <= i - 4)] == 0).all()  # Mistral's window of 4
    np.testing.assert_allclose(a.sum(axis=1), 1, atol=1e-5)


def test_a_queries_keys_trace_saves_and_loads_as_it_was(qk_trace, tmp_path):
    _, trace = qk_trace
    back = aw.load_trace(trace.save(tmp_path / "qk.attn"))
    assert back.block().form == "queries-keys"
    np.testing.assert_array_equal(back.attention(), trace.attention())
    assert "queries and keys" in repr(back)


def test_files_of_format_version_1_still_load():
    trace = aw.load_trace(DATA / "format_v1.attn")  # written by attn_widget before version 2
    rng = np.random.default_rng(3)
    a = np.tril(rng.random((2, 3, 5, 5))) + np.tril(np.ones((5, 5))) * 0.01
    a /= a.sum(-1, keepdims=True)
    assert trace.model_name == "v1-toy" and trace.block().form == "weights"
    np.testing.assert_array_equal(trace.attention(), unpack_causal(pack_causal(a), 5))


def test_a_damaged_queries_keys_file_is_named(qk_trace, tmp_path):
    _, trace = qk_trace
    path = trace.save(tmp_path / "qk.attn")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the queries, the largest array
    path.write_bytes(bytes(data))
    with pytest.raises(TraceFormatError, match="fails its checksum"):
        aw.load_trace(path)


def test_the_widget_payload_of_a_queries_keys_trace_holds_the_recomputed_head(qk_trace):
    _, trace = qk_trace
    section = encoding.head_section(trace, 1, 2)
    np.testing.assert_allclose(unpack_causal(section.array, len(trace)), trace.head(1, 2), atol=1e-3)


def test_auto_keeps_weights_for_short_runs_and_hooked_models_cannot_keep_queries(word_tokenizer):
    model = fast_model("llama")
    # 9 tokens: the weights take less memory than the queries and keys
    assert aw.capture(model, word_tokenizer, PROMPT).block().form == "weights"
    with pytest.raises(ValueError, match=r"form must be one of \['auto', 'weights', 'queries-keys'\]"):
        aw.capture(model, word_tokenizer, PROMPT, form="sparse")
    bart = fast_model("bart")  # encoder-decoder: captured from eager weights by hooks
    with pytest.raises(ValueError, match="form='queries-keys' needs the model on a fast attention kernel"):
        aw.capture(bart, word_tokenizer, PROMPT, form="queries-keys")


def test_an_eager_model_is_tapped_through_its_own_eager_function_and_stays_eager(word_tokenizer):
    model = fast_model("gemma2")  # soft-capping and a sliding window; eager only
    assert model.config._attn_implementation == "eager"
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=8, min_new_tokens=8, form="queries-keys")
    assert model.config._attn_implementation == "eager" and trace.options["attention"] == "eager"
    expected = eager_reference(model, trace.tokens.ids.tolist())
    assert np.abs(trace.attention() - expected).max() <= 2e-3


def test_a_model_whose_recompute_differs_falls_back_to_eager_once_with_a_note(word_tokenizer, monkeypatch,
                                                                             caplog):
    from attn_widget import capturing, querykeys

    monkeypatch.setattr(capturing, "_RECOMPUTE_CHECKED", {})
    real_rows = querykeys.QueryKeys.rows
    monkeypatch.setattr(querykeys.QueryKeys, "rows", lambda self, *a: real_rows(self, *a) * 0.5)
    model = fast_model("qwen2")
    with caplog.at_level("WARNING", logger="attn_widget"):
        trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=3)
        aw.capture(model, word_tokenizer, PROMPT)
    assert trace.options["attention"] == "eager" and model.config._attn_implementation == "sdpa"
    assert caplog.text.count("differs from eager attention") == 1
    expected = eager_reference(model, trace.tokens.ids.tolist())
    assert np.abs(trace.attention() - expected).max() <= 2e-3
    assert torch.is_grad_enabled()


def test_the_memory_estimate_of_queries_and_keys_grows_with_t():
    from attn_widget.capturing import estimate_bytes

    weights = [estimate_bytes(30, 9, t, t) for t in (4096, 8192)]
    qk = [estimate_bytes(30, 9, t, t, qk_dims=(64, 3)) for t in (4096, 8192)]
    assert weights[1] / weights[0] > 3.9 and qk[1] / qk[0] < 2.1
    assert qk[1] < 0.05 * weights[1]
    assert estimate_bytes(30, 9, 32768, 32768, qk_dims=(64, 3)) < 4 * 2**30  # 32k tokens fit this machine


def test_a_fast_capture_over_budget_is_refused_with_what_fits(word_tokenizer):
    model = fast_model("llama")
    with pytest.raises(aw.MemoryBudgetError, match=r"all of them fit up to about \d+ tokens"):
        aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=4, memory_budget=2000)
    assert model.config._attn_implementation == "sdpa"
