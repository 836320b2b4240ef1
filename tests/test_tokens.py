"""Tokens shown the way the tokenizer means them."""

from __future__ import annotations

import attn_widget as aw
from attn_widget.tokens import token_table


def test_byte_level_tokens_join_into_the_real_text(smollm2):
    _, tokenizer = smollm2
    text = "Hello world, Paris é 日本"
    ids = tokenizer(text)["input_ids"]
    table = token_table(tokenizer, ids)
    assert table.full_text == text
    assert table.raw[1] == "Ġworld" and table.text[1] == " world"


def test_partial_utf8_bytes_display_as_escapes(smollm2):
    _, tokenizer = smollm2
    table = token_table(tokenizer, tokenizer("日本")["input_ids"])
    assert table.raw[:2] == ["æĹ", "¥"]
    assert table.display[0] == "\\xe6\\x97" and table.display[1] == "\\xa5"
    assert table.text[0] == "" and table.text[1] == "日"


def test_wordpiece_continuations_attach_to_their_word():
    _, tokenizer = aw.load_model("minilm")
    table = token_table(tokenizer, tokenizer("worldly paris")["input_ids"])
    assert table.raw == ["[CLS]", "world", "##ly", "paris", "[SEP]"]
    assert table.special == [True, False, False, False, True]
    assert "worldly paris" in table.full_text
