"""Reliability of capture: only its own passes are recorded, every argument is checked before the
model runs, budget refusals offer choices that fit, and token text loses nothing."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from conftest import tiny_model
from test_capture_fast import fast_model

import attn_widget as aw
from attn_widget.cli import main
from attn_widget.tokens import token_table

PROMPT = "w5 w7 w9 w11 w13 w2 w4 w6 w8"


def forward_calls(model) -> list:
    """A list that grows by one at every forward pass of ``model``'s first attention layer."""
    calls = []
    first = next(m for name, m in model.named_modules() if name.endswith(("layers.0", "h.0")))
    first.register_forward_hook(lambda *a: calls.append(1))
    return calls


# --------------------------------------------------------------------------- other threads
def with_a_pass_from_another_thread(model, module, other_inputs):
    """Have a plain forward pass of ``model`` run on another thread, to its end, in the middle of
    the first decode step (one new query) of ``module`` on this thread (deterministically: this
    thread waits for it)."""
    me, done = threading.get_ident(), []

    def interrupt(_, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if threading.get_ident() == me and hidden.shape[1] == 1 and not done:
            done.append(1)
            worker = threading.Thread(target=lambda: _plain_forward(model, other_inputs))
            worker.start()
            worker.join()

    return module.register_forward_pre_hook(interrupt, with_kwargs=True), done


def _plain_forward(model, inputs):
    with torch.no_grad():
        model(**inputs)


@pytest.mark.parametrize("family, path", [("bart", "eager weights by hooks"), ("llama", "queries and keys of "
                                          "its eager function"), ("llama-sdpa", "queries and keys of SDPA")])
def test_a_pass_of_the_same_model_on_another_thread_is_not_recorded(family, path, word_tokenizer):
    model = fast_model("llama") if family == "llama-sdpa" else tiny_model(family)
    options = {"max_new_tokens": 4, "min_new_tokens": 4}
    alone = aw.capture(model, word_tokenizer, PROMPT, **options)
    # shaped like the capture's own passes, so that a recorder taking it would not notice
    other = {"input_ids": torch.tensor([[7]])}
    if family == "bart":
        other = {"input_ids": torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5]]),
                 "decoder_input_ids": torch.tensor([[2]])}
        module = model.model.decoder.layers[1].self_attn
    else:
        module = model.model.layers[1].self_attn
    handle, interrupted = with_a_pass_from_another_thread(model, module, other)
    try:
        busy = aw.capture(model, word_tokenizer, PROMPT, **options)
    finally:
        handle.remove()
    assert interrupted, f"the other thread's pass did not run during the capture ({path})"
    assert busy.tokens.ids.tolist() == alone.tokens.ids.tolist()
    for name, block in alone.blocks.items():
        np.testing.assert_array_equal(busy.block(name).data, block.data, err_msg=f"{name} ({path})")


# --------------------------------------------------------------------------- arguments, up front
@pytest.mark.parametrize("prompt, message", [
    (torch.tensor([[1, 2, 3], [4, 5, 6]]), r"a batch of shape \(2, 3\)"),
    ([[1, 2, 3], [4, 5, 6]], "a batch of 2 sequences"),
    (["w1 w2", "w3 w4"], "a list of 2 strings; pass one string"),
])
def test_a_batch_of_prompts_is_refused_before_the_model_runs(prompt, message, word_tokenizer):
    model = tiny_model("llama")
    calls = forward_calls(model)
    with pytest.raises(ValueError, match=message):
        aw.capture(model, word_tokenizer, prompt)
    assert calls == []


def test_one_row_of_a_batch_is_one_prompt(word_tokenizer):
    trace = aw.capture(tiny_model("llama"), word_tokenizer, torch.tensor([[5, 7, 9]]))
    assert trace.tokens.ids.tolist() == [5, 7, 9]


@pytest.mark.parametrize("prompt, error, message", [
    ([True, False], TypeError, "token ids must be integers; got True"),
    (torch.tensor([True, False]), TypeError, "must be integers; got a tensor of torch.bool"),
    (torch.tensor([1.0, 2.0]), TypeError, "must be integers; got a tensor of torch.float32"),
    ([5, 500], ValueError, r"prompt token id 500 is outside this model's vocabulary \(0\.\.100\)"),
    ([-1, 5], ValueError, "prompt token id -1 is outside"),
])
def test_token_ids_that_are_not_the_models_are_refused(prompt, error, message, word_tokenizer):
    model = tiny_model("llama")
    calls = forward_calls(model)
    with pytest.raises(error, match=message):
        aw.capture(model, word_tokenizer, prompt)
    assert calls == []


