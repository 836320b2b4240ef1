"""A trace on disk: one file, versioned, checksummed, written atomically.

Layout: ``ATTNTRACE\\0``, the format version, the length of a JSON header (tokens, spans, model,
options and, per attention block, its arrays: dtype, shape, offset, size, CRC32), then the
arrays, each 64-byte aligned. Version 2 stores each block in its form: float16 weights
(``data``), or queries and keys (``queries``, ``keys``, ``groups``, ``scaling``, ``windows``,
``sinks``) from which the weights are recomputed. Version 1 files (weights only) still load.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .querykeys import QueryKeys
from .storage import jsonable, write_atomically
from .tokens import TokenTable
from .trace import AttentionBlock, AttentionTrace

FORMAT_NAME = "attn_widget.trace"
FORMAT_VERSION = 2
MAGIC = b"ATTNTRACE\x00"
_HEADER = struct.Struct("<10sIQ")  # magic, format version, json length
_ALIGN = 64


class TraceFormatError(ValueError):
    """A file is not a readable attn_widget trace (foreign, truncated, corrupted or newer)."""


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _block_arrays(b: AttentionBlock) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays a block is stored as, and the other facts of its form."""
    if b.form == "weights":
        return {"data": np.ascontiguousarray(b.data, dtype=np.float16)}, {}
    qk = b.qk
    arrays = {"queries": qk.queries, "keys": qk.keys, "groups": qk.groups.astype(np.int64),
              "scaling": qk.scaling.astype(np.float64), "windows": qk.windows.astype(np.int64)}
    if qk.sinks is not None:
        arrays["sinks"] = qk.sinks
    return {k: np.ascontiguousarray(v) for k, v in arrays.items()}, {"softcap": float(qk.softcap),
                                                                     "causal_keys": bool(qk.causal)}


def save_trace(trace: AttentionTrace, path: str | os.PathLike) -> Path:
    """Write ``trace`` to one file, atomically (a temporary file, then a rename)."""
    path = Path(path)
    chunks, layout = [], []
    offset = 0
    for b in trace.blocks.values():
        arrays, extra = _block_arrays(b)
        table = {}
        for name, a in arrays.items():
            table[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset,
                           "nbytes": a.nbytes, "crc32": zlib.crc32(memoryview(a).cast("B"))}
            chunks.append(a)
            offset += _aligned(a.nbytes)
        layout.append({"name": b.name, "causal": b.causal, "layers": list(b.layers), "heads": list(b.heads),
                       "queries": b.queries, "keys": b.keys, "form": b.form, "arrays": table, **extra})
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tokens": trace.tokens.to_json(),
            "source_tokens": None if trace.source_tokens is None else trace.source_tokens.to_json(),
            "spans": trace.spans, "model": trace.model, "options": jsonable(trace.options),
            "blocks": layout}
    blob = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    data_start = _aligned(_HEADER.size + len(blob))
    total = data_start + offset

    def write(f) -> None:
        f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, len(blob)))
        f.write(blob)
        f.write(b"\0" * (data_start - _HEADER.size - len(blob)))
        for a in chunks:
            f.write(memoryview(a).cast("B"))
            f.write(b"\0" * (_aligned(a.nbytes) - a.nbytes))
        if f.tell() != total:
            raise RuntimeError(f"wrote {f.tell()} bytes, expected {total}")

    return write_atomically(path, write, "trace")


def load_trace(path: str | os.PathLike) -> AttentionTrace:
    """Read a trace written by :meth:`AttentionTrace.save` (format version 1 or 2).

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
        if version == 1:  # one float16 array per block, described inline
            for b in meta["blocks"]:
                b["form"], b["arrays"] = "weights", {"data": {
                    "dtype": "float16", **{k: b[k] for k in ("shape", "offset", "nbytes", "crc32")}}}
        data_start = _aligned(_HEADER.size + n_json)
        expected = data_start + sum(_aligned(a["nbytes"]) for b in meta["blocks"]
                                    for a in b["arrays"].values())
        if size < expected:
            raise TraceFormatError(f"{str(path)!r} is truncated: {size} bytes, expected {expected}; "
                                   "the file was cut short while copying or writing")
        blocks = {}
        for b in meta["blocks"]:
            arrays = {}
            for name, a in b["arrays"].items():
                f.seek(data_start + a["offset"])
                raw = f.read(a["nbytes"])
                if zlib.crc32(raw) != a["crc32"]:
                    raise TraceFormatError(f"{str(path)!r} is corrupted: block {b['name']!r} fails its "
                                           "checksum")
                arrays[name] = np.frombuffer(raw, dtype=np.dtype(a["dtype"])).reshape(a["shape"]).copy()
            common = (b["name"], b["causal"], tuple(b["layers"]), tuple(b["heads"]))
            if b["form"] == "weights":
                blocks[b["name"]] = AttentionBlock(*common, arrays["data"], b["queries"], b["keys"])
            else:
                qk = QueryKeys(arrays["queries"], arrays["keys"], arrays["groups"], arrays["scaling"],
                               arrays["windows"], b.get("softcap", 0.0), arrays.get("sinks"),
                               b.get("causal_keys", b["causal"]))
                blocks[b["name"]] = AttentionBlock(*common, None, b["queries"], b["keys"], qk=qk)
    src = meta.get("source_tokens")
    return AttentionTrace(TokenTable.from_json(meta["tokens"]), blocks,
                          {k: tuple(v) for k, v in meta["spans"].items()}, meta["model"],
                          meta.get("options"), None if src is None else TokenTable.from_json(src))
