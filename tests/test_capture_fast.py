"""Capture on the model's own attention kernel: queries and keys kept, weights recomputed exactly.

Tiny randomly initialised models of each family, loaded with SDPA (their default fast kernel
here), are captured during generation and compared with one eager forward pass over the final
tokens; the model must still be on SDPA afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model

import attn_widget as aw

PROMPT = "w5 w7 w9 w11 w13 w2 w4 w6 w8"


def _config(family: str):
    import transformers as tf

    small = dict(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if family == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**small))
    if family == "qwen3":  # q/k norm before RoPE
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(head_dim=8, **small))
    if family == "mistral":  # a sliding window shorter than the sequence
        return tf.MistralForCausalLM(tf.MistralConfig(sliding_window=4, **small))
    if family == "gemma3":  # local sliding-window layers and global ones, q/k norm
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(head_dim=8, sliding_window=4, layer_types=[
            "sliding_attention", "full_attention"], **small))
    if family == "phi3":
        return tf.Phi3ForCausalLM(tf.Phi3Config(pad_token_id=0, **small))
    if family == "gpt_neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
            vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))
    if family == "opt":
        return tf.OPTForCausalLM(tf.OPTConfig(vocab_size=101, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                              num_attention_heads=4, word_embed_proj_dim=32))
    if family == "gemma2":  # soft-capping and sliding windows, eager attention only
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(head_dim=8, sliding_window=4, attn_logit_softcapping=5.0,
                                                    layer_types=["sliding_attention", "full_attention"],
                                                    **small))
    if family == "gpt_oss":  # learned sink logits
        return tf.GptOssForCausalLM(tf.GptOssConfig(
            head_dim=8, num_local_experts=2, num_experts_per_tok=1, sliding_window=4,
            layer_types=["sliding_attention", "full_attention"], **small))
    return tiny_model(family)


def fast_model(family: str):
    """A tiny ``family`` model on SDPA (eager for families that have no SDPA path)."""
    torch.manual_seed(0)
    model = _config(family).eval()
    if model._supports_sdpa:
        model.set_attn_implementation("sdpa")
    return model


def eager_reference(model, ids: list[int]) -> np.ndarray:
    """(L, H, T, T) attention of one eager forward pass over ``ids``; the model is put back."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    return torch.stack([a[0] for a in out.attentions]).float().numpy()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3", "gpt2",
                                    "gpt_neox", "opt"])
@pytest.mark.parametrize("form", ["weights", "queries-keys"])
def test_generation_on_sdpa_equals_an_eager_forward_pass_and_the_model_stays_on_sdpa(family, form,
                                                                                    word_tokenizer):
    model = fast_model(family)
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=8, min_new_tokens=8, form=form)
    assert trace.block().form == form
    assert model.config._attn_implementation == "sdpa"
    assert trace.options["attention"] == "sdpa"
    expected = eager_reference(model, trace.tokens.ids.tolist())
    got = trace.attention()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 2e-3


def test_learned_sink_logits_are_recomputed_exactly(word_tokenizer):
    # gpt-oss runs its sinks in eager or flash kernels only (flex refuses sinks on a CPU), so the
    # model runs here on its own eager function registered under another name: any kernel that
    # goes through transformers' attention interface is tapped the same way.
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    AttentionInterface.register("kernel_with_sinks", eager_attention_forward)
    AttentionMaskInterface.register("kernel_with_sinks", eager_mask)
    torch.manual_seed(0)
    model = _config("gpt_oss").eval()
    model.set_attn_implementation("kernel_with_sinks")
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=6, min_new_tokens=6)
    assert trace.options["attention"] == "kernel_with_sinks"
    expected = eager_reference(model, trace.tokens.ids.tolist())
    assert np.abs(trace.attention() - expected).max() <= 2e-3
    assert trace.attention().sum(-1).max() < 1  # the sink column took its share


def test_a_bidirectional_encoder_on_sdpa_is_captured_exactly(word_tokenizer):
    model = fast_model("bert")
    trace = aw.capture(model, word_tokenizer, PROMPT)
    assert trace.options["attention"] == "sdpa" and not trace.block().causal
    expected = eager_reference(model, trace.tokens.ids.tolist())
    assert np.abs(trace.attention() - expected).max() <= 2e-3


def test_an_encoder_decoder_model_falls_back_to_eager_and_is_put_back(word_tokenizer):
    model = fast_model("bart")
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=4)
    assert trace.options["attention"] == "eager"
    assert model.config._attn_implementation == "sdpa"


def test_only_the_kept_heads_and_layers_are_recomputed(word_tokenizer):
    model = fast_model("llama")
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=3, layers=[1], heads=[3, 0])
    expected = eager_reference(model, trace.tokens.ids.tolist())
    assert trace.layers == (1,) and trace.heads == (0, 3)
    assert np.abs(trace.attention() - expected[1:2][:, [0, 3]]).max() <= 2e-3


def test_the_model_is_put_back_when_capture_fails(word_tokenizer):
    from attn_widget.qk_capture import _TAPS

    model = fast_model("llama")
    with pytest.raises(ValueError, match="num_beams=2 is not supported"):
        aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=2, num_beams=2)
    assert model.config._attn_implementation == "sdpa" and _TAPS == {}


def test_another_thread_using_the_same_kernel_is_not_recorded(word_tokenizer):
    import threading

    model = fast_model("llama")
    other = fast_model("qwen2")
    stop = threading.Event()

    def busy():
        ids = torch.tensor([[1, 2, 3, 4, 5]])
        while not stop.is_set():
            with torch.no_grad():
                other(input_ids=ids)

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=6, min_new_tokens=6)
    finally:
        stop.set()
        worker.join()
    expected = eager_reference(model, trace.tokens.ids.tolist())
    assert np.abs(trace.attention() - expected).max() <= 2e-3


@pytest.mark.smollm2
def test_smollm2_on_sdpa_generation_equals_an_eager_forward_pass_for_every_head(smollm2):
    from conftest import FRANCE_PROMPT

    model, tokenizer = smollm2
    model.set_attn_implementation("sdpa")
    try:
        trace = aw.capture(model, tokenizer, FRANCE_PROMPT, max_new_tokens=12, min_new_tokens=12, chat=True)
        assert model.config._attn_implementation == "sdpa" and trace.options["attention"] == "sdpa"
        expected = eager_reference(model, trace.tokens.ids.tolist())
    finally:
        model.set_attn_implementation("eager")
    diff = np.abs(trace.attention() - expected).max(axis=(2, 3))
    assert diff.shape == (30, 9) and diff.max() <= 2e-3


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_half_precision_models_capture_within_their_precision(dtype, tolerance, word_tokenizer):
    model = fast_model("qwen2").to(dtype)
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=6, min_new_tokens=6)
    assert trace.model["dtype"] == str(dtype).replace("torch.", "")
    expected = eager_reference(model, trace.tokens.ids.tolist())
    assert np.abs(trace.attention() - expected).max() <= tolerance


def test_a_model_dispatched_by_accelerate_with_a_layer_on_disk_captures_identically(word_tokenizer, tmp_path):
    from accelerate import dispatch_model

    plain = aw.capture(fast_model("llama"), word_tokenizer, PROMPT, max_new_tokens=5, min_new_tokens=5)
    model = fast_model("llama")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=5, min_new_tokens=5)
    assert trace.tokens.ids.tolist() == plain.tokens.ids.tolist()
    np.testing.assert_allclose(trace.attention(), plain.attention(), atol=1e-6)
