"""One snapshot page: compressed binary blocks, a manifest and the boot script that reads them.

A written file is a windows-1252 document whose binary blocks are the deflated bytes themselves,
with only four byte values escaped, so 1 MB of compressed data costs about 1.02 MB of file
(base64 would cost 1.33 MB). A portable page (for an iframe ``srcdoc``) is pure ASCII with
base64 blocks. Float16 data is byte-shuffled first (the high bytes of float16 values, which hold
sign and exponent, compress well once they sit together). The boot script decodes a block only
when the page first needs it, and stands in for the widget model, answering the front end's
requests from recorded replies.
"""

from __future__ import annotations

import base64
import html
import json
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
class BlockStore:
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


def ascii_html(text: str) -> str:
    """Text escaped for HTML, with every non-ASCII character as a numeric reference."""
    return html.escape(text).encode("ascii", "xmlcharrefreplace").decode("ascii")


def _script_json(obj: Any) -> bytes:
    """JSON safe inside a <script> element of an ASCII or windows-1252 page."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("ascii")


@dataclass
class Page:
    """Everything one snapshot page holds, before it is written out.

    Replies are keyed by the request fields in ``request_fields``; a reply gets the request's
    ``echo_fields`` (its ``id``). A request with no recorded reply gets ``unanswered[type]``
    (or ``unanswered["*"]``): its ``content``, the request's ``copy`` fields, and ``message``
    with ``{field}`` filled from the request.
    """

    title: str
    portable: bool = False
    header_html: str = ""
    store: BlockStore = field(default_factory=BlockStore)
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
                f"<title>{ascii_html(self.title)}</title>\n<style>{_STYLE}</style></head>\n"
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
