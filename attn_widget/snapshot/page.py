"""One snapshot page: compressed binary blobs, a manifest and the boot script that reads them.

A written file is a windows-1252 document whose binary blobs are the deflated bytes themselves,
with only four byte values escaped, so 1 MB of compressed data costs about 1.02 MB of file
(base64 would cost 1.33 MB). A portable page (for an iframe ``srcdoc``) is pure ASCII with
base64 blobs. Float16 data is byte-shuffled first (the high bytes of float16 values, which hold
sign and exponent, compress well once they sit together). The boot script decodes a blob only
when the page first needs it, and stands in for the widget model, answering the front end's
requests from recorded replies. It and the page's styles are front-end code: ``js/src/snapshot/``,
built with the widget into ``attn_widget/static/`` (``cd js && npm run build``).
"""

from __future__ import annotations

import base64
import functools
import html
import json
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------- binary blobs
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
class BlobStore:
    """Compressed binary blobs of a page, each decoded lazily in the browser."""

    blobs: list[bytes] = field(default_factory=list)
    meta: list[dict[str, int]] = field(default_factory=list)

    def add(self, data: bytes | memoryview, itemsize: int = 1) -> int:
        """Add one blob; ``itemsize`` is the width of the numbers in it (2 for float16)."""
        data = bytes(data)
        shuffle = itemsize if itemsize > 1 and len(data) % itemsize == 0 else 1
        self.blobs.append(zlib.compress(_shuffle(data, shuffle), _COMPRESSION_LEVEL))
        self.meta.append({"n": len(data), "shuffle": shuffle})
        return len(self.blobs) - 1

    def pop(self, index: int) -> None:
        """Remove the last blob, which must be ``index``."""
        if index != len(self.blobs) - 1:
            raise ValueError(f"only the last blob ({len(self.blobs) - 1}) can be removed; got {index}")
        self.blobs.pop()
        self.meta.pop()

    def elements(self, portable: bool, indices: Iterable[int]) -> Iterable[bytes]:
        kind = b"b64" if portable else b"raw"
        for i in indices:
            blob = self.blobs[i]
            body = base64.b64encode(blob) if portable else _escape_raw(blob)
            yield b'<script type="application/x-attn-widget-blob" id="aw-b%d" data-enc="%s">' % (
                i, kind) + body + b"</script>\n"


Part = tuple[int, int, int]  # (blob, start, stop): a byte range of one decoded blob


# --------------------------------------------------------------------------- the page
# The boot program and the page's styles are built from js/src/snapshot/ (with the widget).
_STATIC = Path(__file__).resolve().parent.parent / "static"
BOOT_SCRIPT = _STATIC / "snapshot.js"
STYLESHEET = _STATIC / "snapshot.css"


@functools.cache
def _built(path: Path, element: str) -> bytes:
    """A built file to inline in a ``<script>`` or ``<style>`` element: ASCII, and never ending it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RuntimeError(
            f"attn_widget's snapshot page is not built ({path} is missing). Build the front end from "
            "the repository root with: cd js && npm ci && npm run build") from None
    if not data.isascii() or f"</{element}".encode() in data.lower():
        raise RuntimeError(f"{path} cannot be inlined in a <{element}> element: rebuild it with "
                           "cd js && npm run build")
    return data


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
    store: BlobStore = field(default_factory=BlobStore)
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
        """A widget's synced state (from ``get_state()``); bytes traits go to binary blobs."""
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
        blobs = sum(self._blob_bytes(p[0]) for parts in refs for p in parts)
        return blobs + len(_script_json({key: entry}))

    def drop_last_reply(self, request: dict[str, Any]) -> None:
        """Take back the reply :meth:`add_reply` recorded last."""
        entry = self.replies.pop(self.request_key(request))
        for blob in reversed([p[0] for parts in entry["buffers"] for p in parts]):
            self.store.pop(blob)

    def request_key(self, request: dict[str, Any]) -> str:
        return json.dumps([request.get(f) for f in self.request_fields], separators=(",", ":"),
                          ensure_ascii=False)

    def _blob_bytes(self, index: int) -> int:
        blob = self.store.blobs[index]
        encoded = 4 * ((len(blob) + 2) // 3) if self.portable else len(blob) + sum(
            blob.count(bytes([c])) for c in _ESCAPED)
        return encoded + 100  # the element around it and its manifest entry

    def render(self) -> bytes:
        manifest = {"cp1252": _cp1252_code_points(), "blobs": self.store.meta, "state": self.state,
                    "binary_state": self.binary_state, "replies": self.replies,
                    "request_fields": list(self.request_fields), "echo_fields": list(self.echo_fields),
                    "unanswered": self.unanswered, "scripts": self.scripts, "esm": self.esm,
                    "css": self.css}
        charset = "utf-8" if self.portable else "windows-1252"
        head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="{charset}">\n'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f"<title>{ascii_html(self.title)}</title>\n<style>")
        body = (f'</style></head>\n<body>\n{self.header_html}\n<div id="aw-root"></div>\n'
                f"<noscript>This snapshot needs JavaScript.</noscript>\n")
        # What the first paint needs comes before the script, which starts while the parser
        # is still reading the (much larger) blobs of replies after it.
        first = sorted({p[0] for parts in [*self.scripts, self.esm, self.css, *self.binary_state.values()]
                        for p in parts})
        rest = sorted(set(range(len(self.store.blobs))) - set(first))
        parts = [head.encode("ascii"), _built(STYLESHEET, "style"), body.encode("ascii"),
                 b'<script type="application/json" id="aw-manifest">',
                 _script_json(manifest), b"</script>\n", *self.store.elements(self.portable, first),
                 b"<script>", _built(BOOT_SCRIPT, "script"), b"</script>\n",
                 *self.store.elements(self.portable, rest), b"</body></html>\n"]
        return b"".join(parts)
