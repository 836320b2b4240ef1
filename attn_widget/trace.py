"""AttentionTrace: the captured attention of one run, stored compactly.

The trace owns the tokens, the spans (prompt / generated, or source / target) and the
attention weights of every captured layer and head, stored as float16. Causal
self-attention is stored as its packed lower triangle: row ``i`` holds keys ``0..i`` and
rows are laid end to end, so row ``i`` starts at offset ``i * (i + 1) // 2``. That layout
lets capture append one decode step as one contiguous slice.

This module knows nothing of torch, widgets or browsers; it is plain numpy. The packed
layout lives in :mod:`attn_widget.geometry`, tokens in :mod:`attn_widget.tokens`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import n_from_packed, pack_causal, packed_rows, unpack_causal
from .selection import Indices, check_index, format_ranges, model_indices, position_in
from .storage import jsonable, write_atomically
from .tokens import TokenTable

FORMAT_NAME = "attn_widget.trace"
FORMAT_VERSION = 1
MAGIC = b"ATTNTRACE\x00"
_HEADER = struct.Struct("<10sIQ")  # magic, format version, json length
_ALIGN = 64


class TraceFormatError(ValueError):
    """A file is not a readable attn_widget trace (foreign, truncated, corrupted or newer)."""


@dataclasses.dataclass
class AttentionBlock:
    """One kind of attention in a trace: ``self``, or ``encoder``/``decoder``/``cross``.

    data : ndarray of float16
        causal blocks: shape (n_layers, n_heads, T * (T + 1) // 2), packed lower triangles;
        otherwise: shape (n_layers, n_heads, n_queries, n_keys).
    layers, heads : the model's layer and (query) head indices the rows of ``data`` hold.
    queries, keys : which token sequence each axis runs over: ``"tokens"`` or
        ``"source_tokens"``.
    """

    name: str
    causal: bool
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    data: np.ndarray
    queries: str = "tokens"
    keys: str = "tokens"

    @property
    def n_queries(self) -> int:
        return n_from_packed(self.data.shape[-1]) if self.causal else self.data.shape[2]

    @property
    def n_keys(self) -> int:
        return self.n_queries if self.causal else self.data.shape[3]

    def layer_pos(self, layer: int) -> int:
        return position_in(self.layers, layer, "layer", self.name)

    def head_pos(self, head: int) -> int:
        return position_in(self.heads, head, "head", self.name)

    def dense(self, li: int | slice | np.ndarray, hi: int | slice | np.ndarray) -> np.ndarray:
        """float32 dense (…, n_queries, n_keys) for positional indices into ``data``."""
        packed = self.data[li, hi]
        return unpack_causal(packed, self.n_queries) if self.causal else packed.astype(np.float32)

    def rows(self, li, hi, start: int, stop: int) -> np.ndarray:
        """float32 (…, stop - start, n_keys) for query rows ``start:stop``; zeros above diagonal."""
        if not self.causal:
            return self.data[li, hi, ..., start:stop, :].astype(np.float32)
        return packed_rows(self.data[li, hi], start, stop, self.n_keys)

    def mean_of_heads(self, li: int) -> np.ndarray:
        """float32 mean over the captured heads of ``data[li]``, in the stored layout."""
        return self.data[li].astype(np.float32).mean(axis=0)


class AttentionTrace:
    """Captured attention of one run, with its tokens.

    Build one with :func:`attn_widget.capture`, :meth:`from_dense` or :func:`load_trace`.

    Attributes
    ----------
    tokens : TokenTable
        Every token of the main sequence (decoder side for encoder-decoder models).
    source_tokens : TokenTable or None
        Encoder-side tokens of an encoder-decoder model.
    spans : dict of name -> (start, stop)
        ``prompt`` and ``generated`` for decoder-only models; ``input`` for encoders;
        ``source`` (over ``source_tokens``) and ``target`` for encoder-decoder models.
    blocks : dict of name -> AttentionBlock
        ``self`` for decoder-only and encoder-only models; ``encoder``, ``decoder`` and
        ``cross`` for encoder-decoder models.
    model : dict
        ``name``, ``architecture`` (``decoder``, ``encoder`` or ``encoder-decoder``),
        ``n_layers``, ``n_heads``, ``n_kv_heads`` and a config summary.
    options : dict
        The capture options (``max_new_tokens``, layers, heads, generate kwargs…).
    """

    def __init__(self, tokens: TokenTable, blocks: dict[str, AttentionBlock],
                 spans: dict[str, tuple[int, int]], model: dict[str, Any],
                 options: dict[str, Any] | None = None, source_tokens: TokenTable | None = None):
        if not blocks:
            raise ValueError("a trace needs at least one attention block")
        self.tokens = tokens
        self.source_tokens = source_tokens
        self.blocks = dict(blocks)
        self.spans = {k: (int(v[0]), int(v[1])) for k, v in spans.items()}
        self.model = dict(model)
        self.options = dict(options or {})
        for b in self.blocks.values():
            for axis, n in ((b.queries, b.n_queries), (b.keys, b.n_keys)):
                seq = self.sequence(axis)
                if len(seq) != n:
                    raise ValueError(
                        f"block {b.name!r} has {n} positions on its {axis} axis but the trace has "
                        f"{len(seq)} {axis}")

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dense(cls, attention: np.ndarray, tokens: Sequence[str], *, prompt_len: int | None = None,
                   causal: bool = True, layers: Sequence[int] | None = None,
                   heads: Sequence[int] | None = None, model_name: str = "custom",
                   token_ids: Sequence[int] | None = None) -> AttentionTrace:
        """A trace from a dense array, for tests and for attention computed elsewhere.

        attention : array of shape (n_layers, n_heads, T, T); rows are queries.
        tokens : the T token texts.
        prompt_len : tokens before generation started (default: all of them are prompt).
        """
        a = np.asarray(attention, dtype=np.float32)
        if a.ndim != 4 or a.shape[2] != a.shape[3]:
            raise ValueError(f"attention must have shape (n_layers, n_heads, T, T); got {a.shape}")
        t = a.shape[2]
        if len(tokens) != t:
            raise ValueError(f"attention covers {t} positions but {len(tokens)} tokens were given")
        layers = tuple(range(a.shape[0])) if layers is None else tuple(int(x) for x in layers)
        heads = tuple(range(a.shape[1])) if heads is None else tuple(int(x) for x in heads)
        data = pack_causal(a) if causal else a.astype(np.float16)
        ids = list(token_ids) if token_ids is not None else list(range(t))
        table = TokenTable(ids, list(tokens), list(tokens))
        p = t if prompt_len is None else int(prompt_len)
        if not 0 <= p <= t:
            raise ValueError(f"prompt_len must be between 0 and {t}; got {prompt_len}")
        spans = {"prompt": (0, p), "generated": (p, t)} if causal else {"input": (0, t)}
        arch = "decoder" if causal else "encoder"
        model = {"name": model_name, "architecture": arch, "n_layers": max(layers) + 1,
                 "n_heads": max(heads) + 1, "n_kv_heads": max(heads) + 1}
        block = AttentionBlock("self", causal, layers, heads, data)
        return cls(table, {"self": block}, spans, model, {"max_new_tokens": t - p})

    # ----------------------------------------------------------------- shape and names
    @property
    def architecture(self) -> str:
        return self.model.get("architecture", "decoder")

    @property
    def default_block(self) -> str:
        return "decoder" if "decoder" in self.blocks else next(iter(self.blocks))

    def block(self, name: str | None = None) -> AttentionBlock:
        name = self.default_block if name is None else name
        if name not in self.blocks:
            raise KeyError(f"block must be one of {sorted(self.blocks)}; got {name!r}")
        return self.blocks[name]

    def narrow(self, *, block: str | None = None, layers: Indices = None,
               heads: Indices = None) -> AttentionTrace:
        """This trace with one attention block, optionally only some of its layers and heads.

        The block (default: :attr:`default_block`) becomes the trace's only block, over its own
        query tokens: the encoder block of an encoder-decoder trace runs over ``source_tokens``,
        which become the narrowed trace's ``tokens`` (with one ``input`` span). Cross-attention
        keeps the decoder tokens as queries and ``source_tokens`` as keys. The arrays are shared
        when every layer and head is kept (no copy).

        >>> small = trace.narrow(layers=[0, 1], heads=[3])
        >>> small.layers, small.heads
        ((0, 1), (3,))
        """
        name = self.default_block if block is None else block
        b = self.block(name)
        if b.queries == "source_tokens":
            tokens, spans = self.source_tokens, {"input": (0, len(self.source_tokens))}
            b = dataclasses.replace(b, queries="tokens", keys="tokens" if b.keys == b.queries else b.keys)
        else:
            tokens, spans = self.tokens, dict(self.spans)
        if layers is not None or heads is not None:
            lsel = model_indices(layers, b.layers, self.model.get("n_layers"), "layers")
            hsel = model_indices(heads, b.heads, self.model.get("n_heads"), "heads")
            li = [b.layer_pos(x) for x in lsel]
            hi = [b.head_pos(x) for x in hsel]
            b = dataclasses.replace(b, layers=tuple(lsel), heads=tuple(hsel), data=b.data[np.ix_(li, hi)])
        elif list(self.blocks) == [name]:
            return self
        return AttentionTrace(tokens, {name: b}, spans, self.model, self.options, self.source_tokens)

    @property
    def layers(self) -> tuple[int, ...]:
        """Model layer indices captured (in the default block)."""
        return self.block().layers

    @property
    def heads(self) -> tuple[int, ...]:
        """Model query-head indices captured (in the default block)."""
        return self.block().heads

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return self.tokens.full_text

    @property
    def prompt_len(self) -> int:
        return self.spans.get("prompt", self.spans.get("input", self.spans.get("target", (0, 0))))[1]

    @property
    def n_generated(self) -> int:
        s = self.spans.get("generated")
        return 0 if s is None else s[1] - s[0]

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", "unknown"))

    def sequence(self, axis: str) -> TokenTable:
        """The tokens an attention axis runs over: ``"tokens"`` or ``"source_tokens"``."""
        if axis == "tokens":
            return self.tokens
        if axis == "source_tokens" and self.source_tokens is not None:
            return self.source_tokens
        raise ValueError(f"unknown token axis {axis!r}")

    def span(self, name_or_text: str | Sequence[int] | tuple[int, int], occurrence: int = 0) -> list[int]:
        """Token positions of a span given by name (``"prompt"``), substring or indices."""
        if isinstance(name_or_text, str):
            if name_or_text in self.spans:
                a, b = self.spans[name_or_text]
                return list(range(a, b))
            return self.tokens.find(name_or_text, occurrence)
        idx = [int(i) for i in name_or_text]
        for i in idx:
            check_index(i, len(self.tokens), "span position")
        return idx

    # ----------------------------------------------------------------- attention access
    def head(self, layer: int, head: int, block: str | None = None) -> np.ndarray:
        """float32 (n_queries, n_keys) attention of one model layer and head."""
        b = self.block(block)
        return b.dense(b.layer_pos(layer), b.head_pos(head))

    def layer_mean(self, layer: int, block: str | None = None) -> np.ndarray:
        """float32 (n_queries, n_keys): the mean over the captured heads of one layer."""
        b = self.block(block)
        mean = b.mean_of_heads(b.layer_pos(layer))
        return unpack_causal(mean, b.n_queries) if b.causal else mean

    def attention(self, block: str | None = None, layers: Sequence[int] | None = None,
                  heads: Sequence[int] | None = None) -> np.ndarray:
        """float32 dense (n_layers, n_heads, n_queries, n_keys) for model layer/head indices.

        Memory: 4 · layers · heads · T² bytes; prefer :meth:`head` or :meth:`row` for long runs.
        """
        b = self.block(block)
        li = np.array([b.layer_pos(x) for x in (b.layers if layers is None else layers)], dtype=np.intp)
        hi = np.array([b.head_pos(x) for x in (b.heads if heads is None else heads)], dtype=np.intp)
        return b.dense(li[:, None], hi[None, :])

    def row(self, position: int, block: str | None = None) -> np.ndarray:
        """float32 (n_layers, n_heads, n_keys): what query ``position`` attends to."""
        b = self.block(block)
        position = check_index(position, b.n_queries, "position")
        return b.rows(slice(None), slice(None), position, position + 1)[:, :, 0, :]

    def step(self, t: int, block: str | None = None) -> np.ndarray:
        """float32 (n_layers, n_heads, n_keys): the attention that produced generated token ``t``.

        Generated token ``t`` (0-based) sits at position ``prompt_len + t``; it was predicted by
        the query one position earlier, so this is that query's row. Keys past it are zero.
        """
        if self.n_generated == 0:
            raise ValueError("this trace has no generated tokens (it was a forward pass); capture "
                             "with max_new_tokens > 0 to step through generation")
        t = check_index(t, self.n_generated, "generation step")
        start = self.spans["generated"][0]
        if start + t == 0:
            raise ValueError("generated token 0 is at position 0 and has no producing query")
        return self.row(start + t - 1, block)

    def step_position(self, t: int) -> int:
        """The query position whose attention produced generated token ``t``."""
        if self.n_generated == 0:
            raise ValueError("this trace has no generated tokens (it was a forward pass)")
        return self.spans["generated"][0] + check_index(t, self.n_generated, "generation step") - 1

    def __repr__(self) -> str:
        b = self.block()
        parts = [f"model={self.model_name!r}", f"tokens={len(self.tokens)}"]
        if "prompt" in self.spans:
            parts.append(f"prompt={self.prompt_len}, generated={self.n_generated}")
        parts.append(f"layers={format_ranges(b.layers)}/{self.model.get('n_layers', '?')}")
        parts.append(f"heads={format_ranges(b.heads)}/{self.model.get('n_heads', '?')}")
        if len(self.blocks) > 1:
            parts.append(f"blocks={list(self.blocks)}")
        nbytes = sum(x.data.nbytes for x in self.blocks.values())
        parts.append(f"{nbytes / 2**20:.1f} MiB float16")
        text = self.text.replace("\n", "⏎")
        parts.append(f"text={text[:60]!r}{'…' if len(text) > 60 else ''}")
        return "AttentionTrace(" + ", ".join(parts) + ")"

    def show(self, **kwargs):
        """An interactive :class:`AttentionWidget` of this trace."""
        from .widget import AttentionWidget

        return AttentionWidget(self, **kwargs)

    # ----------------------------------------------------------------- disk format
    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace to one file, atomically (a temporary file, then a rename)."""
        path = Path(path)
        arrays, layout = [], []
        offset = 0
        for b in self.blocks.values():
            data = np.ascontiguousarray(b.data, dtype=np.float16)
            layout.append({"name": b.name, "causal": b.causal, "layers": list(b.layers),
                           "heads": list(b.heads), "queries": b.queries, "keys": b.keys,
                           "shape": list(data.shape), "offset": offset, "nbytes": data.nbytes,
                           "crc32": zlib.crc32(memoryview(data).cast("B"))})
            arrays.append(data)
            offset += _aligned(data.nbytes)
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tokens": self.tokens.to_json(),
                "source_tokens": None if self.source_tokens is None else self.source_tokens.to_json(),
                "spans": self.spans, "model": self.model, "options": jsonable(self.options),
                "blocks": layout}
        blob = json.dumps(meta, ensure_ascii=False).encode("utf-8")
        data_start = _aligned(_HEADER.size + len(blob))
        meta_total = data_start + offset

        def write(f) -> None:
            f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, len(blob)))
            f.write(blob)
            f.write(b"\0" * (data_start - _HEADER.size - len(blob)))
            for data in arrays:
                f.write(memoryview(data).cast("B"))
                f.write(b"\0" * (_aligned(data.nbytes) - data.nbytes))
            if f.tell() != meta_total:
                raise RuntimeError(f"wrote {f.tell()} bytes, expected {meta_total}")

        return write_atomically(path, write, "trace")


