"""Offline HTML snapshots: one self-contained file running the widget's own front end.

A snapshot holds the widget's ESM (unchanged), BokehJS from the installed bokeh, the encoded
attention and a small stand-in for the widget model (``get``, ``set``, ``on``, ``off``,
``save_changes``, ``send``). The stand-in answers the front end's custom messages (head
fetches) from replies recorded in Python by the widget's own message handler, so the page
behaves like the live widget with no kernel and makes no network request at all.

Compactness. Attention is stored as the front end's own payloads, byte-shuffled (the high
bytes of float16 values, which hold sign and exponent, compress well once they sit together),
deflated, and decoded in the browser with ``DecompressionStream``. A written file is a
windows-1252 document whose binary blocks are the deflated bytes themselves, with only four
byte values escaped, so 1 MB of compressed data costs about 1.02 MB of file (base64 would cost
1.33 MB). :func:`save_snapshot` without a path returns the same page as pure ASCII with
base64 blocks, fit for an iframe ``srcdoc`` (see :func:`static`).

The page decodes only what its first view needs (BokehJS, the widget, the shown head and
layer mean) before it paints; each other head is decoded when the view first asks for it.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .trace import write_atomically

# --------------------------------------------------------------------------- binary blocks
# Inside a <script> element's text the HTML parser replaces NUL, folds CR into LF and ends the
# element at "</script". Those bytes (and the escape byte itself) are written as "=" + digit.
_ESCAPED = b"\x00\r<="
_COMPRESSION_LEVEL = 6


def _cp1252_code_points() -> list[int]:
    """The code points the WHATWG windows-1252 decoder gives bytes 0x80..0x9F.

    Five bytes are undefined in Python's cp1252; browsers map them to the same C1 control.
    """
    points = []
    for b in range(0x80, 0xA0):
        try:
            points.append(ord(bytes([b]).decode("cp1252")))
        except UnicodeDecodeError:
            points.append(b)
    return points


def _escape_raw(data: bytes) -> bytes:
    out = data.replace(b"=", b"=3")
    for i, byte in enumerate(_ESCAPED[:3]):
        out = out.replace(bytes([byte]), b"=" + str(i).encode())
    return out


def _shuffle(data: bytes, itemsize: int) -> bytes:
    """Byte planes: every item's first byte, then every item's second byte, …"""
    if itemsize == 1:
        return data
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, itemsize).T.tobytes()


@dataclass
class _Store:
    """Compressed binary blocks of a page, each decoded lazily in the browser."""

    blobs: list[bytes] = field(default_factory=list)
    meta: list[dict[str, int]] = field(default_factory=list)

    def add(self, data: bytes | memoryview, itemsize: int = 1) -> int:
        """Add one block; ``itemsize`` is the width of the numbers in it (2 for float16)."""
        data = bytes(data)
        shuffle = itemsize if itemsize > 1 and len(data) % itemsize == 0 else 1
        self.blobs.append(zlib.compress(_shuffle(data, shuffle), _COMPRESSION_LEVEL))
        self.meta.append({"n": len(data), "shuffle": shuffle})
        return len(self.blobs) - 1

    def pop(self, index: int) -> None:
        """Remove the last block, which must be ``index``."""
        if index != len(self.blobs) - 1:
            raise ValueError(f"only the last block ({len(self.blobs) - 1}) can be removed; got {index}")
        self.blobs.pop()
        self.meta.pop()

    def elements(self, portable: bool, indices: Iterable[int]) -> Iterable[bytes]:
        kind = b"b64" if portable else b"raw"
        for i in indices:
            blob = self.blobs[i]
            body = base64.b64encode(blob) if portable else _escape_raw(blob)
            yield b'<script type="application/x-attn-widget-block" id="aw-b%d" data-enc="%s">' % (
                i, kind) + body + b"</script>\n"


Part = tuple[int, int, int]  # (block, start, stop): a byte range of one decoded block


# --------------------------------------------------------------------------- the page
_BOOT_JS = r"""
(async () => {
  const root = document.getElementById("aw-root");
  const fail = (err) => {
    console.error(err);
    const p = document.createElement("p");
    p.className = "aw-snap-error";
    p.textContent = "This snapshot could not be shown: " + (err && err.message || err) +
      ". It needs a current browser (Chrome, Edge, Firefox or Safari from 2023 on).";
    root.replaceChildren(p);
  };
  try {
    const M = JSON.parse(document.getElementById("aw-manifest").textContent);
    const lut = new Uint8Array(0x10000);
    for (let i = 0; i < 256; i++) lut[i] = i;
    M.cp1252.forEach((cp, i) => { lut[cp] = 0x80 + i; });
    const esc = [0x00, 0x0d, 0x3c, 0x3d];
    const fromRaw = (s) => {
      const out = new Uint8Array(s.length);
      let n = 0;
      for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        out[n++] = c === 61 ? esc[s.charCodeAt(++i) - 48] : lut[c];
      }
      return out.subarray(0, n);
    };
    const fromB64 = (s) => Uint8Array.fromBase64 ? Uint8Array.fromBase64(s)
      : Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
    const inflate = async (bytes) => {
      const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
      return new Uint8Array(await new Response(stream).arrayBuffer());
    };
    const unshuffle = (planes, k) => {
      if (k === 1) return planes;
      const n = planes.length / k, out = new Uint8Array(planes.length);
      for (let j = 0; j < k; j++) {
        const plane = planes.subarray(j * n, (j + 1) * n);
        for (let i = 0; i < n; i++) out[i * k + j] = plane[i];
      }
      return out;
    };
    const blocks = new Map();
    const block = (i) => {
      if (!blocks.has(i)) {
        blocks.set(i, (async () => {
          if (!document.getElementById("aw-b" + i) && document.readyState === "loading") {
            await new Promise((done) => document.addEventListener("DOMContentLoaded", done, { once: true }));
          }
          const el = document.getElementById("aw-b" + i);
          const text = el.textContent;
          el.textContent = "";  // the decoded copy is all we keep
          const packed = el.dataset.enc === "b64" ? fromB64(text) : fromRaw(text);
          const bytes = unshuffle(await inflate(packed), M.blocks[i].shuffle);
          if (bytes.length !== M.blocks[i].n) throw new Error("block " + i + " is damaged");
          return bytes;
        })());
      }
      return blocks.get(i);
    };
    const bytesOf = async (parts) => {
      const pieces = await Promise.all(parts.map(([b, s, e]) => block(b).then((u) => u.subarray(s, e))));
      const out = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of pieces) { out.set(p, at); at += p.length; }
      return out;
    };
    const text = async (parts) => new TextDecoder().decode(await bytesOf(parts));
    const view = (u) => new DataView(u.buffer, u.byteOffset, u.byteLength);

    const key = (msg) => JSON.stringify(M.request_fields.map((f) => msg[f] ?? null));
    const answer = async (msg) => {
      const rec = M.replies[key(msg)];
      const echo = Object.fromEntries(M.echo_fields.filter((f) => f in msg).map((f) => [f, msg[f]]));
      if (!rec) {
        const template = M.unanswered[msg.type] ?? M.unanswered["*"];
        const copied = Object.fromEntries(template.copy.filter((f) => f in msg).map((f) => [f, msg[f]]));
        const message = template.message.replace(/\{(\w+)\}/g, (_, f) => String(msg[f] ?? ""));
        return [{ ...template.content, ...copied, ...echo, message }, []];
      }
      const buffers = await Promise.all(rec.buffers.map((parts) => bytesOf(parts).then(view)));
      return [{ ...rec.content, ...echo }, buffers];
    };

    class StandInModel {
      constructor(state) { this._state = state; this._handlers = new Map(); }
      get(name) { return this._state[name]; }
      set(name, value) {
        if (Object.is(this._state[name], value)) return;
        this._state[name] = value;
        this._emit("change:" + name, this, value);
        this._emit("change", this);
      }
      save_changes() {}
      on(names, callback) {
        for (const name of names.split(/\s+/)) {
          if (!this._handlers.has(name)) this._handlers.set(name, new Set());
          this._handlers.get(name).add(callback);
        }
      }
      off(names, callback) {
        if (!names) { this._handlers.clear(); return; }
        for (const name of names.split(/\s+/)) {
          if (callback) this._handlers.get(name)?.delete(callback);
          else this._handlers.delete(name);
        }
      }
      send(msg) {
        answer(msg).then(([content, buffers]) => this._emit("msg:custom", content, buffers), fail);
      }
      _emit(name, ...args) {
        for (const cb of [...(this._handlers.get(name) ?? [])]) {
          try { cb(...args); } catch (err) { console.error(err); }
        }
      }
    }

    const state = {};
    for (const [name, value] of Object.entries(M.state)) state[name] = value;
    for (const [name, parts] of Object.entries(M.binary_state)) state[name] = view(await bytesOf(parts));
    for (const parts of M.scripts) {
      const s = document.createElement("script");
      s.textContent = await text(parts);
      document.head.appendChild(s);
    }
    if (M.css) {
      const style = document.createElement("style");
      style.textContent = await text(M.css);
      document.head.appendChild(style);
    }
    const url = URL.createObjectURL(new Blob([await text(M.esm)], { type: "text/javascript" }));
    const mod = await import(url);
    URL.revokeObjectURL(url);
    let widget = mod.default ?? mod;
    if (typeof widget === "function") widget = await widget();
    const model = new StandInModel(state);
    await widget.initialize?.({ model });
    const el = document.createElement("div");
    root.replaceChildren(el);
    await widget.render({ model, el });
    if (window.parent !== window) {  // shown in an iframe (static()): report the height to fit
      const post = () => window.parent.postMessage(
        { attnWidgetHeight: document.body.getBoundingClientRect().bottom + 16 }, "*");
      new ResizeObserver(post).observe(document.body);
    }
    window.attnWidgetSnapshot = { model, ready: true };
    document.documentElement.dataset.snapshotReady = "1";
  } catch (err) {
    fail(err);
  }
})();
"""

_STYLE = """
:root { color-scheme: light dark; }
body { margin: 0; padding: 12px 16px; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
       background: Canvas; color: CanvasText; }
