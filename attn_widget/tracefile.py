"""A trace on disk: one file, versioned, checksummed, checked, written atomically.

Layout: ``ATTNTRACE\\0``, the format version, the length of a JSON header, (version 3 on) the
CRC32 of those and of the JSON header, then the JSON header (tokens, spans, model, options and,
per attention block, its arrays: dtype, shape, offset, size, CRC32), then the arrays, each
64-byte aligned. Each block is stored in its form: float16 weights (``data``), or queries and
keys (``queries``, ``keys``, ``groups``, ``scaling``, ``windows``, ``sinks``) from which the
weights are recomputed; either form may add the norms of its values (``norms``, and ``gram`` for
the layer-level view, :mod:`attn_widget.valuenorms`). Version 4 is version 3 with those arrays:
a trace without them is written as version 3, so older readers still open it. Versions 1
(weights only) and 2 (no header checksum) still load.

Every fact in a header is checked, against the header itself (lengths, spans, each array's
shape for its block's layers, heads and tokens, its place in the file) and against the file, so
that anything that is not a trace written here is refused with one :class:`TraceFormatError`
naming the problem. Saving runs the same checks on the trace first: a trace broken in memory is
refused before anything at the path is touched.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import tril_offset
from .querykeys import QueryKeys
from .storage import file_kind, jsonable, write_atomically
from .tokens import TokenTable
from .trace import AttentionBlock, AttentionTrace
from .valuenorms import ValueNorms

FORMAT_NAME = "attn_widget.trace"
FORMAT_VERSION = 4
WITHOUT_VALUES = 3
"""The version a trace without value norms is written as (the one before they existed)."""
MAGIC = b"ATTNTRACE\x00"
_HEADER = struct.Struct("<10sIQ")  # magic, format version, json length
_HEADER_CRC = struct.Struct("<I")  # version 3 on: CRC32 of the fixed header and the JSON header
_ALIGN = 64
_SEQUENCES = ("tokens", "source_tokens")
_VALUES = {"norms": ("float32", False), "gram": ("float32", False)}  # version 4 on, either form
_ARRAYS = {  # form -> array name -> (dtype, required)
    "weights": {"data": ("float16", True), **_VALUES},
    "queries-keys": {"queries": ("float32", True), "keys": ("float32", True), "groups": ("int64", True),
                     "scaling": ("float64", True), "windows": ("int64", True), "sinks": ("float32", False),
                     **_VALUES},
}


class TraceFormatError(ValueError):
    """A file is not a readable attn_widget trace (foreign, truncated, corrupted, malformed or newer)."""


class _Malformed(Exception):
    """One fact of a header or its arrays that is wrong; the caller names the file or the trace."""


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


# --------------------------------------------------------------------------- saving
def _block_arrays(b: AttentionBlock) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays a block is stored as, and the other facts of its form."""
    values = {}
    if b.norms is not None:
        if not isinstance(b.norms, ValueNorms):
            raise _Malformed(f"block {b.name!r} holds {type(b.norms).__name__} instead of ValueNorms")
        values["norms"] = np.ascontiguousarray(b.norms.norms, dtype=np.float32)
        if b.norms.gram is not None:
            values["gram"] = np.ascontiguousarray(b.norms.gram, dtype=np.float32)
    if b.form == "weights":
        return {"data": np.ascontiguousarray(b.data, dtype=np.float16), **values}, {}
    qk = b.qk
    if not isinstance(qk, QueryKeys):
        raise _Malformed(f"block {b.name!r} holds {type(qk).__name__} instead of QueryKeys")
    arrays = {"queries": qk.queries, "keys": qk.keys, "groups": qk.groups, "scaling": qk.scaling,
              "windows": qk.windows}
    if qk.sinks is not None:
        arrays["sinks"] = qk.sinks
    specs = _ARRAYS["queries-keys"]
    return ({**{k: np.ascontiguousarray(v, dtype=specs[k][0]) for k, v in arrays.items()}, **values},
            {"softcap": float(qk.softcap), "causal_keys": bool(qk.causal)})