@pytest.mark.parametrize("kwargs, error, message", [
    ({"layers": 5}, ValueError, r"layers must be integers in 0\.\.1 .*got 5"),
    ({"heads": [0, 9]}, ValueError, r"heads must be integers in 0\.\.3 .*got 9"),
    ({"layers": "01"}, TypeError, "layers must be an integer, a list of integers or None"),
    ({"layers": [True]}, TypeError, "layers must be integers"),
    ({"chat": "no"}, TypeError, "chat must be True or False; got 'no'"),
    ({"memory_budget": float("nan")}, ValueError, r"memory_budget \(bytes\) must be a finite number above 0"),
    ({"memory_budget": float("inf")}, ValueError, "must be a finite number above 0"),
    ({"memory_budget": "4GB"}, ValueError, "must be a finite number above 0.*got '4GB'"),
    ({"memory_budget": 0}, ValueError, "must be a finite number above 0"),
    ({"max_new_tokens": True}, ValueError, "max_new_tokens must be a non-negative integer"),
    ({"form": ["weights"]}, ValueError, "form must be one of"),
])
def test_bad_arguments_are_refused_before_the_model_runs(kwargs, error, message, word_tokenizer):
    model = tiny_model("llama")
    calls = forward_calls(model)
    with pytest.raises(error, match=message):
        aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=kwargs.pop("max_new_tokens", 2), **kwargs)
    assert calls == []


def test_layers_and_heads_may_be_generators_read_once(word_tokenizer):
    trace = aw.capture(tiny_model("llama"), word_tokenizer, PROMPT, layers=(i for i in [1]),
                       heads=range(1, 3))
    assert trace.layers == (1,) and trace.heads == (1, 2)
    assert trace.options["layers"] == [1] and trace.options["heads"] == [1, 2]


def test_a_session_checks_its_defaults_when_made_and_reuses_generators(word_tokenizer):
    model = tiny_model("llama")
    with pytest.raises(TypeError, match="chat must be True or False"):
        aw.AttentionSession(model, word_tokenizer, chat="yes")
    session = aw.AttentionSession(model, word_tokenizer, layers=(i for i in [0]))
    assert session.capture("w1 w2").layers == (0,) and session.capture("w3 w4").layers == (0,)


# --------------------------------------------------------------------------- budget messages
@pytest.mark.parametrize("family", ["llama", "llama-sdpa", "bart"])
@pytest.mark.parametrize("share", [0.02, 0.3, 0.7])
def test_every_budget_choice_fits_when_followed(family, share, word_tokenizer):
    model = fast_model("llama") if family == "llama-sdpa" else tiny_model(family)
    call = {"max_new_tokens": 6, "min_new_tokens": 6}
    with pytest.raises(aw.MemoryBudgetError) as whole:
        aw.capture(model, word_tokenizer, PROMPT, memory_budget=1, **call)
    need = whole.value.choices[-1]["memory_budget"]
    budget = max(1, int(need * share))
    with pytest.raises(aw.MemoryBudgetError) as refused:
        aw.capture(model, word_tokenizer, PROMPT, memory_budget=budget, **call)
    choices = refused.value.choices
    assert choices[-1] == {"memory_budget": need}
    for choice in choices:
        kwargs = {**call, "memory_budget": budget, **choice}
        if kwargs["min_new_tokens"] > kwargs["max_new_tokens"]:
            kwargs["min_new_tokens"] = kwargs["max_new_tokens"]
        trace = aw.capture(model, word_tokenizer, PROMPT, **kwargs)  # no MemoryBudgetError
        assert trace.n_generated == kwargs["max_new_tokens"]
        assert all(f"{key}=" in str(refused.value) for key in choice)


def test_a_small_budget_names_sizes_in_sensible_units_and_what_would_fit(word_tokenizer):
    with pytest.raises(aw.MemoryBudgetError) as err:
        aw.capture(tiny_model("llama"), word_tokenizer, PROMPT, max_new_tokens=4, memory_budget=1000)
    message = str(err.value)
    assert "over the budget of 1000 bytes (memory_budget)" in message and "0.00 GiB" not in message
    assert "KiB" in message
    need = err.value.choices[-1]["memory_budget"]
    assert f"memory_budget={need}" in message
    if len(err.value.choices) == 1:  # nothing smaller fits: it says so instead of suggesting it
        assert "Even one layer and one head" in message


def test_a_choice_of_layers_is_shown_as_a_call_would_take_it(word_tokenizer):
    model = tiny_model("llama")
    with pytest.raises(aw.MemoryBudgetError) as whole:  # 49 tokens: the stored weights dominate
        aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=40, memory_budget=1)
    with pytest.raises(aw.MemoryBudgetError) as err:
        aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=40,
                   memory_budget=whole.value.choices[-1]["memory_budget"] * 0.7)
    layers = [c for c in err.value.choices if "layers" in c]
    assert layers and f"layers={layers[0]['layers']!r}" in str(err.value)