.aw-snap-head { margin: 0 0 10px; }
.aw-snap-head h1 { font-size: 16px; margin: 0 0 2px; font-weight: 600; }
.aw-snap-head p { margin: 2px 0; color: GrayText; font-size: 13px; }
.aw-snap-head .aw-snap-left-out { color: CanvasText; background: rgba(255, 170, 0, 0.15);
       border-left: 3px solid #e69500; padding: 4px 8px; }
.aw-snap-left-out details { display: inline; }
.aw-snap-error { color: #b00020; font-weight: 600; }
#aw-root:empty::before { content: "Loading\\2026"; color: GrayText; }
"""


def _ascii_html(text: str) -> str:
    """Text escaped for HTML, with every non-ASCII character as a numeric reference."""
    return html.escape(text).encode("ascii", "xmlcharrefreplace").decode("ascii")


def _script_json(obj: Any) -> bytes:
    """JSON safe inside a <script> element of an ASCII or windows-1252 page."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("ascii")


@dataclass
class _Page:
    """Everything one snapshot page holds, before it is written out.

    Replies are keyed by the request fields in ``request_fields``; a reply gets the request's
    ``echo_fields`` (its ``id``). A request with no recorded reply gets ``unanswered[type]``
    (or ``unanswered["*"]``): its ``content``, the request's ``copy`` fields, and ``message``
    with ``{field}`` filled from the request.
    """

    title: str
    portable: bool = False
    header_html: str = ""
    store: _Store = field(default_factory=_Store)
    state: dict[str, Any] = field(default_factory=dict)
    binary_state: dict[str, list[Part]] = field(default_factory=dict)
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    request_fields: Sequence[str] = ("type",)
    echo_fields: Sequence[str] = ()
    unanswered: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "*": {"content": {"type": "error"}, "copy": [], "message": "not available in an offline snapshot"}})
    scripts: list[list[Part]] = field(default_factory=list)
    esm: list[Part] = field(default_factory=list)
    css: list[Part] = field(default_factory=list)

    def add_bytes(self, data: bytes | memoryview, itemsize: int = 1) -> list[Part]:
        return [(self.store.add(data, itemsize), 0, len(data))]

    def add_text(self, text: str) -> list[Part]:
        return self.add_bytes(text.encode("utf-8"))

    def add_state(self, state: dict[str, Any], itemsize: Callable[[str], int]) -> None:
        """A widget's synced state (from ``get_state()``); bytes traits go to binary blocks."""
        for name, value in state.items():
            if isinstance(value, (bytes, bytearray, memoryview)):
                self.binary_state[name] = self.add_bytes(value, itemsize(name))
            else:
                self.state[name] = value

    def add_reply(self, request: dict[str, Any], content: dict[str, Any], buffers: Sequence[bytes],
                  itemsize: int = 1) -> int:
        """Record the answer to ``request``; returns the bytes it adds to the page."""
        refs = [self.add_bytes(b, itemsize) for b in buffers]
        entry = {"content": content, "buffers": refs}
        key = self.request_key(request)
        self.replies[key] = entry
        blocks = sum(self._block_bytes(p[0]) for parts in refs for p in parts)
        return blocks + len(_script_json({key: entry}))

    def drop_last_reply(self, request: dict[str, Any]) -> None:
        """Take back the reply :meth:`add_reply` recorded last."""
        entry = self.replies.pop(self.request_key(request))
        for block in reversed([p[0] for parts in entry["buffers"] for p in parts]):
            self.store.pop(block)

    def request_key(self, request: dict[str, Any]) -> str:
        return json.dumps([request.get(f) for f in self.request_fields], separators=(",", ":"),
                          ensure_ascii=False)

    def _block_bytes(self, index: int) -> int:
        blob = self.store.blobs[index]
        encoded = 4 * ((len(blob) + 2) // 3) if self.portable else len(blob) + sum(
            blob.count(bytes([c])) for c in _ESCAPED)
        return encoded + 100  # the element around it and its manifest entry

    def render(self) -> bytes:
        manifest = {"cp1252": _cp1252_code_points(), "blocks": self.store.meta, "state": self.state,
                    "binary_state": self.binary_state, "replies": self.replies,
                    "request_fields": list(self.request_fields), "echo_fields": list(self.echo_fields),
                    "unanswered": self.unanswered, "scripts": self.scripts, "esm": self.esm,
                    "css": self.css}
        charset = "utf-8" if self.portable else "windows-1252"
        head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="{charset}">\n'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f"<title>{_ascii_html(self.title)}</title>\n<style>{_STYLE}</style></head>\n"
                f'<body>\n{self.header_html}\n<div id="aw-root"></div>\n'
                f"<noscript>This snapshot needs JavaScript.</noscript>\n")
        # What the first paint needs comes before the script, which starts while the parser
        # is still reading the (much larger) blocks of replies after it.
        first = sorted({p[0] for parts in [*self.scripts, self.esm, self.css, *self.binary_state.values()]
                        for p in parts})
        rest = sorted(set(range(len(self.store.blobs))) - set(first))
        parts = [head.encode("ascii"), b'<script type="application/json" id="aw-manifest">',
                 _script_json(manifest), b"</script>\n", *self.store.elements(self.portable, first),
                 b"<script>", _BOOT_JS.encode("ascii"), b"</script>\n",
                 *self.store.elements(self.portable, rest), b"</body></html>\n"]
        return b"".join(parts)


