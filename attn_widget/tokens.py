"""Token text as the tokenizer means it: raw token, id, real text and a display string.

Byte-level BPE (GPT-2, SmolLM2, Llama 3) spells bytes as printable characters (``Ġ`` is a
space) and can split one character over several tokens; SentencePiece uses ``▁`` for a space
and ``<0xNN>`` for raw bytes; WordPiece marks continuations with ``##``. We rebuild each token's
bytes and decode the stream incrementally, so the tokens' texts join into the real text (for
substring search and offsets), while a token holding only part of a character displays its
bytes as ``\\xNN`` instead of a replacement character.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from functools import lru_cache

from .trace import TokenTable


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # The GPT-2 byte <-> printable-character table: printable bytes map to themselves, the rest
    # to code points from 256 up, in byte order.
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _scheme(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = repr(getattr(backend, "decoder", None)) if backend is not None else ""
    if "ByteLevel" in decoder:
        return "bytelevel"
    if "WordPiece" in decoder:
        return "wordpiece"
    if "Metaspace" in decoder or "ByteFallback" in decoder or "▁" in "".join(
            tokenizer.convert_ids_to_tokens(list(range(min(200, len(tokenizer)))))):
        return "sentencepiece"
    return "decode"


def _token_bytes(scheme: str, raw: str, position: int) -> bytes | None:
    if scheme == "bytelevel":
        table = _byte_decoder()
        if all(c in table for c in raw):
            return bytes(table[c] for c in raw)
        return None
    if scheme == "sentencepiece":
        if len(raw) == 6 and raw.startswith("<0x") and raw.endswith(">"):
            try:
                return bytes([int(raw[3:5], 16)])
            except ValueError:
                return None
        return raw.replace("▁", " ").encode("utf-8")
    if scheme == "wordpiece":
        if raw.startswith("##"):
            return raw[2:].encode("utf-8")
        return (raw if position == 0 else " " + raw).encode("utf-8")
    return None


def token_table(tokenizer, ids: Sequence[int]) -> TokenTable:
    """A :class:`TokenTable` for ``ids`` with raw tokens, real text and display strings."""
    ids = [int(i) for i in ids]
    raw = tokenizer.convert_ids_to_tokens(ids)
    raw = [r if r is not None else f"<id {i}>" for r, i in zip(raw, ids)]
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    special = [i in special_ids for i in ids]
    scheme = _scheme(tokenizer)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts, displays = [], []
    for pos, (i, r, sp) in enumerate(zip(ids, raw, special)):
        data = None if sp else _token_bytes(scheme, r, pos)
        if sp:
            text = r
        elif data is None:
            text = tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        else:
            text = decoder.decode(data)
        if sp or data is None:
            decoder.reset()  # a special token or an undecodable one ends any pending character
            display = text
        else:
            try:
                display = data.decode("utf-8")
            except UnicodeDecodeError:
                display = "".join(f"\\x{b:02x}" for b in data)
        texts.append(text)
        displays.append(display)
    if texts and scheme != "decode":
        texts[-1] += decoder.decode(b"", final=True)
    return TokenTable(ids, raw, texts, special, displays)