# --------------------------------------------------------------------------- models by name
def test_an_unknown_model_name_is_named_with_what_to_pass(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["snapshot", "--model", "nosuchmodel", "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert "cannot load model 'nosuchmodel'" in err and "not a bundled model ('smollm2', 'minilm')" in err
    assert "Pass 'smollm2' or 'minilm', the path of a saved model folder, or a hub id" in err


def test_the_command_line_refuses_a_budget_that_is_not_a_number_above_zero(tmp_path, capsys):
    for bad in ("nan", "inf", "0", "-3", "lots"):
        with pytest.raises(SystemExit) as exit_:
            main(["snapshot", "--trace", str(tmp_path / "x.attn"), "--budget-mb", bad])
        assert exit_.value.code == 2
        assert "expected a number of megabytes above 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- traces by hand
def random_rows(t=5, seed=0):
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((1, 2, t, t))) + np.eye(t)
    return a / a.sum(-1, keepdims=True)


@pytest.mark.parametrize("damage, message", [
    (lambda a: a * 5, r"layer 0 head 0 row 0 sums to 5"),
    (lambda a: np.where(a == a.max(), np.nan, a), "NaN or infinite"),
    (lambda a: a[:, :, :0, :0], r"at least one layer, head and token; got \(1, 2, 0, 0\)"),
    (lambda a: -a, "negative weights"),
    (lambda a: np.full_like(a, 1 / a.shape[-1]), "puts 0.8 of its weight above the diagonal"),
])
def test_from_dense_refuses_what_is_not_attention(damage, message):
    a = damage(random_rows())
    with pytest.raises(ValueError, match=message):
        aw.AttentionTrace.from_dense(a, [f"t{i}" for i in range(a.shape[-1])])


def test_from_dense_accepts_float16_rounding_and_checks_its_other_arguments():
    a = random_rows(t=64).astype(np.float16)
    assert aw.AttentionTrace.from_dense(a, [f"t{i}" for i in range(64)]).n_tokens == 64
    with pytest.raises(ValueError, match=r"heads must be 2 distinct non-negative integers .*got \[0\]"):
        aw.AttentionTrace.from_dense(random_rows(), list("abcde"), heads=[0])
    with pytest.raises(ValueError, match="prompt_len must be an integer between 0 and 5; got True"):
        aw.AttentionTrace.from_dense(random_rows(), list("abcde"), prompt_len=True)


def test_span_occurrence_counts_from_the_last_when_negative():
    a = np.full((1, 1, 6, 6), 1 / 6)
    trace = aw.AttentionTrace.from_dense(a, ["a", " b", " a", " b", " a", " c"], causal=False)
    assert trace.span("a", occurrence=0) == [0]
    assert trace.span("a", occurrence=-1) == [4] and trace.span("a", occurrence=-3) == [0]
    with pytest.raises(ValueError, match=r"span 'a' occurs 3 times .*occurrence 3 is out of range \(0\.\.2, "
                                         r"or -3\.\.-1 from the last\)"):
        trace.span("a", occurrence=3)
    with pytest.raises(ValueError, match="occurrence -4 is out of range"):
        trace.span("a", occurrence=-4)
    with pytest.raises(TypeError, match="occurrence must be an integer"):
        trace.span("a", occurrence=True)
    with pytest.raises(ValueError, match="span text must be a non-empty string"):
        trace.span("")
    assert trace.span([0, -1]) == [0, 5]


# --------------------------------------------------------------------------- token text
def test_a_partial_character_before_a_special_token_is_kept(smollm2):
    _, tokenizer = smollm2
    first_half = tokenizer("日本")["input_ids"][:1]  # the first bytes of 日, no whole character
    ids = first_half + [tokenizer.convert_tokens_to_ids("<|im_end|>")] + tokenizer(" ok")["input_ids"]
    table = token_table(tokenizer, ids)
    assert table.full_text == tokenizer.decode(ids, skip_special_tokens=False)
    assert table.text[0] == "\ufffd" and table.display[0] == "\\xe6\\x97"


def test_control_characters_never_reach_a_snapshot_title_raw(tmp_path):
    trace = aw.AttentionTrace.from_dense(random_rows(), list("abcde"))
    page = aw.save_snapshot(trace, tmp_path / "nul.html", title="bad\x00title\x1b[31m").path.read_bytes()
    title = page[page.index(b"<title>"):page.index(b"</title>")]
    heading = page[page.index(b"<h1>"):page.index(b"</h1>")]
    assert title == b"<title>bad\\x00title\\x1b[31m" and heading == b"<h1>bad\\x00title\\x1b[31m"


def test_budget_mb_must_be_a_finite_number_above_zero(tmp_path):
    trace = aw.AttentionTrace.from_dense(random_rows(), list("abcde"))
    for bad in (float("nan"), math.inf, 0, -1, "25", True):
        with pytest.raises(ValueError, match=r"budget_mb \(megabytes of 10⁶ bytes\) must be a finite number"):
            aw.save_snapshot(trace, tmp_path / "x.html", budget_mb=bad)
    assert not (tmp_path / "x.html").exists()