def _record_reply(widget, request: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    """The reply the widget's own message handler gives ``request``, as a kernel would send it."""
    sent: list[tuple[dict[str, Any], list[bytes]]] = []

    def capture_send(content, buffers=None):
        sent.append((content, [bytes(b) for b in buffers or []]))

    for grid in widget._grid:  # computed on the grid thread: recorded once it is there
        grid.result()
    widget.send = capture_send  # instance attribute shadows the method while we record
    try:
        widget._handle_custom_msg(request, [])
    finally:
        del widget.send
    if len(sent) != 1:
        raise RuntimeError(f"the widget answered request {request!r} with {len(sent)} messages; "
                           "a snapshot needs exactly one")
    return sent[0]


# --------------------------------------------------------------------------- attention snapshots
MB = 1_000_000
_MIN_MEAN_BITS = 4
_FETCH_FIELDS = ("type", "trace_id", "source", "key")
HeadChoice = Sequence[int] | Sequence[tuple[int, int]] | None


@dataclass(frozen=True)
class Snapshot:
    """What :func:`save_snapshot` wrote; usable as a path (``open(snapshot)`` works).

    Attributes
    ----------
    path : the HTML file.
    nbytes : its size in bytes.
    heads : (layer, head) pairs whose full attention is in the file, most important first.
    left_out : (layer, head) pairs left out to stay under ``budget_mb``, in the same order.
    n_layers : layers covered by per-layer means and the all-heads grid.
    cells_per_head : attention cells of one head's full matrix (T × T for self-attention).
    n_sources : traces in the file (2 for a compare view).
    budget_mb : the size limit it was written under.
    mean_bits : mantissa bits kept in the layer means: 10 is exact float16; fewer when the
        means had to be rounded to leave room for heads: relative error ≤ 2^-(mean_bits+1), or
        absolute error ≤ 2^(-15-mean_bits) for weights below 2^-14 (float16 subnormals).
    """

    path: Path
    nbytes: int
    heads: tuple[tuple[int, int], ...]
    left_out: tuple[tuple[int, int], ...]
    n_layers: int
    cells_per_head: int
    n_sources: int
    budget_mb: float
    mean_bits: int = 10

    @property
    def bytes_per_cell(self) -> float:
        """File bytes ÷ (heads included × cells per head), everything counted."""
        return self.nbytes / max(1, self.n_sources * len(self.heads) * self.cells_per_head)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        n = len(self.heads) + len(self.left_out)
        line = (f"wrote {self.path} ({self.nbytes / MB:.2f} MB): {len(self.heads)} of {n} heads in full, "
                f"{self.bytes_per_cell:.2f} bytes per attention cell; layer means and the all-heads "
                f"grid cover all {self.n_layers} layers")
        if self.left_out:
            line += (f"\nleft out {len(self.left_out)} heads to stay under {self.budget_mb:g} MB: "
                     f"{_head_list_text(self.left_out)}")
        if self.mean_bits < 10:
            line += (f"\nlayer means rounded to {self.mean_bits} mantissa bits to fit (relative error "
                     f"≤ {2.0 ** -(self.mean_bits + 1):.2%}); heads are exact float16")
        return line


def save_snapshot(source, path: str | os.PathLike | None = None, *, layers: Sequence[int] | None = None,
                  heads: HeadChoice = None, budget_mb: float = 25.0, title: str | None = None):
    """Write one self-contained HTML file of a trace or widget that works offline.

    The file runs the widget's own front end with every client-side interaction (sliders,
    head mean, hover, pin, colour scales, all-heads grid, generation scrubber) and makes no
    network request: BokehJS, the widget code and the attention are inlined.

    Parameters
    ----------
    source : AttentionTrace or AttentionWidget
        A widget's view (layer, head, scale, step, pinned token) and compare trace are kept.
    path : file to write, atomically. ``None`` returns the page as a string instead (pure
        ASCII, base64 blocks: about a third larger, fit for an iframe ``srcdoc``).
    layers : model layers to include (default: every captured layer).
    heads : head indices to include in every layer (``[0, 3]``), or ``(layer, head)`` pairs
        (``[(5, 3), (17, 2)]``) in the order they matter to you: only those heads are in the
        file in full, while the layer means and the grid still cover every layer. Default: all.
    budget_mb : largest file to write (1 MB = 10⁶ bytes). Per-layer means and the all-heads
        grid are always included; heads follow, most important first, until the next would
        not fit. Importance is your order for ``(layer, head)`` pairs, otherwise the head's
        role and sink scores: ``max(previous-token, self, 1 − normalised entropy) × (1 − sink)``,
        so focused heads with a clear role come first and heads that only look at the sink
        come last. The page lists every head it left out; a fetch of one says so.
    title : page title (default: the model name and the start of the text).

    Returns
    -------
    Snapshot (with the path, size and the heads included and left out), or the page as a
    string when ``path`` is None.

    Raises
    ------
    ValueError : when even the layer means and grid exceed ``budget_mb`` (the message gives
        their size and cheaper choices), or for a layer or head that was not captured.
    OSError : when ``path`` cannot be written (one message naming the path and the reason).
    """
    widget, candidates = _snapshot_widget(source, layers, heads)
    try:
        data, included, left_out, mean_bits = _attention_page(widget, candidates, budget_mb, title,
                                                              portable=path is None)
    finally:
        widget.close()
    if path is None:
        return data.decode("ascii")
    path = write_atomically(path, lambda f: f.write(data), "snapshot")
    b = widget.trace.block()
    return Snapshot(path, len(data), tuple(included), tuple(left_out), len(b.layers),
                    b.n_queries * b.n_keys, len(widget.traces), float(budget_mb), mean_bits)


def static(source, *, height: int = 1000, budget_mb: float = 10.0, **kwargs) -> StaticSnapshot:
    """The snapshot as an ``<iframe srcdoc>`` display object: interactive in any HTML copy of a
    notebook (nbconvert, nbviewer, a static site), offline, with no kernel.

    ``kwargs`` are those of :func:`save_snapshot` (``layers``, ``heads``, ``title``). The page
    is stored in the notebook, so the budget is smaller than a file's (default 10 MB). The
    iframe starts ``height`` pixels tall and fits itself to the page where scripts may run.
    """
    return StaticSnapshot(save_snapshot(source, None, budget_mb=budget_mb, **kwargs), height)


@dataclass(frozen=True)
class StaticSnapshot:
    """A snapshot page shown in a sandboxed iframe (``_repr_html_``); ``page`` is its HTML."""

    page: str
    height: int = 1000

    def _repr_html_(self) -> str:
        frame = f"aw-static-{uuid.uuid4().hex[:12]}"
        # The page reports its height (postMessage) so the iframe shows it without a scrollbar;
        # where scripts are not run, the iframe keeps its starting height.
        return (f'<iframe id="{frame}" srcdoc="{html.escape(self.page, quote=True)}" '
                f'sandbox="allow-scripts" style="width: 100%; height: {int(self.height)}px; border: 0;" '
                f'title="attention snapshot"></iframe>\n<script>(() => {{ const f = '
                f'document.getElementById("{frame}"); addEventListener("message", (e) => {{ '
                'if (f && e.source === f.contentWindow && typeof e.data?.attnWidgetHeight === "number") '
                'f.style.height = Math.ceil(e.data.attnWidgetHeight) + "px"; }); })();</script>')


def _snapshot_widget(source, layers: Sequence[int] | None, heads: HeadChoice):
    """A fresh widget for the chosen layers/heads that fetches every head, and the (layer, head)
    pairs to include, most important first."""
    import traitlets

    from . import analysis
    from .trace import AttentionTrace
    from .widget import MEAN, AttentionWidget, _block_view

    if isinstance(source, AttentionTrace):
        traces, view, labels = (source,), {}, ("A", "B")
    elif isinstance(source, AttentionWidget):
        traces = tuple(_block_view(t, source.block) for t in source.traces)  # the block it shows
        view = {name: getattr(source, name) for name in ("layer", "head", "scale", "theme")}
        labels = tuple(s["label"] for s in _payload_header(source._payload)["sources"])
    else:
        raise TypeError(f"source must be an AttentionTrace or AttentionWidget; got {type(source).__name__}")
    pairs = [tuple(int(x) for x in h) for h in heads] if heads is not None and len(heads) and \
        not isinstance(heads[0], (int, float)) else None
    head_ids = None if pairs is not None or heads is None else [int(h) for h in heads]
    traces = tuple(_select(t, layers, head_ids) for t in traces)
    b = traces[0].block()
    if pairs is not None:
        for layer, head in pairs:  # clear errors for pairs that were not captured
            b.layer_pos(layer)
            b.head_pos(head)
        candidates = list(dict.fromkeys(pairs))
    else:
        scores = analysis.head_scores(traces[0])
        order = np.argsort(-_priority(scores), axis=None, kind="stable")
        candidates = [(b.layers[i // len(b.heads)], b.heads[i % len(b.heads)]) for i in order]
    layer, head = view.get("layer"), view.get("head")
    if layer not in b.layers:
        layer = candidates[0][0] if candidates else b.layers[0]
    if head != MEAN and (layer, head) not in candidates:
        head = next((h for lay, h in candidates if lay == layer), MEAN)
    if head != MEAN:
        candidates.remove((layer, head))
        candidates.insert(0, (layer, head))
    widget = AttentionWidget(traces[0], compare=traces[1] if len(traces) > 1 else None, labels=labels,
                             layer=layer, head=head, scale=view.get("scale", "linear"),
                             theme=view.get("theme", "auto"), send_all_below=0, push_bokeh=False)
    if isinstance(source, AttentionWidget):
        with contextlib.suppress(traitlets.TraitError):  # both hold when the block has the steps
            widget.step, widget.selected_token = source.step, source.selected_token
    return widget, candidates


def _priority(scores) -> np.ndarray:
    role = np.fmax(np.fmax(scores.previous_token_score, scores.self_score), 1 - scores.normalised_entropy)
    return np.nan_to_num(role * (1 - scores.sink_score), nan=0.0)


def _select(trace, layers: Sequence[int] | None, heads: Sequence[int] | None):
    """The trace restricted to some layers and heads of its shown block."""
    from .trace import AttentionBlock, AttentionTrace

    if layers is None and heads is None:
        return trace
    b = trace.block()
    li = [b.layer_pos(x) for x in (b.layers if layers is None else layers)]
    hi = [b.head_pos(x) for x in (b.heads if heads is None else heads)]
    if not li or not hi:
        raise ValueError(f"layers and heads must name at least one captured layer and head; got "
                         f"layers={layers!r}, heads={heads!r}")
    block = AttentionBlock(b.name, b.causal, tuple(b.layers[i] for i in li), tuple(b.heads[i] for i in hi),
                           b.data[np.ix_(li, hi)], b.queries, b.keys)
    return AttentionTrace(trace.tokens, {b.name: block}, trace.spans, trace.model, trace.options,
                          trace.source_tokens)


def _payload_header(payload: bytes) -> dict[str, Any]:
    from .encoding import decode_payload

    return decode_payload(payload)[0]


def _attention_page(widget, candidates: list[tuple[int, int]], budget_mb: float, title: str | None,
                    *, portable: bool) -> tuple[bytes, list[tuple[int, int]], list[tuple[int, int]], int]:
    """The page's bytes, the heads it holds, the heads it left out and the mantissa bits kept
    in the layer means (10: exact float16)."""
    from .widget import bokeh_source

    header = _payload_header(widget._payload)
    trace_id, n_sources = header["trace_id"], len(header["sources"])
    in_payload = {(s["source"], s["key"]) for s in header["sections"]}
    trace = widget.trace
    b = trace.block()
    budget = budget_mb * MB
    page = _Page(title or _default_title(trace), portable=portable,
                 request_fields=_FETCH_FIELDS, echo_fields=("id",), unanswered={
                     "fetch": {"content": {"type": "error"}, "copy": ["trace_id", "source", "key"],
                               "message": f"{{key}} is not in this snapshot: it was left out to keep "
                               f"the file under {budget_mb:g} MB (the list is at the top of the page); "
                               "its layer mean and grid thumbnail are here"},
                     "*": {"content": {"type": "error"}, "copy": [],
                           "message": "{type} needs a live kernel; this is an offline snapshot"}})
    page.scripts = [page.add_bytes(bokeh_source())]
    page.esm = page.add_text(str(widget._esm))
    state = {k: v for k, v in widget.get_state().items() if k not in ("_esm", "_css", "_bokeh_js")}
    state["_blocks"] = [widget.block]  # the block shown: switching re-encodes in a kernel
    page.add_state(state, itemsize=lambda name: 2 if name == "_payload" else 1)

    def fetch(source: int, key: str) -> dict[str, Any]:
        return {"type": "fetch", "id": 0, "trace_id": trace_id, "source": source, "key": key}

    def add(source: int, key: str, mean_bits: int = 10) -> int:
        request = fetch(source, key)
        content, buffers = _record_reply(widget, request)
        if content.get("type") != "data":
            raise RuntimeError(f"the widget could not answer {key!r}: {content.get('message')}")
        if mean_bits < 10:
            buffers = [_round_mantissa(buf, mean_bits) for buf in buffers]
        return page.add_reply(request, content, buffers, itemsize=1 if key == "grid" else 2)

    for source in range(n_sources):
        if (source, "grid") not in in_payload:
            add(source, "grid")
    means = [(s, f"mean/{layer}") for s in range(n_sources) for layer in b.layers
             if (s, f"mean/{layer}") not in in_payload]
    page.header_html = _header_html(page.title, candidates, candidates, budget_mb, 10)
    base = len(page.render())
    if base > budget:
        raise ValueError(_too_small(base, b, budget_mb, "with no layer mean"))
    # Layer means are always included. When at full float16 precision they would leave less
    # than a tenth of the budget for heads, their lowest mantissa bits are rounded away (the
    # page says so); heads themselves are never rounded.
    for mean_bits in range(10, _MIN_MEAN_BITS - 1, -1):
        size = base + sum(add(s, key, mean_bits) for s, key in means)
        if size <= (budget if mean_bits == _MIN_MEAN_BITS else 0.9 * budget):
            break
        for s, key in reversed(means):
            page.drop_last_reply(fetch(s, key))
    if size > budget:
        raise ValueError(_too_small(size, b, budget_mb, f"with the means rounded to {mean_bits} bits"))
    included: list[tuple[int, int]] = []
    for layer, head in candidates:
        key = f"head/{layer}/{head}"
        missing = [s for s in range(n_sources) if (s, key) not in in_payload]
        cost = sum(add(s, key) for s in missing)
        if size + cost > budget:
            for s in reversed(missing):
                page.drop_last_reply(fetch(s, key))
            break
        size += cost
        included.append((layer, head))
    while True:
        left_out = candidates[len(included):]
        page.header_html = _header_html(page.title, left_out, candidates, budget_mb, mean_bits)
        data = page.render()
        last = f"head/{included[-1][0]}/{included[-1][1]}" if included else None
        missing = [s for s in range(n_sources) if last and (s, last) not in in_payload]
        if len(data) <= budget or not missing:
            return data, included, left_out, mean_bits
        included.pop()  # the running estimate was short: give back the last head
        for s in reversed(missing):
            page.drop_last_reply(fetch(s, last))


def _too_small(size: int, b, budget_mb: float, how: str) -> str:
    return (f"this snapshot needs {size / MB:.1f} MB before any head (BokehJS, the grid and the "
            f"layer means of {len(b.layers)} layers at {b.n_queries} tokens, {how}), over "
            f"budget_mb={budget_mb:g}; raise budget_mb, or keep fewer layers (layers=[...]) or fewer "
            "tokens")


def _round_mantissa(payload: bytes, bits: int) -> bytes:
    """The payload with its float16 values rounded to ``bits`` mantissa bits (of 10)."""
    from .encoding import decode_payload

    buf = bytearray(payload)
    drop = 10 - bits
    for values in decode_payload(buf)[1].values():
        if values.dtype == np.float16:
            u = values.view(np.uint16)
            positive = u < 0x7C00  # finite, sign bit clear: attention weights and their means
            rounded = (u.astype(np.uint32) + (1 << (drop - 1))) >> drop << drop
            u[positive] = rounded[positive].astype(np.uint16)
    return bytes(buf)


def _header_html(title: str, left_out: Sequence[tuple[int, int]], candidates: Sequence[tuple[int, int]],
                 budget_mb: float, mean_bits: int) -> str:
    """The page's own heading (the widget shows the run's details): its title, that it is an
    offline snapshot, and plainly which heads were left out."""
    from . import __version__

    lines = [f"<h1>{_ascii_html(title)}</h1>",
             f"<p>Offline snapshot written by attn_widget {__version__}: every view below is in this "
             "file; no kernel and no network are needed.</p>"]
    if left_out:
        kept = len(candidates) - len(left_out)
        lines.append(
            f'<p class="aw-snap-left-out"><b>{len(left_out)} of {len(candidates)} heads were left '
            f"out</b> to keep this file under {budget_mb:g} MB; {kept} heads are here in full, and "
            "the layer means and all-heads grid still cover every head. Left out: "
            f"{_ascii_html(_head_list_text(left_out))}.</p>")
    if mean_bits < 10:
        lines.append(f'<p class="aw-snap-left-out">To fit, the layer means keep {mean_bits} of the '
                     f"10 float16 mantissa bits (relative error at most {2.0 ** -(mean_bits + 1):.2%}); "
                     "every head in the file is exact float16.</p>")
    return '<header class="aw-snap-head">' + "\n".join(lines) + "</header>"


def _head_list_text(pairs: Sequence[tuple[int, int]]) -> str:
    """``L0 H1, H4–H8; L3 H0–H8`` style list of (layer, head) pairs, grouped by layer."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in pairs:
        by_layer.setdefault(layer, []).append(head)
    groups = []
    for layer in sorted(by_layer):
        heads = sorted(by_layer[layer])
        runs, start = [], heads[0]
        for prev, cur in zip(heads, heads[1:] + [None]):
            if cur != prev + 1:
                runs.append(f"H{start}" if start == prev else f"H{start}–H{prev}")
                start = cur
        groups.append(f"L{layer} " + ", ".join(runs))
    return "; ".join(groups)


def _default_title(trace) -> str:
    """The model and the start of the text; for a chat-template prompt, the user's message
    (the prompt's last line of words) rather than the system prompt before it."""
    start, stop = trace.spans.get("prompt", trace.spans.get("input", (0, len(trace.tokens))))
    text = "".join(t for t, special in zip(trace.tokens.text[start:stop], trace.tokens.special[start:stop])
                   if not special)
    lines = [line.strip() for line in text.splitlines() if len(line.split()) > 1]
    if trace.options.get("chat") and lines:
        text = lines[-1]
    return f"{trace.model_name}: \u201c{_short(text, 80)}\u201d"


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"
