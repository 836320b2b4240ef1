"""Token text as the tokenizer means it: raw token, id, real text and a display string.

Byte-level BPE (GPT-2, SmolLM2, Llama 3) spells bytes as printable characters (``Ġ`` is a
space) and can split one character over several tokens; SentencePiece uses ``▁`` for a space
and ``<0xNN>`` for raw bytes; WordPiece marks continuations with ``##``. We rebuild each token's
bytes and decode the stream incrementally, so the tokens' texts join into the real text (for
substring search and offsets), while a token holding only part of a character displays its
bytes as ``\\xNN`` instead of a replacement character.

:class:`TokenTable` holds one sequence's tokens; :func:`token_table` builds one from a tokenizer.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from .selection import check_index, is_int


@dataclasses.dataclass(frozen=True)
class Token:
    """One token as the tokenizer means it.

    ``raw`` is the tokenizer's own string (``Ġthe``, ``▁the``, ``##ing``); ``text`` the text it
    adds to the full text (``" the"``; the tokens' texts join into the real text, so a token
    holding only the first bytes of a character has ``text == ""``); ``display`` is what to
    show for it, with bytes that are not complete UTF-8 written as ``\\xNN``. ``start``/``end``
    are character offsets of ``text`` in the trace's full text.
    """

    id: int
    raw: str
    text: str
    start: int
    end: int
    special: bool = False
    display: str = ""


class TokenTable(Sequence):
    """The tokens of one sequence, indexable like a list of :class:`Token`."""

    def __init__(self, ids: Sequence[int], raw: Sequence[str], text: Sequence[str],
                 special: Sequence[bool] | None = None, display: Sequence[str] | None = None):
        if not (len(ids) == len(raw) == len(text)):
            raise ValueError(
                f"ids, raw and text must have one entry per token; got {len(ids)}, {len(raw)}, "
                f"{len(text)}")
        self.ids = np.asarray(ids, dtype=np.int64)
        self.raw = [str(r) for r in raw]
        self.text = [str(t) for t in text]
        self.special = [bool(s) for s in (special if special is not None else [False] * len(ids))]
        self.display = [str(d) for d in display] if display is not None else list(self.text)
        if len(self.special) != len(self.ids) or len(self.display) != len(self.ids):
            raise ValueError("special and display must have one entry per token")
        ends = np.cumsum([len(t) for t in self.text], dtype=np.int64)
        self.offsets = np.stack([ends - [len(t) for t in self.text], ends], axis=1) if len(
            self.text) else np.zeros((0, 2), dtype=np.int64)

    @property
    def full_text(self) -> str:
        return "".join(self.text)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = check_index(i, len(self), "token index")
        return Token(int(self.ids[i]), self.raw[i], self.text[i], int(self.offsets[i, 0]),
                     int(self.offsets[i, 1]), self.special[i], self.display[i])

    def __iter__(self) -> Iterator[Token]:
        return (self[i] for i in range(len(self)))

    def find(self, substring: str, occurrence: int = 0) -> list[int]:
        """Token positions covering the ``occurrence``-th match of ``substring`` in the text
        (counting from 0; negative counts from the last match: ``-1`` is the last).

        Raises ``ValueError`` naming the substring when it is not in the text, or occurs fewer
        times than ``occurrence`` asks.
        """
        if not isinstance(substring, str) or not substring:
            raise ValueError(f"span text must be a non-empty string; got {substring!r}")
        if not is_int(occurrence):
            raise TypeError(f"occurrence must be an integer (negative counts from the last match); got "
                            f"{occurrence!r}")
        text = self.full_text
        starts = []
        start = text.find(substring)
        while start >= 0 and (occurrence < 0 or len(starts) <= occurrence):
            starts.append(start)
            start = text.find(substring, start + 1)
        if not starts:
            raise ValueError(
                f"span {substring!r} not found in the text (occurrence {occurrence}); the "
                f"text is {text[:200]!r}{'…' if len(text) > 200 else ''}")
        if not -len(starts) <= occurrence < len(starts):
            raise ValueError(f"span {substring!r} occurs {len(starts)} time{'s' * (len(starts) > 1)} in the "
                             f"text; occurrence {occurrence} is out of range (0..{len(starts) - 1}, or "
                             f"-{len(starts)}..-1 from the last)")
        start = starts[occurrence]
        end = start + len(substring)
        hits = np.nonzero((self.offsets[:, 0] < end) & (self.offsets[:, 1] > start))[0]
        return [int(h) for h in hits]

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids.tolist(), "raw": self.raw, "text": self.text,
                "special": self.special, "display": self.display}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TokenTable:
        return cls(d["ids"], d["raw"], d["text"], d.get("special"), d.get("display"))




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
            # a special token or an undecodable one ends a pending character: its bytes decode
            # to U+FFFD there (as the tokenizer's own decode has them), on the token before
            pending = decoder.decode(b"", final=True)
            if pending and texts:
                texts[-1] += pending
            decoder.reset()
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


def printable(text: str) -> str:
    """``text`` with control characters (NUL, escape, DEL, C1…; not tab or newline) written as
    ``\\xNN`` escapes: for page titles and other one-line places where they must not go raw."""
    return "".join(f"\\x{ord(c):02x}" if (ord(c) < 32 and c not in "\t\n") or 127 <= ord(c) < 160 else c
                   for c in text)


def prompt_words(trace) -> str:
    """The prompt's text without special tokens, as titles quote it; for a chat-template prompt,
    the user's message (its last line of words) rather than the system prompt before it."""
    start, stop = trace.spans.get("prompt", trace.spans.get("input", (0, len(trace.tokens))))
    text = "".join(t for t, special in zip(trace.tokens.text[start:stop], trace.tokens.special[start:stop])
                   if not special)
    lines = [line.strip() for line in text.splitlines() if len(line.split()) > 1]
    if trace.options.get("chat") and lines:
        text = lines[-1]
    return text
