"""Value-weighted attention (Kobayashi et al. 2020): ``α_ij ‖f_h(x_j)‖`` with
``f_h(x_j) = (x_j W_V^h + b_V^h) W_O^h``.

Every expected value here is computed independently of capture: the model's own eager weights
(``output_attentions=True``), and forward hooks on its value and output projections found by
their names in each family's modeling code, ``f_h`` formed as full vectors (no QR shortcut).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FRANCE_PROMPT, tiny_model
from test_capture_fast import fast_model
from test_reliability_capture import with_a_pass_from_another_thread

import attn_widget as aw
from attn_widget import analysis

PROMPT = "w5 w7 w9 w11 w13 w2 w4 w6 w8"
TOLERANCE = 5e-3


# --------------------------------------------------------------------------- the reference
def _layers(model, family: str, kind: str) -> list:
    """(value layer, how to cut the values out of its output, output layer) per model layer."""
    if family == "gpt2":
        return [(b.attn.c_attn, "third", b.attn.c_proj) for b in model.transformer.h]
    if family == "gpt_neox":
        return [(b.attention.query_key_value, "neox", b.attention.dense) for b in model.gpt_neox.layers]
    if family == "opt":
        return [(b.self_attn.v_proj, None, b.self_attn.out_proj) for b in model.model.decoder.layers]
    if family == "phi3":
        return [(b.self_attn.qkv_proj, "phi3", b.self_attn.o_proj) for b in model.model.layers]
    if family == "bert":
        return [(b.attention.self.value, None, b.attention.output.dense) for b in model.encoder.layer]
    if family == "bart":
        side = model.model.encoder if kind == "encoder" else model.model.decoder
        attn = "encoder_attn" if kind == "cross" else "self_attn"
        return [(getattr(b, attn).v_proj, None, getattr(b, attn).out_proj) for b in side.layers]
    if family == "t5":
        side = model.encoder if kind == "encoder" else model.decoder
        attn = [b.layer[1].EncDecAttention if kind == "cross" else b.layer[0].SelfAttention
                for b in side.block]
        return [(a.v, None, a.o) for a in attn]
    return [(b.self_attn.v_proj, None, b.self_attn.o_proj) for b in model.model.layers]  # Llama-like


def _matrix(layer) -> torch.Tensor:
    """(out, in): transformers' Conv1D (GPT-2) stores (in, out)."""
    return layer.weight.t() if type(layer).__name__ == "Conv1D" else layer.weight


def _values(out: torch.Tensor, cut, n_heads: int, n_groups: int, d: int) -> torch.Tensor:
    """(keys, groups, d) values from a value layer's output (1, keys, …)."""
    x = out[0].float()
    if cut == "third":
        x = x[:, 2 * n_heads * d:]
    elif cut == "neox":  # per head: query, key, value
        x = x.reshape(x.shape[0], n_heads, 3, d)[:, :, 2]
    elif cut == "phi3":
        x = x[:, (n_heads + n_groups) * d:]
    return x.reshape(x.shape[0], n_groups, d)


def expected_norm_weighted(model, family: str, kinds: dict, run, n_heads: int, n_groups: int | None = None,
                           ) -> dict[str, np.ndarray]:
    """``{kind: (L, H, Q, K) α_ij ‖f_h(x_j)‖}`` from one eager pass ``run(model)`` that returns the
    model output with attentions; ``kinds`` maps a kind to the output field of its weights."""
    n_groups = n_groups or n_heads
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    kept, handles = {}, []
    for kind in kinds:
        for li, (v_layer, _, _) in enumerate(_layers(model, family, kind)):
            handles.append(v_layer.register_forward_hook(
                lambda m, a, out, key=(kind, li): kept.__setitem__(key, out.detach())))
    try:
        with torch.no_grad():
            out = run(model)
    finally:
        for h in handles:
            h.remove()
        model.set_attn_implementation(before)
    result = {}
    for kind, field in kinds.items():
        layers = []
        for li, (_, cut, o_layer) in enumerate(_layers(model, family, kind)):
            w = _matrix(o_layer).detach().float()
            d = w.shape[1] // n_heads
            v = _values(kept[(kind, li)], cut, n_heads, n_groups, d)
            norms = torch.stack([torch.linalg.vector_norm(v[:, h // (n_heads // n_groups)] @
                                                          w[:, h * d:(h + 1) * d].t(), dim=-1)
                                 for h in range(n_heads)])  # (H, K)
            alpha = getattr(out, field)[li][0].float()  # (H, Q, K)
            layers.append((alpha * norms[:, None, :]).numpy())
        result[kind] = np.stack(layers)
    return result


def relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def _decoder_run(ids):
    return lambda m: m(torch.tensor([ids]), output_attentions=True)


# --------------------------------------------------------------------------- decoder-only models
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3", "gpt2",
                                    "gpt_neox", "opt", "gpt_oss"])