def _trace_parts(trace: AttentionTrace) -> tuple[dict, list[np.ndarray], list[dict[str, np.ndarray]]]:
    """The header, the arrays in file order, and each block's arrays by name, of ``trace``."""
    if not isinstance(trace, AttentionTrace):
        raise TypeError(f"expected an AttentionTrace; got {type(trace).__name__}")
    for what, value in (("tokens", trace.tokens), ("source_tokens", trace.source_tokens)):
        if not isinstance(value, TokenTable) and not (what == "source_tokens" and value is None):
            raise _Malformed(f"its {what} are {type(value).__name__}, not a TokenTable")
    if not isinstance(trace.blocks, dict) or not all(isinstance(b, AttentionBlock)
                                                     for b in trace.blocks.values()):
        raise _Malformed("its blocks are not a dict of AttentionBlock")
    chunks, layout, by_block = [], [], []
    offset = 0
    for b in trace.blocks.values():
        try:
            arrays, extra = _block_arrays(b)
        except (AttributeError, TypeError, ValueError) as e:
            raise _Malformed(f"block {b.name!r} holds no readable {b.form}: {e}") from None
        table = {}
        for name, a in arrays.items():
            table[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset,
                           "nbytes": a.nbytes, "crc32": zlib.crc32(memoryview(a).cast("B"))}
            chunks.append(a)
            offset += _aligned(a.nbytes)
        by_block.append(arrays)
        layout.append({"name": b.name, "causal": b.causal, "layers": jsonable(b.layers),
                       "heads": jsonable(b.heads), "queries": b.queries, "keys": b.keys, "form": b.form,
                       "arrays": table, **extra})
    version = FORMAT_VERSION if any("norms" in a for a in by_block) else WITHOUT_VALUES
    meta = {"format": FORMAT_NAME, "version": version, "tokens": trace.tokens.to_json(),
            "source_tokens": None if trace.source_tokens is None else trace.source_tokens.to_json(),
            "spans": jsonable(trace.spans), "model": jsonable(trace.model),
            "options": jsonable(trace.options), "blocks": layout}
    return meta, chunks, by_block


def save_trace(trace: AttentionTrace, path: str | os.PathLike) -> Path:
    """Write ``trace`` to one file, atomically (a temporary file, then a rename).

    The trace is checked first, with the checks :func:`load_trace` makes: a trace whose blocks,
    tokens or spans were broken in memory raises ``ValueError`` and the path is left as it
    was. Only a regular file (or a new name) is replaced; a symbolic link is followed (see
    :func:`attn_widget.storage.write_atomically`).
    """
    path = Path(path)
    try:
        meta, chunks, by_block = _trace_parts(trace)
        _check_header(meta, sum(_aligned(a.nbytes) for a in chunks))
        for b, arrays in zip(meta["blocks"], by_block):
            _check_values(b, arrays)
        blob = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    except _Malformed as e:
        raise ValueError(f"cannot save this trace to {str(path)!r}: {e}; nothing was written") from None
    fixed = _HEADER.pack(MAGIC, meta["version"], len(blob))
    crc = _HEADER_CRC.pack(zlib.crc32(fixed + blob))
    data_start = _aligned(len(fixed) + len(crc) + len(blob))
    total = data_start + sum(_aligned(a.nbytes) for a in chunks)

    def write(f) -> None:
        f.write(fixed + crc + blob)
        f.write(b"\0" * (data_start - len(fixed) - len(crc) - len(blob)))
        for a in chunks:
            f.write(memoryview(a).cast("B"))
            f.write(b"\0" * (_aligned(a.nbytes) - a.nbytes))
        if f.tell() != total:
            raise RuntimeError(f"wrote {f.tell()} bytes, expected {total}")

    return write_atomically(path, write, "trace")


# --------------------------------------------------------------------------- checks
def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise _Malformed(problem)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _field(d: dict, key: str, kind: type, where: str) -> Any:
    """``d[key]``, which must be a ``kind`` (an int is never a bool)."""
    _expect(key in d, f"{where} has no {key!r}")
    value = d[key]
    _expect(_is_int(value) if kind is int else isinstance(value, kind),
            f"{where} {key!r} is {type(value).__name__} {_short(value)}, expected {kind.__name__}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _token_count(meta: dict, key: str, required: bool) -> int | None:
    """How many tokens ``meta[key]`` (a TokenTable's JSON) holds, after checking it."""
    d = meta.get(key)
    if d is None and not required:
        return None
    _expect(isinstance(d, dict), f"its {key} are {type(d).__name__}, expected an object")
    n = len(_field(d, "ids", list, key))
    _expect(all(_is_int(i) and -2**63 <= i < 2**63 for i in d["ids"]), f"{key} ids are not all integers")
    for name, kind, optional in (("raw", str, False), ("text", str, False), ("special", bool, True),
                                 ("display", str, True)):
        if optional and d.get(name) is None:
            continue
        values = _field(d, name, list, key)
        _expect(len(values) == n, f"{key} have {n} ids but {len(values)} {name} entries")
        _expect(all(isinstance(v, kind) for v in values), f"{key} {name} entries are not all {kind.__name__}")
    _expect(n > 0 or not required, f"it holds no {key}")
    return n


def _indices(b: dict, key: str, where: str) -> list[int]:
    values = _field(b, key, list, where)
    _expect(bool(values) and all(_is_int(x) and 0 <= x < 2**31 for x in values)
            and len(set(values)) == len(values),
            f"{where} {key} {_short(values)} are not distinct non-negative integers")
    return values


def _check_header(meta: Any, data_size: int) -> None:
    """Every fact of a header, checked against the others: tokens, spans inside them, each block's
    arrays (dtype, shape for its layers, heads and tokens, place among ``data_size`` bytes)."""
    _expect(isinstance(meta, dict), f"its header is a JSON {type(meta).__name__}, not an object")
    lengths = {"tokens": _token_count(meta, "tokens", True),
               "source_tokens": _token_count(meta, "source_tokens", False)}
    for name, span in _field(meta, "spans", dict, "its header").items():
        _expect(isinstance(span, list) and len(span) == 2 and all(_is_int(x) for x in span),
                f"span {name!r} is {_short(span)}, not [start, stop]")
        n = lengths["source_tokens"] if name == "source" and lengths["source_tokens"] else lengths["tokens"]
        _expect(0 <= span[0] <= span[1] <= n, f"span {name!r} {span} is outside its {n} tokens")
    model = _field(meta, "model", dict, "its header")
    for key in ("n_layers", "n_heads", "n_kv_heads"):  # what views and selections count from
        _expect(model.get(key) is None or (_is_int(model[key]) and 0 < model[key] < 2**31),
                f"its model {key} is {_short(model.get(key))}, not a positive integer")
    _expect(isinstance(model.get("name", ""), str), "its model name is not a string")
    _expect(isinstance(meta.get("options"), (dict, type(None))), "its options are not an object")
    blocks = _field(meta, "blocks", list, "its header")
    _expect(bool(blocks), "it holds no attention block")
    names, extents = set(), []
    for i, b in enumerate(blocks):
        _expect(isinstance(b, dict), f"block {i} is a JSON {type(b).__name__}, not an object")
        name = _field(b, "name", str, f"block {i}")
        where = f"block {name!r}"
        _expect(name not in names, f"two blocks are named {name!r}")
        names.add(name)
        causal = _field(b, "causal", bool, where)
        n_layers, n_heads = len(_indices(b, "layers", where)), len(_indices(b, "heads", where))
        axes = []
        for axis in ("queries", "keys"):
            seq = _field(b, axis, str, where)
            _expect(lengths.get(seq) is not None, f"{where} runs its {axis} over {_short(seq)}, which the "
                    f"file does not hold")
            axes.append(lengths[seq])
        nq, nk = axes
        _expect(not causal or nq == nk, f"{where} is causal but has {nq} queries and {nk} keys")
        form = _field(b, "form", str, where)
        _expect(form in _ARRAYS, f"{where} has unknown form {_short(form)}")
        specs = _ARRAYS[form]
        arrays = _field(b, "arrays", dict, where)
        missing = [k for k, (_, required) in specs.items() if required and k not in arrays]
        unknown = [k for k in arrays if k not in specs]
        _expect(not missing and not unknown, f"{where} ({form}) lacks arrays {missing} or has unknown "
                f"ones {unknown}")
        shapes = {}
        for key, a in arrays.items():
            at = f"{where} array {key!r}"
            _expect(isinstance(a, dict), f"{at} is not described by an object")
            dtype = _field(a, "dtype", str, at)
            _expect(dtype == specs[key][0], f"{at} has dtype {_short(dtype)}, expected {specs[key][0]}")
            shape = _field(a, "shape", list, at)
            _expect(all(_is_int(x) and 0 <= x < 2**40 for x in shape), f"{at} has shape {_short(shape)}")
            offset, nbytes = _field(a, "offset", int, at), _field(a, "nbytes", int, at)
            _expect(0 <= _field(a, "crc32", int, at) < 2**32, f"{at} has checksum {a['crc32']}")
            _expect(offset >= 0 and offset % _ALIGN == 0, f"{at} has offset {offset}")
            _expect(nbytes == math.prod(shape) * np.dtype(dtype).itemsize,
                    f"{at} says {nbytes} bytes for shape {shape} of {dtype}")
            extents.append((offset, offset + nbytes, at))
            shapes[key] = tuple(shape)
        _expect("gram" not in shapes or "norms" in shapes, f"{where} has a gram array without its norms")
        values = {"norms": (n_layers, n_heads, nk), "gram": (n_layers, nk, n_heads * (n_heads + 1) // 2)}
        if form == "weights":
            cells = (tril_offset(nq),) if causal else (nq, nk)
            expected = {"data": (n_layers, n_heads, *cells), **values}
        else:
            q, k = shapes["queries"], shapes["keys"]
            _expect(len(q) == 4 and len(k) == 4, f"{where} queries and keys are not 4-dimensional")
            expected = {"queries": (n_layers, n_heads, nq, q[3]), "keys": (n_layers, k[1], nk, q[3]),
                        "groups": (n_heads,), "scaling": (n_layers,), "windows": (n_layers,),
                        "sinks": (n_layers, n_heads), **values}
            softcap = b.get("softcap", 0.0)
            _expect(isinstance(softcap, (int, float)) and not isinstance(softcap, bool)
                    and math.isfinite(softcap) and softcap >= 0, f"{where} has softcap {_short(softcap)}")
            _expect(isinstance(b.get("causal_keys", causal), bool), f"{where} causal_keys is not a bool")
        for key, shape in shapes.items():
            _expect(shape == expected[key], f"{where} array {key!r} has shape {list(shape)}, expected "
                    f"{list(expected[key])} for {n_layers} layers × {n_heads} heads over {nq} × {nk} tokens")
    extents.sort()
    for (_, end, a), (start, _, b) in zip(extents, extents[1:]):
        _expect(start >= end, f"{a} and {b} overlap")
    end = max(e for _, e, _ in extents)
    _expect(end <= data_size, f"truncated: its arrays end at byte {end} of the data but the file holds "
            f"{data_size} bytes of data; it was cut short while copying or writing")


def _check_values(b: dict, arrays: dict[str, np.ndarray]) -> None:
    """The values of one block's arrays: weights in [0, 1], queries and keys finite, groups
    within the keys."""
    where = f"block {b['name']!r}"
    for key in ("norms", "gram"):
        if key in arrays:
            _expect(bool(np.isfinite(arrays[key]).all()), f"{where} has value {key} that are NaN or infinite")
    if "norms" in arrays:
        _expect(bool((arrays["norms"] >= 0).all()), f"{where} has negative value norms")
    if "data" in arrays:
        data = arrays["data"]
        _expect(bool(np.isfinite(data).all()), f"{where} has weights that are NaN or infinite")
        _expect(data.size == 0 or (float(data.min()) >= 0 and float(data.max()) <= 1),
                f"{where} has weights outside [0, 1]")
        return
    for key in ("queries", "keys", "scaling", "sinks"):
        if key in arrays:
            _expect(bool(np.isfinite(arrays[key]).all()), f"{where} has {key} that are NaN or infinite")
    n_groups = arrays["keys"].shape[1]
    _expect(bool(((arrays["groups"] >= 0) & (arrays["groups"] < n_groups)).all()),
            f"{where} has heads reading key groups outside 0..{n_groups - 1}")
    _expect(bool((arrays["windows"] >= 0).all()), f"{where} has a negative sliding window")


# --------------------------------------------------------------------------- loading
def _open_regular(path: Path):
    """``path`` opened for reading, and its size; a folder, FIFO, device or socket is refused
    before it is opened (opening a FIFO would wait for a writer)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no trace file at {str(path)!r}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TraceFormatError(f"{str(path)!r} is {file_kind(st.st_mode)}, not a trace file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # it changed since: never read from anything else
        os.close(fd)
        raise TraceFormatError(f"{str(path)!r} is {file_kind(st.st_mode)}, not a trace file")
    return os.fdopen(fd, "rb"), st.st_size


def load_trace(path: str | os.PathLike) -> AttentionTrace:
    """Read a trace written by :meth:`AttentionTrace.save` (format version 1 to 4).

    Raises :class:`TraceFormatError`, naming the problem, for anything that is not a trace
    written here: a folder, FIFO or device, a foreign file, a truncated or corrupted one (the
    arrays and, from version 3, the header are checksummed), a malformed header, or a file
    written by a newer attn_widget. ``FileNotFoundError`` when nothing is at ``path``.
    """
    path = Path(path)
    name = repr(str(path))
    f, size = _open_regular(path)
    with f:
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size or not head.startswith(MAGIC):
            raise TraceFormatError(f"{name} is not an attn_widget trace file (no "
                                   f"{MAGIC[:-1].decode()} header); save one with trace.save(path)")
        _, version, n_json = _HEADER.unpack(head)
        if version > FORMAT_VERSION:
            raise TraceFormatError(
                f"{name} is trace format version {version}, newer than this attn_widget "
                f"reads ({FORMAT_VERSION}); upgrade attn_widget to open it")
        if version < 1:
            raise TraceFormatError(f"{name} has unknown trace format version {version}")
        crc = f.read(_HEADER_CRC.size) if version >= 3 else b""
        start = _HEADER.size + len(crc)
        if n_json > size - start:
            raise TraceFormatError(f"{name} is truncated ({size} bytes): its header says {n_json} bytes "
                                   "of header follow")
        blob = f.read(n_json)
        if len(blob) < n_json:
            raise TraceFormatError(f"{name} is truncated ({size} bytes): its header is cut off")
        if crc and _HEADER_CRC.unpack(crc)[0] != zlib.crc32(head + blob):
            raise TraceFormatError(f"{name} is corrupted: its header fails its checksum (it was changed "
                                   "after it was written)")
        try:
            meta = json.loads(blob.decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise TraceFormatError(f"{name} has a corrupted header: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise TraceFormatError(f"{name} is not an attn_widget trace (format {_short(found)})")
        data_start = _aligned(start + n_json)
        try:
            if version == 1:
                _from_version_1(meta)
            _check_header(meta, max(0, size - data_start))
            blocks = {}
            for b in meta["blocks"]:
                arrays = {}
                for key, a in b["arrays"].items():
                    f.seek(data_start + a["offset"])
                    raw = f.read(a["nbytes"])
                    if len(raw) < a["nbytes"]:
                        raise _Malformed(f"truncated: block {b['name']!r} is cut off")
                    if zlib.crc32(raw) != a["crc32"]:
                        raise TraceFormatError(f"{name} is corrupted: block {b['name']!r} fails its checksum")
                    arrays[key] = np.frombuffer(raw, dtype=np.dtype(a["dtype"])).reshape(a["shape"]).copy()
                _check_values(b, arrays)
                blocks[b["name"]] = _block(b, arrays)
            src = meta.get("source_tokens")
            return AttentionTrace(TokenTable.from_json(meta["tokens"]), blocks,
                                  {k: tuple(v) for k, v in meta["spans"].items()}, meta["model"],
                                  meta.get("options"), None if src is None else TokenTable.from_json(src))
        except _Malformed as e:
            problem = str(e)
            if problem.startswith("truncated"):
                raise TraceFormatError(f"{name} is {problem}") from None
            raise TraceFormatError(f"{name} is not a valid trace: {problem}") from None
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
            if isinstance(e, TraceFormatError):
                raise
            raise TraceFormatError(f"{name} is not a valid trace: its parts do not fit together "
                                   f"({e})") from None


def _from_version_1(meta: dict) -> None:
    """Version 1 described each block's one float16 array inline; describe it as version 2 does."""
    for b in meta.get("blocks") or []:
        if isinstance(b, dict):
            b["form"], b["arrays"] = "weights", {"data": {
                "dtype": "float16", **{k: b.get(k) for k in ("shape", "offset", "nbytes", "crc32")}}}


def _block(b: dict, arrays: dict[str, np.ndarray]) -> AttentionBlock:
    common = (b["name"], b["causal"], tuple(b["layers"]), tuple(b["heads"]))
    norms = ValueNorms(arrays["norms"], arrays.get("gram")) if "norms" in arrays else None
    if b["form"] == "weights":
        return AttentionBlock(*common, arrays["data"], b["queries"], b["keys"], norms=norms)
    qk = QueryKeys(arrays["queries"], arrays["keys"], arrays["groups"], arrays["scaling"], arrays["windows"],
                   float(b.get("softcap", 0.0)), arrays.get("sinks"), b.get("causal_keys", b["causal"]))
    return AttentionBlock(*common, None, b["queries"], b["keys"], qk=qk, norms=norms)
