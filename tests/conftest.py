"""Shared fixtures: the bundled real model, the France debugging session of "Understanding What Your
Model Attends To", tiny random models."""

from __future__ import annotations

import os

import pytest

FRANCE_PROMPT = "The capital of France is Paris. What is the capital of France?"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded at test time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct, eager attention, loaded once per run."""
    import attn_widget as aw

    return aw.load_model("smollm2")


@pytest.fixture(scope="session")
def france_trace(smollm2):
    """The article's debugging session: the France prompt through the chat template, 20 new tokens."""
    import attn_widget as aw

    model, tokenizer = smollm2
    return aw.capture(model, tokenizer, FRANCE_PROMPT, max_new_tokens=20, chat=True)


@pytest.fixture(scope="session")
def word_tokenizer():
    """A whitespace tokenizer over the words w0..w99, for tiny random models."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(100)}
    vocab["[UNK]"] = 100
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[UNK]",
                                   eos_token="w99")


def tiny_model(kind: str):
    """A randomly initialised 2-layer model of one family, eager attention, in eval mode."""
    import torch
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(0)
    common = {"vocab_size": 101, "attn_implementation": "eager"}
    if kind == "llama":
        m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, **common))
    elif kind == "gpt2":
        m = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=99,
                                       **common))
    elif kind == "t5":
        m = T5ForConditionalGeneration(T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                                decoder_start_token_id=0, pad_token_id=0,
                                                eos_token_id=99, **common))
    elif kind == "bart":
        m = BartForConditionalGeneration(BartConfig(
            d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
            max_position_embeddings=64, decoder_start_token_id=2, pad_token_id=1, bos_token_id=0,
            eos_token_id=99, forced_eos_token_id=None, **common))
    elif kind == "bert":
        m = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, **common))
    else:
        raise ValueError(kind)
    return m.eval()