@pytest.mark.parametrize("form", ["weights", "queries-keys"])
def test_norm_weighted_attention_equals_value_and_output_projection_hooks(family, form, word_tokenizer):
    model = fast_model(family)
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=6, min_new_tokens=6, form=form)
    assert trace.block().form == form and trace.options["values"] == "norms"
    n_heads = model.config.num_attention_heads
    groups = getattr(model.config, "num_key_value_heads", None) or n_heads
    expected = expected_norm_weighted(model, family, {"self": "attentions"},
                                      _decoder_run(trace.tokens.ids.tolist()), n_heads, groups)["self"]
    assert relative_difference(trace.attention(weighting="norm"), expected) <= TOLERANCE


def test_grouped_query_heads_read_their_groups_values_through_their_own_output_slice(word_tokenizer):
    model = fast_model("llama")  # 4 query heads over 2 key/value groups
    trace = aw.capture(model, word_tokenizer, PROMPT, values="norms")
    kept = {}
    handle = model.model.layers[1].self_attn.v_proj.register_forward_hook(
        lambda m, a, out: kept.__setitem__("v", out.detach()))
    with torch.no_grad():
        model(torch.tensor([trace.tokens.ids.tolist()]))
    handle.remove()
    v = kept["v"][0].reshape(-1, 2, 8)  # (keys, groups, head_dim)
    w = model.model.layers[1].self_attn.o_proj.weight.detach()
    for head in range(4):
        out = w[:, head * 8:(head + 1) * 8].t()
        own = torch.linalg.vector_norm(v[:, head // 2] @ out, dim=-1).numpy()
        other = torch.linalg.vector_norm(v[:, 1 - head // 2] @ out, dim=-1).numpy()
        np.testing.assert_allclose(trace.value_norms(1, head), own, rtol=1e-4)
        assert relative_difference(trace.value_norms(1, head), other) > 0.05  # the mapping matters
    # heads of one group share values but not output slices: their norms differ
    assert relative_difference(trace.value_norms(1, 0), trace.value_norms(1, 1)) > 0.05


def test_selected_layers_and_heads_keep_their_own_norms(word_tokenizer):
    model = fast_model("llama")
    whole = aw.capture(model, word_tokenizer, PROMPT)
    part = aw.capture(model, word_tokenizer, PROMPT, layers=[1], heads=[3, 0])
    for head in (0, 3):
        np.testing.assert_allclose(part.value_norms(1, head), whole.value_norms(1, head), rtol=1e-5)
    narrowed = whole.narrow(layers=[1], heads=[3])
    np.testing.assert_array_equal(narrowed.head(1, 3, weighting="norm"), whole.head(1, 3, weighting="norm"))


# --------------------------------------------------------------------------- encoders and cross-attention
def test_a_bidirectional_encoder_is_value_weighted_like_its_hooks(word_tokenizer):
    model = tiny_model("bert")
    trace = aw.capture(model, word_tokenizer, PROMPT)
    expected = expected_norm_weighted(model, "bert", {"self": "attentions"},
                                      _decoder_run(trace.tokens.ids.tolist()), 4)["self"]
    assert not trace.block().causal
    assert relative_difference(trace.attention(weighting="norm"), expected) <= TOLERANCE


@pytest.mark.parametrize("family", ["bart", "t5"])
@pytest.mark.parametrize("new", [0, 4])
def test_encoder_decoder_blocks_and_cross_attention_are_value_weighted_like_their_hooks(family, new,
                                                                                        word_tokenizer):
    model = tiny_model(family)
    kwargs = {"max_new_tokens": new, "min_new_tokens": new} if new else {"target": "w3 w4 w5"}
    trace = aw.capture(model, word_tokenizer, PROMPT, **kwargs)
    assert set(trace.blocks) == {"encoder", "decoder", "cross"} and trace.has_value_norms
    source = torch.tensor([trace.source_tokens.ids.tolist()])
    target = torch.tensor([trace.tokens.ids.tolist()])
    expected = expected_norm_weighted(
        model, family, {"encoder": "encoder_attentions", "decoder": "decoder_attentions",
                        "cross": "cross_attentions"},
        lambda m: m(input_ids=source, decoder_input_ids=target, output_attentions=True, use_cache=False), 4)
    for kind in ("encoder", "decoder", "cross"):
        got = trace.attention(kind, weighting="norm")
        assert got.shape == expected[kind].shape
        assert relative_difference(got, expected[kind]) <= TOLERANCE, kind


def test_the_minilm_encoder_is_value_weighted_like_its_hooks():
    model, tokenizer = aw.load_model("minilm")
    trace = aw.capture(model, tokenizer, "Paris is the capital of France.")
    expected = expected_norm_weighted(model, "bert", {"self": "attentions"},
                                      _decoder_run(trace.tokens.ids.tolist()), 12)["self"]
    assert relative_difference(trace.attention(weighting="norm"), expected) <= TOLERANCE


# --------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def smollm2_short(smollm2):
    model, tokenizer = smollm2
    return aw.capture(model, tokenizer, FRANCE_PROMPT, chat=True, max_new_tokens=4, values="layer")


def test_smollm2_norm_weighted_attention_equals_its_hooks(smollm2, smollm2_short):
    model, _ = smollm2
    expected = expected_norm_weighted(model, "smollm2", {"self": "attentions"},
                                      _decoder_run(smollm2_short.tokens.ids.tolist()), 9, 3)["self"]
    assert relative_difference(smollm2_short.attention(weighting="norm"), expected) <= TOLERANCE


def test_smollm2_layer_contribution_is_the_norm_of_the_summed_head_vectors(smollm2, smollm2_short):
    model, _ = smollm2
    layer, query = 20, len(smollm2_short) - 1
    attn = model.model.layers[layer].self_attn
    kept = {}
    handle = attn.v_proj.register_forward_hook(lambda m, a, out: kept.__setitem__("v", out.detach()))
    with torch.no_grad():
        model(torch.tensor([smollm2_short.tokens.ids.tolist()]))
    handle.remove()
    v = kept["v"][0].reshape(-1, 3, 64)
    alpha = torch.from_numpy(smollm2_short.row(query)[layer])  # (heads, keys)
    w = attn.o_proj.weight.detach()
    summed = sum(alpha[h][:, None] * (v[:, h // 3] @ w[:, h * 64:(h + 1) * 64].t()) for h in range(9))
    expected = torch.linalg.vector_norm(summed, dim=-1).numpy()
    got = smollm2_short.layer_contribution(layer, query)
    assert relative_difference(got, expected) <= TOLERANCE
    np.testing.assert_allclose(smollm2_short.layer_contribution(layer)[query], got, rtol=1e-5, atol=1e-6)
    # heads partly cancel: the layer's contribution is at most the sum of the heads' norms
    assert (got <= smollm2_short.row(query, weighting="norm")[layer].sum(axis=0) * (1 + 1e-5)).all()


def test_smollm2_first_token_share_drops_when_weighted_by_value_norms(smollm2_short):
    """The first token takes about half of the attention; weighted by what its value contributes,
    much less (the issue measured ≈ 0.52 raw and ≈ 0.32 norm-weighted on a short prompt)."""
    raw = smollm2_short.attention()[:, :, 1:]
    weighted = smollm2_short.attention(weighting="norm")[:, :, 1:]
    raw_share = float(raw[..., 0].mean())
    norm_share = float((weighted[..., 0] / weighted.sum(axis=-1)).mean())
    assert 0.45 < raw_share < 0.65 and 0.25 < norm_share < 0.45
    assert norm_share < raw_share - 0.1


# --------------------------------------------------------------------------- views and analysis
def test_every_view_takes_the_weighting_and_agrees_with_the_dense_head(word_tokenizer):
    model = fast_model("llama")
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=5, min_new_tokens=5, form="queries-keys")
    norms = trace.value_norms(1, 2)
    head = trace.head(1, 2, weighting="norm")
    np.testing.assert_allclose(head, trace.head(1, 2) * norms[None, :], rtol=1e-6)
    np.testing.assert_allclose(trace.row(7, weighting="norm")[1, 2], head[7], rtol=1e-6)
    np.testing.assert_allclose(trace.step(2, weighting="norm")[1, 2], head[trace.step_position(2)], rtol=1e-6)
    mean = trace.layer_mean(1, weighting="norm")
    np.testing.assert_allclose(mean, trace.attention(layers=[1], weighting="norm")[0].mean(axis=0), rtol=1e-5)
    b = trace.block()
    np.testing.assert_allclose(b.pooled(1, 2, 3, "norm")[1, 1], head[3:6, 3:6].max(), rtol=1e-6)
    np.testing.assert_allclose(b.region(1, None, (2, 9), (0, 4), "norm"), mean[2:9, 0:4], rtol=1e-5)
    assert not np.allclose(b.pooled(1, 2, 3), b.pooled(1, 2, 3, "norm"))  # not a stale cache entry


def test_norms_survive_a_save_and_load_and_old_files_still_load(tmp_path, word_tokenizer):
    model = fast_model("llama")
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=3, values="layer")
    back = aw.load_trace(trace.save(tmp_path / "run.attn"))
    np.testing.assert_array_equal(back.head(1, 1, weighting="norm"), trace.head(1, 1, weighting="norm"))
    np.testing.assert_array_equal(back.layer_contribution(0), trace.layer_contribution(0))
    assert (tmp_path / "run.attn").read_bytes()[10] == 4  # format version 4: it holds value norms
    plain = aw.capture(model, word_tokenizer, PROMPT, values=False)
    path = plain.save(tmp_path / "plain.attn")
    assert path.read_bytes()[10] == 3  # nothing new in it: older readers still open it
    with pytest.raises(ValueError, match="weighting='norm' needs the norms of the values.*values=False"):
        aw.load_trace(path).head(0, 0, weighting="norm")


def test_bad_weightings_and_values_are_refused_with_what_is_allowed(word_tokenizer):
    model = fast_model("llama")
    with pytest.raises(ValueError, match="values must be 'auto'.*got 'vectors'"):
        aw.capture(model, word_tokenizer, PROMPT, values="vectors")
    trace = aw.capture(model, word_tokenizer, PROMPT)
    with pytest.raises(ValueError, match="weighting must be 'attention'.*or 'norm'.*got 'value'"):
        trace.head(0, 0, weighting="value")
    with pytest.raises(ValueError, match="capture with values='layer'"):
        trace.layer_contribution(0)


def test_a_gate_between_attention_and_the_output_projection_leaves_the_norms_out(word_tokenizer):
    model = fast_model("llama")
    for layer in model.model.layers:  # the output projection no longer receives Σ α v
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, args: (args[0] * 0.5,))

    class Gated(type(model)):
        pass

    model.__class__ = Gated  # a class of its own: the check runs once per class
    trace = aw.capture(model, word_tokenizer, PROMPT)
    assert trace.options["values"] == "none" and "differs from the weights times the values" in \
        trace.options["values_unavailable"]
    with pytest.raises(ValueError, match="differs from the weights times the values"):
        trace.head(0, 0, weighting="norm")
    with pytest.raises(aw.CaptureError, match="values='norms'.*capture with values=False"):
        aw.capture(model, word_tokenizer, PROMPT, values="norms")


def test_analysis_reads_norm_weighted_rows_renormalised_and_says_so(word_tokenizer):
    model = fast_model("llama")
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=6, min_new_tokens=6)
    weighted = trace.attention(weighting="norm")
    shares = weighted / weighted.sum(axis=-1, keepdims=True)
    q = trace.step_position(2)
    np.testing.assert_allclose(analysis.attention_from(trace, q, weighting="norm"),
                               shares[:, :, q].mean(axis=(0, 1)), rtol=1e-5)
    sinks = analysis.find_attention_sinks(trace, weighting="norm")
    np.testing.assert_allclose(sinks.received, shares.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-7)
    rollout = analysis.attention_rollout(trace, positions=[q], weighting="norm")
    expected = np.eye(len(trace))[[q]]
    for layer in reversed(range(2)):
        a = 0.5 * shares[layer].mean(axis=0) + 0.5 * np.eye(len(trace))
        expected = expected @ (a / a.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(rollout, expected, rtol=1e-4, atol=1e-6)
    influence = analysis.trace_influence(trace, q, weighting="norm")
    np.testing.assert_allclose(influence.attention, shares[1, :, q].mean(axis=0), rtol=1e-5)
    for text in (influence.summary(), sinks.summary(), analysis.ignored_context(
            trace, q + 1, "w5", weighting="norm").summary(),
            analysis.hallucination(trace, q + 1, weighting="norm").summary(),
            analysis.repetition(trace, weighting="norm").summary()):
        assert "value-weighted" in text
    assert "attention weights" in analysis.trace_influence(trace, q).summary()


def test_a_model_with_a_layer_offloaded_to_disk_keeps_the_same_norms(word_tokenizer, tmp_path):
    from accelerate import dispatch_model

    plain = aw.capture(fast_model("llama"), word_tokenizer, PROMPT, max_new_tokens=3, min_new_tokens=3)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = dispatch_model(fast_model("llama"), device_map=device_map, offload_dir=str(tmp_path))
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=3, min_new_tokens=3)
    np.testing.assert_allclose(trace.attention(weighting="norm"), plain.attention(weighting="norm"),
                               rtol=1e-5)


@pytest.mark.parametrize("family", ["bart", "llama-sdpa"])
def test_a_pass_of_the_same_model_on_another_thread_leaves_the_norms_alone(family, word_tokenizer):
    model = fast_model("llama") if family == "llama-sdpa" else tiny_model(family)
    options = {"max_new_tokens": 4, "min_new_tokens": 4}
    alone = aw.capture(model, word_tokenizer, PROMPT, **options)
    if family == "bart":  # a source of the capture's length: its values would fit anywhere
        other = {"input_ids": torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5]]),
                 "decoder_input_ids": torch.tensor([[2]])}
        module = model.model.decoder.layers[1].self_attn
    else:
        other, module = {"input_ids": torch.tensor([[7]])}, model.model.layers[1].self_attn
    handle, interrupted = with_a_pass_from_another_thread(model, module, other)
    try:
        busy = aw.capture(model, word_tokenizer, PROMPT, **options)
    finally:
        handle.remove()
    assert interrupted
    for name, block in alone.blocks.items():
        np.testing.assert_array_equal(busy.block(name).norms.norms, block.norms.norms, err_msg=name)


def test_norms_taken_in_batches_of_decode_steps_equal_norms_taken_one_step_at_a_time(word_tokenizer,
                                                                                   monkeypatch):
    from attn_widget import values

    model = fast_model("llama")
    options = {"max_new_tokens": 7, "min_new_tokens": 7, "values": "layer"}
    waiting = aw.capture(model, word_tokenizer, PROMPT, **options)  # every step waits for the end
    monkeypatch.setattr(values, "BATCH", 1)  # each step at once: the prompt, then every token
    at_once = aw.capture(model, word_tokenizer, PROMPT, **options)
    monkeypatch.setattr(values, "BATCH", 3)  # the prompt at once; steps three at a time, the rest at the end
    in_threes = aw.capture(model, word_tokenizer, PROMPT, **options)
    for trace in (at_once, in_threes):
        np.testing.assert_allclose(trace.block().norms.norms, waiting.block().norms.norms, rtol=1e-5)
        np.testing.assert_allclose(trace.block().norms.gram, waiting.block().norms.gram, rtol=1e-4, atol=1e-7)
