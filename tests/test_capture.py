"""Capture: stitched generation equals one forward pass; subsets; every bad input fails clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FRANCE_PROMPT, tiny_model

import attn_widget as aw

PROMPT = "w5 w7 w9 w11 w13 w2 w4"


def reference_attention(model, trace):
    """Per block, the (L, H, Tq, Tk) attention of one eager forward pass over the final text."""
    with torch.no_grad():
        if trace.architecture == "encoder-decoder":
            out = model(input_ids=torch.tensor([trace.source_tokens.ids.tolist()]),
                        decoder_input_ids=torch.tensor([trace.tokens.ids.tolist()]), output_attentions=True)
            pairs = {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions,
                     "cross": out.cross_attentions}
        else:
            out = model(torch.tensor([trace.tokens.ids.tolist()]), output_attentions=True)
            pairs = {"self": out.attentions}
    return {k: torch.stack([a[0] for a in v]).numpy() for k, v in pairs.items()}


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "bart"])
def test_stitched_generation_equals_one_forward_pass(family, word_tokenizer):
    model = tiny_model(family)
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=8, min_new_tokens=8)
    assert trace.n_generated == 8 or trace.architecture == "encoder-decoder"
    ref = reference_attention(model, trace)
    assert set(ref) == set(trace.blocks)
    for name, expected in ref.items():
        got = trace.attention(name)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 2e-3, name


def test_smollm2_stitched_trace_equals_forward_pass_for_every_head(smollm2, france_trace):
    model, _ = smollm2
    assert france_trace.n_generated >= 16
    assert france_trace.model["n_layers"] == 30 and france_trace.model["n_heads"] == 9
    assert france_trace.model["n_kv_heads"] == 3
    expected = reference_attention(model, france_trace)["self"]
    diff = np.abs(france_trace.attention() - expected).max(axis=(2, 3))
    assert diff.shape == (30, 9)
    assert diff.max() <= 2e-3


def test_smollm2_causal_triangle_is_packed_float16(france_trace):
    block = france_trace.block()
    t = len(france_trace)
    assert block.causal and block.data.dtype == np.float16
    assert block.data.shape == (30, 9, t * (t + 1) // 2)


def test_minilm_forward_trace_is_bidirectional():
    model, tokenizer = aw.load_model("minilm")
    trace = aw.capture(model, tokenizer, "Attention is a debugging signal, not an explanation.")
    assert trace.architecture == "encoder"
    assert (len(trace.layers), len(trace.heads)) == (6, 12)
    a = trace.attention()
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-3)
    assert np.triu(a, k=1).max() > 0.01  # keys after the query get weight: no causal zeros
    assert trace.tokens.raw[0] == "[CLS]" and trace.tokens.raw[-1] == "[SEP]"


def test_layer_and_head_subset_keeps_the_same_values(word_tokenizer):
    model = tiny_model("llama")
    full = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=4)
    part = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=4, layers=[-1], heads=[1, 3])
    assert part.layers == (1,) and part.heads == (1, 3)
    np.testing.assert_array_equal(part.head(1, 3), full.head(1, 3))
    with pytest.raises(IndexError, match="layer 0 was not captured"):
        part.head(0, 1)


def test_forward_pass_trace_has_no_generated_span(word_tokenizer):
    trace = aw.capture(tiny_model("gpt2"), word_tokenizer, PROMPT)
    assert trace.spans == {"prompt": (0, 7), "generated": (7, 7)}
    with pytest.raises(ValueError, match="no generated tokens"):
        trace.step(0)


def test_step_is_the_row_of_the_query_that_produced_the_token(word_tokenizer):
    trace = aw.capture(tiny_model("llama"), word_tokenizer, PROMPT, max_new_tokens=5, min_new_tokens=5)
    np.testing.assert_array_equal(trace.step(0), trace.row(trace.prompt_len - 1))
    np.testing.assert_array_equal(trace.step(4), trace.row(trace.prompt_len + 3))
    assert trace.step_position(2) == trace.prompt_len + 1


def test_chat_prompt_uses_the_template(smollm2):
    model, tokenizer = smollm2
    trace = aw.capture(model, tokenizer, "Hi", chat=True)
    assert trace.tokens.raw[0] == "<|im_start|>"
    assert trace.text.rstrip().endswith("<|im_start|>assistant")


# ----------------------------------------------------------------------------- bad input
def _no_partial_state(model):
    return all(not m._forward_hooks for m in model.modules())


def test_empty_prompt_is_refused(word_tokenizer):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="prompt is empty"):
        aw.capture(model, word_tokenizer, "   ")
    assert _no_partial_state(model)


@pytest.mark.parametrize("kwargs, message", [
    ({"layers": [2]}, r"layers must be integers in 0\.\.1"),
    ({"heads": [4]}, r"heads must be integers in 0\.\.3"),
    ({"layers": []}, "layers is empty"),
    ({"max_new_tokens": -1}, "max_new_tokens must be a non-negative integer"),
    ({"max_new_tokens": 2, "num_beams": 2}, "num_beams=2 is not supported"),
])
def test_out_of_range_selection_is_refused(word_tokenizer, kwargs, message):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=message):
        aw.capture(model, word_tokenizer, PROMPT, **kwargs)
    assert _no_partial_state(model)


def test_encoder_cannot_generate(word_tokenizer):
    with pytest.raises(ValueError, match="is an encoder and cannot generate"):
        aw.capture(tiny_model("bert"), word_tokenizer, PROMPT, max_new_tokens=3)


# Eager weights are taken by hooks only where queries and keys cannot be tapped (encoder-decoder
# models); those weights are checked as they arrive.
def test_attention_without_weights_fails_loudly(word_tokenizer):
    model = tiny_model("bart")
    attn = model.model.decoder.layers[1].self_attn
    attn.register_forward_hook(lambda m, a, out: (out[0], None))  # what SDPA/flash give back
    with pytest.raises(aw.CaptureError, match="decoder attention layer 1 .*returned no attention weights"):
        aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=2)


def test_weights_that_do_not_sum_to_one_name_the_layer_and_head(word_tokenizer):
    model = tiny_model("bart")
    model.model.decoder.layers[0].self_attn.register_forward_hook(lambda m, a, out: (out[0], out[1] * 1.5))
    with pytest.raises(aw.CaptureError, match="decoder attention layer 0 head 0: rows sum to 1"):
        aw.capture(model, word_tokenizer, PROMPT, target="w3 w4 w5")


def test_weights_above_the_diagonal_are_reported(word_tokenizer):
    def leak(m, a, out):
        w = out[1].clone()
        w[..., 0, :] = 1.0 / w.shape[-1]  # the first query sees the future
        return out[0], w

    model = tiny_model("bart")
    model.model.decoder.layers[1].self_attn.register_forward_hook(leak)
    with pytest.raises(aw.CaptureError, match="decoder attention layer 1 head 0 attends to future positions"):
        aw.capture(model, word_tokenizer, PROMPT, target="w3 w4 w5")


def test_over_budget_request_is_refused_before_running(word_tokenizer):
    model = tiny_model("llama")
    calls = []
    model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(aw.MemoryBudgetError) as err:
        aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=4, memory_budget=1000)
    msg = str(err.value)
    assert "over the budget" in msg and "Cheaper choices" in msg and "layers=[1]" in msg
    assert calls == []  # nothing ran


def test_failed_capture_leaves_the_model_usable(word_tokenizer):
    model = tiny_model("llama")
    with pytest.raises(ValueError):
        aw.capture(model, word_tokenizer, PROMPT, heads=[9])
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=2)
    assert len(trace) == 9


def test_smollm2_capture_of_the_france_prompt_keeps_prompt_and_generation_apart(france_trace):
    p = france_trace.prompt_len
    assert FRANCE_PROMPT in france_trace.text
    assert france_trace.spans["generated"] == (p, len(france_trace))
    assert france_trace.tokens.find("Paris")[0] < p


def test_encoder_decoder_forward_pass_teacher_forces_the_target(word_tokenizer):
    model = tiny_model("t5")
    trace = aw.capture(model, word_tokenizer, PROMPT, target="w3 w8 w9")
    assert trace.tokens.ids.tolist()[:1] == [0] and len(trace) == 4
    assert trace.spans == {"source": (0, 7), "target": (0, 4)}
    for name, expected in reference_attention(model, trace).items():
        assert np.abs(trace.attention(name) - expected).max() <= 2e-3, name


def test_token_ids_capture_exactly_those_tokens(word_tokenizer):
    model = tiny_model("llama")
    ids = [3, 3, 50, 7]
    trace = aw.capture(model, word_tokenizer, ids)
    assert trace.tokens.ids.tolist() == ids
    from_tensor = aw.capture(model, word_tokenizer, torch.tensor(ids))
    np.testing.assert_array_equal(trace.attention(), from_tensor.attention())
    with pytest.raises(ValueError, match="prompt is empty"):
        aw.capture(model, word_tokenizer, torch.tensor([], dtype=torch.long))


def test_eager_weights_of_a_bfloat16_model_are_checked_with_bfloat16_tolerance(word_tokenizer):
    model = tiny_model("bart").to(torch.bfloat16)  # captured from eager weights by hooks
    trace = aw.capture(model, word_tokenizer, PROMPT, target="w3 w4 w5")
    assert set(trace.blocks) == {"encoder", "decoder", "cross"}
    assert np.abs(trace.attention("decoder").sum(-1) - 1).max() <= 2e-2