def load_trace(path: str | os.PathLike) -> AttentionTrace:
    """Read a trace written by :meth:`AttentionTrace.save`.

    Raises :class:`TraceFormatError` for a file that is not a trace, was truncated or
    corrupted, or was written by a newer attn_widget.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size or not head.startswith(MAGIC):
            raise TraceFormatError(f"{str(path)!r} is not an attn_widget trace file (no "
                                   f"{MAGIC[:-1].decode()} header); save one with trace.save(path)")
        _, version, n_json = _HEADER.unpack(head)
        if version > FORMAT_VERSION:
            raise TraceFormatError(
                f"{str(path)!r} is trace format version {version}, newer than this attn_widget "
                f"reads ({FORMAT_VERSION}); upgrade attn_widget to open it")
        if version < 1:
            raise TraceFormatError(f"{str(path)!r} has unknown trace format version {version}")
        blob = f.read(n_json)
        if len(blob) < n_json:
            raise TraceFormatError(f"{str(path)!r} is truncated ({size} bytes): its header is cut off")
        try:
            meta = json.loads(blob.decode("utf-8"))
        except ValueError as e:
            raise TraceFormatError(f"{str(path)!r} has a corrupted header: {e}") from None
        if meta.get("format") != FORMAT_NAME:
            raise TraceFormatError(f"{str(path)!r} is not an attn_widget trace (format "
                                   f"{meta.get('format')!r})")
        data_start = _aligned(_HEADER.size + n_json)
        expected = data_start + sum(_aligned(b["nbytes"]) for b in meta["blocks"])
        if size < expected:
            raise TraceFormatError(f"{str(path)!r} is truncated: {size} bytes, expected {expected}; "
                                   "the file was cut short while copying or writing")
        blocks = {}
        for b in meta["blocks"]:
            f.seek(data_start + b["offset"])
            raw = f.read(b["nbytes"])
            if zlib.crc32(raw) != b["crc32"]:
                raise TraceFormatError(f"{str(path)!r} is corrupted: block {b['name']!r} fails its "
                                       "checksum")
            data = np.frombuffer(raw, dtype=np.float16).reshape(b["shape"]).copy()
            blocks[b["name"]] = AttentionBlock(b["name"], b["causal"], tuple(b["layers"]),
                                               tuple(b["heads"]), data, b["queries"], b["keys"])
    src = meta.get("source_tokens")
    return AttentionTrace(TokenTable.from_json(meta["tokens"]), blocks,
                          {k: tuple(v) for k, v in meta["spans"].items()}, meta["model"],
                          meta.get("options"), None if src is None else TokenTable.from_json(src))


# --------------------------------------------------------------------- disk layout
def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN
