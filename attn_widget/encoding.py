"""Trace → compact bytes for the browser, shared by the live widget and offline snapshots.

The byte layout is specified in ``js/PROTOCOL.md`` ("Payload"); ``js/src/payload.js`` decodes
it. A payload is a small JSON header followed by 8-byte-aligned sections, each one array:

- ``head/<L>/<H>``: float16 attention of one head, packed lower triangle (causal) or dense;
- ``mean/<L>``: float16 mean over the captured heads of one layer;
- ``pool/<L>/<H>/<side>``: float16 max over side × side squares of a head (``H`` = ``mean``: of
  the layer mean), what long traces send instead of whole heads;
- ``region/<L>/<H>/<q0>/<q1>/<k0>/<k1>``: float16 full-resolution rows q0:q1, keys k0:k1;
- ``thumbs``: uint8 (n_layers, n_heads, S, S) max-pooled thumbnails for the all-heads grid;
- ``metric/<name>``: float32 (n_layers, n_heads) badge values.

Every key but ``thumbs`` and ``metric/…`` may end in ``/norm``: the same view value-weighted,
``α_ij ‖f_h(x_j)‖`` (Kobayashi et al. 2020, ``weighting="norm"``), not in [0, 1]; ``grid/norm``
answers ``thumbs/norm`` and ``metric/<name>/norm``.

Pure numpy: no torch, no widgets.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .geometry import geometry
from .selection import MEAN, format_ranges
from .storage import jsonable
from .trace import AttentionBlock, AttentionTrace
from .valuenorms import WEIGHTINGS, check_weighting

MAGIC = b"AWP1"
PROTOCOL_VERSION = 1
THUMB_SIZE = 32
REGION_MAX_CELLS = 2**24
"""Cells a ``region/…`` fetch may ask for (32 MiB of float16): zoom in for more detail."""
NO_CELL = np.float16(-0.0)
"""What ``pool/…`` and ``region/…`` sections of a causal block hold where no key is attended
(above the diagonal): float16 -0.0, which max pooling never picks over a weight."""
_PREFIX = struct.Struct("<4sI")
_DTYPES = {"float16": np.float16, "float32": np.float32, "uint8": np.uint8}
_F16_MAX = np.finfo(np.float16).max


def suffix(weighting: str) -> str:
    """What a key ends in for ``weighting``: ``""`` for the weights, ``"/norm"`` value-weighted."""
    return "" if check_weighting(weighting) == "attention" else "/" + weighting


def split_weighting(key: str) -> tuple[str, str]:
    """``key`` without its weighting suffix, and the weighting (``"head/0/1/norm"`` →
    ``("head/0/1", "norm")``)."""
    base, _, last = key.rpartition("/")
    return (base, last) if base and last in WEIGHTINGS[1:] else (key, "attention")


def weightings(trace: AttentionTrace) -> tuple[str, ...]:
    """The weightings the shown block of ``trace`` can be read with."""
    return WEIGHTINGS if trace.block().norms is not None else WEIGHTINGS[:1]


def _wire(values: np.ndarray) -> np.ndarray:
    """float16 of values that may pass float16's range (value-weighted cells are not weights)."""
    return np.minimum(values, _F16_MAX).astype(np.float16)


@dataclasses.dataclass(frozen=True)
class Section:
    """One array of a payload.

    key : ``head/<L>/<H>``, ``mean/<L>``, ``pool/…``, ``region/…``, ``thumbs`` or ``metric/<name>``.
    source : index of the trace in the header's ``sources`` (0 = A, 1 = B).
    layout : ``tril`` (packed lower triangle; ``shape`` is ``[T]``) or ``dense``.
    array : the values, already in their wire dtype.
    extra : more fields of the section's table entry: ``side`` of a pooled image, ``rows`` and
        ``cols`` of a region.
    """

    key: str
    source: int
    layout: str
    shape: tuple[int, ...]
    array: np.ndarray
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def dtype(self) -> str:
        return self.array.dtype.name


class FetchError(LookupError):
    """A fetch names a key the trace cannot answer; the message is shown to the user."""


# --------------------------------------------------------------------- payload bytes
def encode_payload(header: Mapping[str, Any], sections: Sequence[Section]) -> bytes:
    """Bytes of one payload: ``AWP1``, header length, JSON header, aligned sections."""
    table, offset = [], 0
    for s in sections:
        nbytes = s.array.nbytes
        table.append({"key": s.key, "source": s.source, "dtype": s.dtype, "layout": s.layout,
                      "shape": list(s.shape), **s.extra, "offset": offset, "nbytes": nbytes})
        offset += _pad8(nbytes)
    blob = json.dumps({**header, "sections": table}, ensure_ascii=False,
                      allow_nan=False).encode("utf-8")
    data_start = _pad8(_PREFIX.size + len(blob))
    out = bytearray(data_start + offset)
    _PREFIX.pack_into(out, 0, MAGIC, len(blob))
    out[_PREFIX.size:_PREFIX.size + len(blob)] = blob
    for s, entry in zip(sections, table):
        start = data_start + entry["offset"]
        out[start:start + entry["nbytes"]] = memoryview(np.ascontiguousarray(s.array)).cast("B")
    return bytes(out)


def decode_payload(data: bytes | bytearray | memoryview,
                   ) -> tuple[dict[str, Any], dict[tuple[int, str], np.ndarray]]:
    """The header and ``{(source, key): array}`` of a payload (the inverse of :func:`encode_payload`)."""
    data = memoryview(data).cast("B")
    if len(data) < _PREFIX.size:
        raise ValueError(f"payload is {len(data)} bytes, shorter than its {_PREFIX.size}-byte prefix")
    magic, n = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise ValueError(f"payload must start with {MAGIC!r}; got {bytes(magic)!r}")
    header = json.loads(bytes(data[_PREFIX.size:_PREFIX.size + n]).decode("utf-8"))
    data_start = _pad8(_PREFIX.size + n)
    arrays = {}
    for s in header["sections"]:
        start = data_start + s["offset"]
        if start + s["nbytes"] > len(data):
            raise ValueError(f"payload is truncated: section {s['key']!r} ends at byte "
                             f"{start + s['nbytes']} of {len(data)}")
        a = np.frombuffer(data[start:start + s["nbytes"]], dtype=_DTYPES[s["dtype"]])
        arrays[(s["source"], s["key"])] = a if s["layout"] == "tril" else a.reshape(s["shape"])
    return header, arrays


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


# --------------------------------------------------------------------- sections of a trace
def head_section(trace: AttentionTrace, layer: int, head: int, source: int = 0,
                 weighting: str = "attention") -> Section:
    """float16 attention of model layer ``layer``, head ``head`` (zero-copy for causal blocks
    of weights); ``weighting="norm"``: ``α_ij ‖f_h(x_j)‖``, key ``head/<L>/<H>/norm``."""
    b = trace.block()
    end = suffix(weighting)
    li, hi = b.layer_pos(layer), b.head_pos(head)
    data = b.packed(li, hi) if not end else _wire(b.stored_layout(li, hi, weighting))
    return _matrix_section(f"head/{layer}/{head}{end}", source, b, data)


def mean_section(trace: AttentionTrace, layer: int, source: int = 0, weighting: str = "attention") -> Section:
    """float16 mean over the captured heads of model layer ``layer`` (averaged in float32);
    ``weighting="norm"``: of ``α_ij ‖f_h(x_j)‖``, key ``mean/<L>/norm``."""
    b = trace.block()
    mean = _wire(b.mean_of_heads(b.layer_pos(layer), weighting))
    return _matrix_section(f"mean/{layer}{suffix(weighting)}", source, b, mean)


def _head_position(b: AttentionBlock, head: int | str) -> int | None:
    """Position of model head ``head`` in the block, or None for the mean of heads."""
    return None if head in (MEAN, "mean") else b.head_pos(int(head))


def pool_section(trace: AttentionTrace, layer: int, head: int | str, side: int, source: int = 0,
                 weighting: str = "attention") -> Section:
    """``pool/<layer>/<head>/<side>``: float16 (ceil(Q / side), ceil(K / side)), each cell the max
    over a side × side square of head ``head`` (``MEAN`` or ``"mean"``: the layer mean), computed
    by :meth:`AttentionBlock.pooled` without the whole matrix. Squares wholly above a causal
    diagonal hold :data:`NO_CELL`."""
    b = trace.block()
    side = int(side)
    hi = _head_position(b, head)
    values = _wire(b.pooled(b.layer_pos(layer), hi, side, weighting))
    if b.causal:  # square (r, c) holds a key <= its last query exactly when c <= r
        values[np.triu_indices(values.shape[0], 1, values.shape[1])] = NO_CELL
    name = "mean" if hi is None else int(head)
    return Section(f"pool/{layer}/{name}/{side}{suffix(weighting)}", source, "dense", values.shape, values,
                   {"side": side})


def region_section(trace: AttentionTrace, layer: int, head: int | str, queries: tuple[int, int],
                   keys: tuple[int, int], source: int = 0, weighting: str = "attention") -> Section:
    """``region/<layer>/<head>/<q0>/<q1>/<k0>/<k1>``: float16 (q1 - q0, k1 - k0) full-resolution
    weights of rows q0:q1 and keys k0:k1 (rows normalised over all keys, as in the model); cells
    above a causal diagonal hold :data:`NO_CELL`. At most :data:`REGION_MAX_CELLS` cells."""
    b = trace.block()
    (q0, q1), (k0, k1) = (int(x) for x in queries), (int(x) for x in keys)
    if (q1 - q0) * (k1 - k0) > REGION_MAX_CELLS:
        raise ValueError(f"a region holds at most {REGION_MAX_CELLS} cells; rows {q0}:{q1} × keys "
                         f"{k0}:{k1} is {(q1 - q0) * (k1 - k0)}: ask for a smaller one")
    hi = _head_position(b, head)
    values = _wire(b.region(b.layer_pos(layer), hi, (q0, q1), (k0, k1), weighting))
    if b.causal:
        values[np.arange(k0, k1)[None, :] > np.arange(q0, q1)[:, None]] = NO_CELL
    name = "mean" if hi is None else int(head)
    return Section(f"region/{layer}/{name}/{q0}/{q1}/{k0}/{k1}{suffix(weighting)}", source, "dense",
                   values.shape, values,
                   {"rows": [q0, q1], "cols": [k0, k1]})


def _matrix_section(key: str, source: int, b: AttentionBlock, data: np.ndarray) -> Section:
    if b.causal:
        return Section(key, source, "tril", (b.n_queries,), data)
    return Section(key, source, "dense", (b.n_queries, b.n_keys), data)


def thumbnails(trace: AttentionTrace, size: int = THUMB_SIZE, layers: Sequence[int] | None = None,
               heads: Sequence[int] | None = None, weighting: str = "attention") -> np.ndarray:
    """uint8 (n_layers, n_heads, R, C) grid thumbnails, at most ``size`` × ``size``.

    Each thumbnail pixel is the max over a square of ``side = ceil(T / size)`` queries × keys (so
    thin diagonals and sinks stay visible), divided by the head's max, then ``round(255 *
    sqrt(x))`` to lift small weights. ``R = ceil(n_queries / side)``, ``C = ceil(n_keys / side)``.
    ``layers``, ``heads``: only these layer and head positions (default: all), in that order.

    A block of weights is pooled from its stored float16 in one pass; a block of queries and
    keys, or ``weighting="norm"`` (``α_ij ‖f_h(x_j)‖``), head by head with
    :meth:`AttentionBlock.pooled`, so its weights are never all held.
    """
    b = trace.block()
    q, k = b.n_queries, b.n_keys
    side = max(1, math.ceil(max(q, k) / size))
    r, c = math.ceil(q / side), math.ceil(k / side)
    li = list(range(len(b.layers))) if layers is None else [int(x) for x in layers]
    hi = list(range(len(b.heads))) if heads is None else [int(x) for x in heads]
    if b.form == "queries-keys" or check_weighting(weighting) != "attention":
        values = np.zeros((len(li), len(hi), r, c), np.float32)
        for i, layer in enumerate(li):
            for j, head in enumerate(hi):
                values[i, j] = b.pooled(layer, head, side, weighting)
    else:
        # Non-negative float16 values order like their bit patterns read as int16, so the max
        # pooling runs on integers; -0.0 reads as -32768 and never wins.
        bits = b.data[np.ix_(li, hi)].view(np.int16)
        if b.causal:
            pooled = _pool_tril(bits, q, side, r)
        else:
            padded = np.full(bits.shape[:2] + (r * side, c * side), np.iinfo(np.int16).min, np.int16)
            padded[..., :q, :k] = bits
            pooled = padded.reshape(bits.shape[:2] + (r, side, c, side)).max(axis=(3, 5))
        values = np.maximum(pooled, 0).view(np.float16).astype(np.float32)
    peak = values.max(axis=(2, 3), keepdims=True)
    scaled = np.sqrt(np.divide(values, peak, out=np.zeros_like(values), where=peak > 0))
    return np.rint(255 * scaled).astype(np.uint8)


