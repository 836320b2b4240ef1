"""Drawing figures into files without a browser: a :class:`Scene` of boxes, pictures and text,
written as PNG (rendered with Pillow) or as SVG (plain SVG text written here: pictures as
embedded PNG images drawn pixelated, text as ``<text>``). Knows nothing of attention; the
figures themselves are laid out by :mod:`attn_widget.export`."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import lru_cache
from html import escape
from typing import Any

import numpy as np

INK, MUTED, PAPER = "#222222", "#666666", "#ffffff"
FONT_FAMILY = "DejaVu Sans, Verdana, Arial, sans-serif"


@dataclass
class Text:
    x: float
    y: float
    text: str
    size: float
    anchor: str = "start"  # start, middle or end of the text at x (y: the middle of the line)
    colour: str = INK
    bold: bool = False
    vertical: bool = False  # read upwards, starting at (x, y)


@dataclass
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    fill: str | None = None
    outline: str | None = None
    width: float = 1.0


@dataclass
class Picture:
    x0: int
    y0: int
    rgba: np.ndarray  # uint8 (h, w, 4), drawn at cell × cell pixels per value
    cell: int


@dataclass
class Scene:
    width: int
    height: int
    title: list[str]
    items: list[Any] = field(default_factory=list)


@lru_cache(maxsize=8)
def font(size: int, bold: bool = False):
    """DejaVu Sans (widely installed, wide Unicode coverage) at ``size`` pixels, else Pillow's own."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def text_width(text: str, size: float, bold: bool = False) -> float:
    return font(max(1, round(size)), bold).getlength(text)


def wrap(text: str, size: float, width: float, bold: bool = False) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (a word longer than that is cut)."""
    lines, line = [], ""
    for word in text.split(" "):
        trial = f"{line} {word}" if line else word
        if line and text_width(trial, size, bold) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line]


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


# --------------------------------------------------------------------------- writers
def png_bytes(scene: Scene) -> bytes:
    """The scene rendered by Pillow, as PNG bytes (title and software in its text chunks)."""
    from PIL import Image, ImageDraw, PngImagePlugin

    from . import __version__

    image = Image.new("RGBA", (scene.width, scene.height), rgb(PAPER) + (255,))
    draw = ImageDraw.Draw(image)
    for item in scene.items:
        if isinstance(item, Picture):
            h, w = item.rgba.shape[:2]
            tile = Image.fromarray(np.ascontiguousarray(item.rgba))
            if item.cell > 1:
                tile = tile.resize((w * item.cell, h * item.cell), Image.NEAREST)
            image.alpha_composite(tile, (item.x0, item.y0))
        elif isinstance(item, Box):
            box = [round(item.x0), round(item.y0), round(item.x1) - 1, round(item.y1) - 1]
            if box[2] < box[0] or box[3] < box[1]:
                box[2], box[3] = max(box[0], box[2]), max(box[1], box[3])
            draw.rectangle(box, fill=item.fill, outline=item.outline,
                           width=max(1, round(item.width)) if item.outline else 0)
        elif isinstance(item, Text):
            _draw_text(image, draw, item)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("Title", " — ".join(scene.title))
    info.add_text("Software", f"attn_widget {__version__} (Pillow)")
    out = io.BytesIO()
    image.convert("RGB").save(out, "PNG", pnginfo=info, optimize=False, compress_level=6)
    return out.getvalue()


def _draw_text(image, draw, t: Text) -> None:
    from PIL import Image, ImageDraw

    f = font(max(1, round(t.size)), t.bold)
    if not t.vertical:
        anchor = {"start": "lm", "middle": "mm", "end": "rm"}[t.anchor]
        draw.text((t.x, t.y), t.text, font=f, fill=t.colour, anchor=anchor)
        return
    w = math.ceil(f.getlength(t.text)) + 2
    h = math.ceil(t.size * 1.4)
    strip = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    ImageDraw.Draw(strip).text((1, h / 2), t.text, font=f, fill=t.colour, anchor="lm")
    strip = strip.rotate(90, expand=True)  # reads upwards: the text's start at the bottom
    shift = {"start": 0, "middle": w / 2, "end": w}[t.anchor]
    image.alpha_composite(strip, (round(t.x - h / 2), round(t.y - w + shift)))


def svg_bytes(scene: Scene) -> bytes:
    """The scene as SVG text: labels as ``<text>``, cells as embedded PNG images drawn pixelated."""
    import base64

    from PIL import Image

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{scene.width}" height="{scene.height}" '
             f'viewBox="0 0 {scene.width} {scene.height}" font-family="{FONT_FAMILY}">',
             f"<title>{escape(' — '.join(scene.title))}</title>",
             f'<rect width="{scene.width}" height="{scene.height}" fill="{PAPER}"/>']
    for item in scene.items:
        if isinstance(item, Picture):
            h, w = item.rgba.shape[:2]
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(item.rgba)).save(buf, "PNG")
            data = base64.b64encode(buf.getvalue()).decode("ascii")
            parts.append(f'<image x="{item.x0}" y="{item.y0}" width="{w * item.cell}" '
                         f'height="{h * item.cell}" '
                         f'preserveAspectRatio="none" style="image-rendering: pixelated" '
                         f'href="data:image/png;base64,{data}"/>')
        elif isinstance(item, Box):
            fill = item.fill or "none"
            stroke = f' stroke="{item.outline}" stroke-width="{item.width:g}"' if item.outline else ""
            parts.append(f'<rect x="{item.x0:.2f}" y="{item.y0:.2f}" width="{item.x1 - item.x0:.2f}" '
                         f'height="{item.y1 - item.y0:.2f}" fill="{fill}"{stroke}/>')
        elif isinstance(item, Text):
            anchor = f' text-anchor="{item.anchor}"' if item.anchor != "start" else ""
            weight = ' font-weight="bold"' if item.bold else ""
            turn = f' transform="rotate(-90 {item.x:.2f} {item.y:.2f})"' if item.vertical else ""
            # x, y: the start (or middle, end) of the line at its vertical middle
            parts.append(f'<text x="{item.x:.2f}" y="{item.y:.2f}" dy="0.35em" font-size="{item.size:.1f}" '
                         f'fill="{item.colour}"{anchor}{weight}{turn} xml:space="preserve">'
                         f"{escape(item.text, quote=False)}</text>")
    parts.append("</svg>\n")
    return "\n".join(parts).encode("utf-8")