def _pool_tril(bits: np.ndarray, t: int, side: int, s: int) -> np.ndarray:
    """Max over ``side`` × ``side`` squares of packed lower triangles, int16 (…, s, s); squares
    above the diagonal hold 0."""
    rows = np.arange(t)
    n_squares = rows // side + 1  # squares of columns touched by each row
    row_of = np.repeat(rows, n_squares)
    col_square = np.arange(len(row_of)) - np.repeat(np.cumsum(n_squares) - n_squares, n_squares)
    starts = geometry(True, t, t).row_starts[row_of] + col_square * side
    per_row = np.maximum.reduceat(bits, starts, axis=-1)  # (…, n) max of each row's piece of a square
    cell = (row_of // side) * s + col_square
    order = np.argsort(cell, kind="stable")
    cells, first = np.unique(cell[order], return_index=True)
    pooled = np.maximum.reduceat(per_row[..., order], first, axis=-1)
    out = np.zeros(bits.shape[:-1] + (s * s,), dtype=np.int16)
    out[..., cells] = pooled
    return out.reshape(bits.shape[:-1] + (s, s))


def grid_sections(trace: AttentionTrace, metrics: Mapping[str, np.ndarray] | None = None,
                  source: int = 0, thumb_size: int = THUMB_SIZE, *,
                  thumbs: np.ndarray | None = None, weighting: str = "attention") -> list[Section]:
    """The all-heads grid: ``thumbs`` (made here unless given) plus one ``metric/<name>`` per
    (n_layers, n_heads) array; ``weighting="norm"``: ``thumbs/norm`` and ``metric/<name>/norm``
    (the metrics are given: computed by the caller with that weighting)."""
    end = suffix(weighting)
    thumbs = thumbnails(trace, thumb_size, weighting=weighting) if thumbs is None else thumbs
    out = [Section(f"thumbs{end}", source, "dense", thumbs.shape, thumbs)]
    shape = thumbs.shape[:2]
    for name, values in (metrics or {}).items():
        v = np.asarray(values, dtype=np.float32)
        if v.shape != shape:
            raise ValueError(f"metric {name!r} must have shape {shape} (captured layers × heads); "
                             f"got {v.shape}")
        out.append(Section(f"metric/{name}{end}", source, "dense", shape, v))
    return out


def key_sections(trace: AttentionTrace, key: str, source: int = 0,
                 metrics: Mapping[str, np.ndarray] | None = None) -> list[Section]:
    """The sections answering a fetch of ``key`` (ending in ``/norm``: value-weighted);
    :class:`FetchError` names what is allowed. ``metrics``: the grid's, of that weighting."""
    base, weighting = split_weighting(key) if isinstance(key, str) else ("", "attention")
    parts = base.split("/")
    b = trace.block()
    try:
        if weighting != "attention":
            trace.check_weighting(weighting)
        if len(parts) == 3 and parts[0] == "head":
            return [head_section(trace, int(parts[1]), int(parts[2]), source, weighting)]
        if len(parts) == 2 and parts[0] == "mean":
            return [mean_section(trace, int(parts[1]), source, weighting)]
        if len(parts) == 4 and parts[0] == "pool":
            side = int(parts[3])
            if side < 1:
                raise ValueError(f"side must be a positive number of tokens; got {side}")
            return [pool_section(trace, int(parts[1]), _head_name(parts[2]), side, source, weighting)]
        if len(parts) == 7 and parts[0] == "region":
            q0, q1, k0, k1 = (int(x) for x in parts[3:])
            return [region_section(trace, int(parts[1]), _head_name(parts[2]), (q0, q1), (k0, k1), source,
                                   weighting)]
        if parts == ["grid"]:
            return grid_sections(trace, metrics, source, weighting=weighting)
    except (IndexError, ValueError, TypeError) as e:
        raise FetchError(f"cannot send {key!r}: {e}") from None
    raise FetchError(f"cannot send {key!r}: key must be 'head/<layer>/<head>', 'mean/<layer>', "
                     "'pool/<layer>/<head or mean>/<side>', "
                     "'region/<layer>/<head or mean>/<q0>/<q1>/<k0>/<k1>' or 'grid', each optionally "
                     f"followed by '/norm' (value-weighted), with layers {format_ranges(b.layers)} and "
                     f"heads {format_ranges(b.heads)}")


def _head_name(text: str) -> int | str:
    if text == "mean":
        return text
    if int(text) < 0:
        raise ValueError(f"head must be a captured head index or 'mean'; got {text!r}")
    return int(text)


# --------------------------------------------------------------------- whole payloads
def source_header(trace: AttentionTrace, label: str) -> dict[str, Any]:
    """What the front end needs to know about one trace besides its numbers."""
    b = trace.block()
    out = {"label": label, "model": _finite(jsonable(trace.model)), "tokens": trace.tokens.to_json(),
           "spans": {k: list(v) for k, v in trace.spans.items()}, "block": b.name,
           "causal": b.causal, "n_queries": b.n_queries, "n_keys": b.n_keys,
           "layers": list(b.layers), "heads": list(b.heads)}
    if b.keys != b.queries:  # cross-attention: keys run over the other sequence
        out["key_tokens"] = trace.sequence(b.keys).to_json()
    return out


def all_bytes(trace: AttentionTrace) -> int:
    """Bytes of every head and layer mean of a trace's shown block."""
    b = trace.block()
    return b.weights_nbytes * (len(b.heads) + 1) // len(b.heads)


def trace_payload(traces: Sequence[AttentionTrace], *, layer: int, head: int,
                  labels: Sequence[str] = ("A", "B"),
                  metrics: Sequence[Mapping[str, np.ndarray] | None] | None = None,
                  metric_descriptions: Mapping[str, str] | None = None,
                  send_all_below: int = 8 * 2**20, bokeh_version: str = "",
                  trace_id: str | None = None, thumb_size: int = THUMB_SIZE,
                  pool_side: int = 0, weighting: str = "attention") -> tuple[bytes, dict[str, Any]]:
    """The first payload of a widget: everything when small, else what the first paint needs.

    traces : one trace, or two for the compare view (A, B).
    layer, head : the view shown first (``head=MEAN``, -1, for the mean of heads).
    send_all_below : when all heads and means of all traces fit in this many bytes the payload
        is ``complete`` (every key, the grid too) and the browser never fetches; otherwise it
        holds the shown head and layer mean of each trace and the rest is fetched on demand.
    pool_side : when not complete and > 0 (long traces), the header says ``pool_side`` and the
        payload holds only the shown head of each trace pooled to side × side squares
        (``pool/<layer>/<head>/<side>``); the front end fetches every other view pooled alike,
        and full-resolution regions when zoomed in.
    weighting : the weighting shown first: with ``"norm"`` the first paint's sections are
        value-weighted (``…/norm`` keys; a complete payload holds them besides every weight).
        ``complete`` covers the weights only: value-weighted keys not in the payload are fetched.

    Returns the bytes and the header (without its section table).
    """
    if len(traces) not in (1, 2):
        raise ValueError(f"traces must hold one trace, or two to compare; got {len(traces)}")
    metrics = list(metrics) if metrics is not None else [None] * len(traces)
    complete = sum(all_bytes(t) for t in traces) <= send_all_below
    header = {"protocol": PROTOCOL_VERSION, "trace_id": trace_id or uuid.uuid4().hex[:12],
              "complete": complete, "mode": "single" if len(traces) == 1 else "compare",
              "bokeh_version": bokeh_version,
              "sources": [source_header(t, labels[i]) for i, t in enumerate(traces)],
              "metrics": dict(metric_descriptions or {}), "thumb_size": thumb_size}
    pooled = not complete and pool_side > 0
    if pooled:
        header["pool_side"] = int(pool_side)
    sections: list[Section] = []
    for i, t in enumerate(traces):
        b = t.block()
        first = check_weighting(weighting)
        if complete:
            for layer_i in b.layers:
                sections.append(mean_section(t, layer_i, i))
                sections.extend(head_section(t, layer_i, h, i) for h in b.heads)
            sections.extend(grid_sections(t, metrics[i], i, thumb_size))
            if first == "attention":
                continue
        if pooled:
            # The layer mean costs every head of the layer (seconds at 8k tokens): fetched after
            # the first paint instead.
            if head != MEAN:
                sections.append(pool_section(t, layer, head, pool_side, i, first))
        else:
            sections.append(mean_section(t, layer, i, first))
            if head != MEAN:
                sections.append(head_section(t, layer, head, i, first))
    return encode_payload(header, sections), header


def fetch_payload(trace: AttentionTrace, key: str, *, source: int, trace_id: str,
                  metrics: Mapping[str, np.ndarray] | None = None,
                  metric_descriptions: Mapping[str, str] | None = None) -> bytes:
    """The buffer of a ``data`` reply: a payload holding just the sections for ``key``."""
    header = {"protocol": PROTOCOL_VERSION, "trace_id": trace_id, "key": key}
    if metric_descriptions:
        header["metrics"] = dict(metric_descriptions)
    return encode_payload(header, key_sections(trace, key, source, metrics))



def _finite(x: Any) -> Any:
    """JSON the browser can parse: NaN and infinities (not JSON) become null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x
