"""Figures of a trace as image files, made without a browser.

:func:`save_figure` draws a heatmap of one head (or the mean of a layer's heads), the all-heads
grid, or the bar chart of one generation step. One layout feeds two writers
(:mod:`attn_widget.drawing`): PNG is rendered with Pillow; SVG is plain SVG text, with the
attention cells as an embedded PNG image (drawn pixelated, one pixel per cell) and every label
as real text. Colours are the widget's: Bokeh's Viridis256 through the same index rule as
``js/src/colour.js`` (the floor of the normalised value times 256, clamped; log scale from 1e-4
to 1). Long traces are max-pooled to the image's pixels, as the widget does, so single strong
weights survive; the title says the resolution.

>>> fig = aw.save_figure(trace, "head.png", layer=3, head=2, scale="log")  # doctest: +SKIP
>>> aw.save_figure(trace, "grid.svg", view="grid", layer=3)  # every head of layer 3  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .drawing import INK, MUTED, PAPER, Box, Picture, Scene, Text, png_bytes, rgb, svg_bytes, text_width, wrap
from .querykeys import ROW_CHUNK
from .selection import MEAN, check_positive, format_ranges, is_int
from .storage import write_atomically
from .tokens import printable, prompt_words
from .valuenorms import check_weighting

VIEWS = ("heatmap", "grid", "bars")
SCALES = ("auto", "linear", "log", "row")
AUTO_LOG_TOKENS = 256
"""From this many keys on, ``scale="auto"`` is log, below it linear (as the widget's ``auto``)."""
FORMATS = {".png": "png", ".svg": "svg"}
LOG_LOW = 1e-4
CAVEAT = ("Attention is a debugging signal, not an explanation: it shows where the model looked, "
          "not why.")
BAR_COLOURS = {"prompt": "#4c78a8", "generated": "#e45756"}  # the widget's (js/src/steps.js)
STEP_OUTLINE = "#ffb000"
EMPTY = "#eeeeee"  # squares with no attention cell (above a causal diagonal)


@dataclass(frozen=True)
class Figure:
    """What :func:`save_figure` wrote; usable as a path.

    path, format : the file and ``"png"`` or ``"svg"``.
    width, height : the image's size in pixels.
    plot : (left, top, right, bottom) in pixels of the cells (heatmap, bars) or of the
        thumbnails (grid).
    cell : pixels a side of one cell (heatmap, grid) or the width of one bar slot (bars).
    pool_side : tokens a side of the square each cell is the max of (1: full resolution).
    title : the title's lines, joined.
    """

    path: Path
    format: str
    width: int
    height: int
    plot: tuple[int, int, int, int]
    cell: int
    pool_side: int
    title: str

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return (f"Figure({str(self.path)!r}, {self.width} × {self.height} px, 1 cell = {self.pool_side} × "
                f"{self.pool_side} tokens)")


# --------------------------------------------------------------------------- colours
@lru_cache(maxsize=1)
def palette() -> np.ndarray:
    """uint8 (256, 3): the widget's colour map, Bokeh's Viridis256."""
    from bokeh.palettes import Viridis256

    return np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in Viridis256], np.uint8)


def palette_index(values: np.ndarray, low: float, high: float, log: bool = False) -> np.ndarray:
    """int (…) palette index of each value, as Bokeh's continuous mappers (and the widget) compute
    it: ``floor(256 · x)`` clamped to 0..255, ``x`` the value normalised over ``low``…``high``
    (logarithmically with ``log``: values ≤ 0 get index 0)."""
    v = np.asarray(values, np.float64)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            x = (np.log(np.where(v > 0, v, low)) - math.log(low)) / (math.log(high) - math.log(low))
        x = np.where(v > 0, x, 0.0)
    else:
        x = (v - low) / (high - low)
    return np.clip(np.floor(np.nan_to_num(x, nan=0.0) * 256), 0, 255).astype(np.intp)


@dataclass(frozen=True)
class ColourScale:
    """How values become colours: ``kind`` (linear, log, row), the range, and words for it."""

    kind: str
    low: float
    high: float
    auto: bool = False  # chosen by scale="auto"

    def rgb(self, values: np.ndarray) -> np.ndarray:
        return palette()[palette_index(values, self.low, self.high, self.kind == "log")]

    def words(self) -> str:
        if self.kind == "row":
            return "row scale (each query row ÷ its own max)"
        words = f"{self.kind} scale {_num(self.low)}–{_num(self.high)}"
        return f"auto: {words}" if self.auto else words


def resolve_scale(scale: str, n_keys: int) -> str:
    """The scale drawn for ``scale``: ``"auto"`` is log from :data:`AUTO_LOG_TOKENS` keys on,
    linear below; any other is itself."""
    return scale if scale != "auto" else ("log" if n_keys >= AUTO_LOG_TOKENS else "linear")


def colour_scale(scale: str, peak: float, weighting: str, n_keys: int) -> ColourScale:
    """The range for ``scale``: attention weights span 0–1 (log: 1e-4–1); value-weighted ones
    (``weighting="norm"``, not bounded by 1) span 0 to the largest value shown (log: 1e-4 of it
    to it), as in the widget."""
    kind = resolve_scale(scale, n_keys)
    high = 1.0 if weighting == "attention" or kind == "row" else (peak if peak > 0 else 1.0)
    return ColourScale(kind, high * LOG_LOW if kind == "log" else 0.0, high, scale == "auto")


def _num(x: float) -> str:
    """A range end or tick: 3 significant digits, ``1e-4`` style below 0.001."""
    if x >= 1e-3 or x == 0:
        return f"{x:.3g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def token_label(text: str, limit: int = 12) -> str:
    """One-line axis label: newlines ⏎, tabs ⇥, control characters as ``\\xNN``, cut to
    ``limit`` characters with an ellipsis (as the widget's ``shortLabel``)."""
    s = printable(text.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎").replace("\t", "⇥"))
    return s if len(s) <= limit else s[:limit - 1] + "…"


def axis_labels(n: int, texts: Sequence[str], pixels: float, room_per_label: float) -> list[tuple[int, str]]:
    """(token, label) pairs for an axis of ``n`` tokens over ``pixels``: every token's text when
    each gets ``room_per_label`` pixels, else every ``step``-th token (a round step) as
    ``"position text"`` (the widget's ``axisTicks`` rule)."""
    room = max(1, int(pixels // room_per_label))
    if n <= room:
        return [(i, token_label(texts[i])) for i in range(n)]
    step = _nice_step(n / room)
    return [(i, f"{i} {token_label(texts[i], 8)}") for i in range(0, n, step)]


def _nice_step(x: float) -> int:
    return max(1, round(_nice(max(x, 1))))


def _nice(x: float) -> float:
    """The smallest of 1, 2, 5 × a power of ten that is at least ``x`` (> 0)."""
    p = 10.0 ** math.floor(math.log10(x))
    return next(m * p for m in (1, 2, 5, 10) if m * p >= x * (1 - 1e-9))


def prompt_excerpt(trace, n: int = 90) -> str:
    """The start of the prompt's words (:func:`tokens.prompt_words`), on one line."""
    text = printable(" ".join(prompt_words(trace).split()))
    return text if len(text) <= n else text[:n - 1] + "…"


# --------------------------------------------------------------------------- checking input
def _choice(value: Any, allowed: Sequence[str], what: str, hint: str = "") -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, allowed))}{hint}; got {value!r}")
    return value


def _format_of(path: Any, format: str | None) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path ending in .png or .svg; got {type(path).__name__}")
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"path must end in .png (Pillow image) or .svg (vector, text labels); got "
                         f"{str(path)!r}")
    if format is not None and FORMATS[suffix] != format:
        raise ValueError(f"this writes {format.upper()}: give a path ending in .{format}; got {str(path)!r}")
    return FORMATS[suffix]


def _layer_position(block, layer: Any) -> int:
    if not is_int(layer) or int(layer) not in block.layers:
        raise ValueError(f"layer must be one of the captured layers {format_ranges(block.layers)}; got "
                         f"{layer!r}")
    return block.layers.index(int(layer))


def _head_position(block, head: Any) -> int | None:
    """Position of ``head`` among the block's heads; None for the mean of heads."""
    if head == "mean" or (is_int(head) and int(head) == MEAN):
        return None
    if not is_int(head) or int(head) not in block.heads:
        raise ValueError(f"head must be one of the captured heads {format_ranges(block.heads)}, or "
                         f"'mean' ({MEAN}) for the mean of heads; got {head!r}")
    return block.heads.index(int(head))


# --------------------------------------------------------------------------- values
def pooled(block, li: int, hi: int | None, side: int, weighting: str, relative: bool) -> np.ndarray:
    """float32 (ceil(n_queries / side), ceil(n_keys / side)): max over ``side`` × ``side``
    squares of head ``hi`` (None: the layer's mean of heads) of layer position ``li``; with
    ``relative``, each query row is first divided by its own max (the row scale)."""
    if not relative:
        return np.asarray(block.pooled(li, hi, side, weighting))
    nq, nk = block.n_queries, block.n_keys
    out = np.zeros((math.ceil(nq / side), math.ceil(nk / side)), np.float32)
    step = side * max(1, ROW_CHUNK // side)
    for s in range(0, nq, step):
        rows = block.head_rows(li, hi, s, min(s + step, nq), weighting)
        peak = rows.max(axis=1, keepdims=True)
        rows = np.divide(rows, peak, out=np.zeros_like(rows), where=peak > 0)
        cols = np.maximum.reduceat(rows, np.arange(0, nk, side), axis=1)
        out[s // side:s // side + math.ceil(len(rows) / side)] = np.maximum.reduceat(
            cols, np.arange(0, len(rows), side), axis=0)
    return out


def _cells_rgba(values: np.ndarray, colours: ColourScale, causal: bool) -> np.ndarray:
    """uint8 (r, c, 4) colours of pooled values; squares with no attention cell (above a
    causal diagonal) in the empty colour."""
    rgba = np.empty(values.shape + (4,), np.uint8)
    rgba[..., :3] = colours.rgb(values)
    rgba[..., 3] = 255
    if causal:
        r, c = np.indices(values.shape)
        rgba[c > r, :3] = rgb(EMPTY)
    return rgba


# --------------------------------------------------------------------------- public API
def save_figure(trace, path: str | os.PathLike, *, layer: int | None = None, head: int | str | None = None,
                view: str = "heatmap", step: int | None = None, scale: str = "auto",
                weighting: str = "attention", block: str | None = None, size: int = 480,
                pixel_scale: float = 2.0, format: str | None = None) -> Figure:
    """Write a figure of ``trace`` to ``path``: PNG (rendered with Pillow) or SVG (plain SVG text,
    cells as an embedded PNG, labels as text), chosen by the suffix; no browser is involved.

    The image is titled with the model, the layer and head (or "mean of heads"), the colour
    scale, the weighting, the resolution and the prompt's start; axes are labelled with tokens
    (thinned to stay readable); a colour bar gives the range; a footer says that attention is a
    debugging signal. An existing file is replaced atomically.

    Parameters
    ----------
    trace : AttentionTrace
    path : file to write, ending in ``.png`` or ``.svg``.
    layer, head : model layer and head (default: the first captured; ``head="mean"`` or ``-1``:
        the mean of the layer's heads). ``view="grid"``: ``layer`` picks one layer's heads
        (default: every layer), ``head`` is not used.
    view : ``"heatmap"`` (queries × keys), ``"grid"`` (a thumbnail per head), ``"bars"`` (the
        query row that produced generated token ``step``, over the keys).
    step : generation step (0-based): the bars' step (default 0), outlined on the heatmap.
    scale : ``"auto"`` (log from 256 keys on, else linear; the title says which), ``"linear"``
        (0–1), ``"log"`` (1e-4–1) or ``"row"`` (each query row ÷ its max); value-weighted
        figures span 0 to their max (log: 1e-4 of it to it).
    weighting : ``"attention"`` or ``"norm"`` (``α_ij ‖f_h(x_j)‖``; needs value norms).
    block : attention block (``"encoder"``, ``"decoder"``, ``"cross"``; default the trace's).
    size : layout pixels of the heatmap's longer side (grid: of all thumbnails across; bars:
        the chart's width). Longer traces are max-pooled to fit (the title says so).
    pixel_scale : image pixels per layout pixel (2: sharp on a 2× screen).
    format : ``"png"`` or ``"svg"`` to insist on one (the suffix must then agree).

    Returns
    -------
    Figure : the path, the image's size, where the cells are and the pooling.

    Raises
    ------
    ValueError : an unknown view, scale, weighting or suffix; a layer, head or step that was not
        captured; each message says what is allowed.
    OSError : when ``path`` cannot be written.
    """
    fmt = _format_of(path, format)
    view = _choice(view, VIEWS, "view", " (one head, every head's thumbnail, one step's bars)")
    scale = _choice(scale, SCALES, "scale")
    b = trace.check_weighting(check_weighting(weighting), block)
    size = max(16, int(check_positive(size, "size (layout pixels)", example="480")))
    u = check_positive(pixel_scale, "pixel_scale (image pixels per layout pixel)", example="2")
    if step is not None:
        step = _check_step(trace, step)
    if view == "grid":
        li = None if layer is None else _layer_position(b, layer)
        scene, plot, cell, side = _grid_scene(trace, b, li, scale, weighting, size, u)
    else:
        li = _layer_position(b, b.layers[0] if layer is None else layer)
        hi = _head_position(b, b.heads[0] if head is None else head)
        if view == "heatmap":
            scene, plot, cell, side = _heatmap_scene(trace, b, li, hi, step, scale, weighting, size, u)
        else:
            if trace.n_generated == 0:
                raise ValueError("view='bars' shows the attention of a generation step, and this trace "
                                 "has no generated tokens; use view='heatmap'")
            scene, plot, cell, side = _bars_scene(trace, b, li, hi, 0 if step is None else step,
                                                  weighting, size, u)
    data = png_bytes(scene) if fmt == "png" else svg_bytes(scene)
    path = write_atomically(path, lambda f: f.write(data), "figure")
    return Figure(Path(path), fmt, scene.width, scene.height, plot, cell, side, " — ".join(scene.title))


def save_widget_figure(widget, path: str | os.PathLike, **kwargs: Any) -> Figure:
    """:func:`save_figure` of what ``widget`` shows: its trace (A in a compare view), block,
    layer, head (or mean of heads), step, colour scale and weighting; ``kwargs`` override them
    (``view="grid"``, ``size=…``, ``format="png"``)."""
    state = {"layer": getattr(widget, "layer", None), "head": getattr(widget, "head", None),
             "scale": getattr(widget, "scale", "auto"),
             "weighting": getattr(widget, "weighting", "attention"),  # a newer trait: may be absent
             "block": getattr(widget, "block", None) or None}
    step = getattr(widget, "step", -1)
    state["step"] = step if is_int(step) and step >= 0 else None
    if state["scale"] not in SCALES:  # a scale the figure does not draw (the compare view's diff)
        state["scale"] = "auto"
    state.update(kwargs)
    return save_figure(widget.trace, path, **state)


def save_widget_png(widget, path: str | os.PathLike, **kwargs: Any) -> Figure:
    """:func:`save_widget_figure` as PNG (``path`` must end in ``.png``)."""
    return save_widget_figure(widget, path, format="png", **kwargs)


def save_widget_svg(widget, path: str | os.PathLike, **kwargs: Any) -> Figure:
    """:func:`save_widget_figure` as SVG (``path`` must end in ``.svg``)."""
    return save_widget_figure(widget, path, format="svg", **kwargs)


def _check_step(trace, step: Any) -> int:
    n = trace.n_generated
    if not is_int(step) or not 0 <= int(step) < n:
        allowed = (f"between 0 and {n - 1} (the generated tokens)" if n
                   else "None: this trace has no generated tokens")
        raise ValueError(f"step must be {allowed}; got {step!r}")
    return int(step)


# --------------------------------------------------------------------------- layouts
def _title_lines(trace, b, what: str, colours: ColourScale | None, weighting: str, side: int,
                 extra: str = "") -> list[str]:
    block = f" · {b.name} block" if len(trace.blocks) > 1 else ""
    weigh = ("attention weights α" if weighting == "attention"
             else "value-weighted α·‖f(x)‖ (Kobayashi et al. 2020)")
    res = "full resolution" if side == 1 else f"pooled: 1 cell = max of {side} × {side} tokens"
    scale = f"{colours.words()} · " if colours is not None else ""
    gen = f", {trace.n_generated} generated" if trace.n_generated else ""
    return [f"{trace.model_name} · {what}{block}",
            f"{scale}{weigh} · {b.n_queries} tokens{gen} · {res}{extra}",
            f"prompt: \u201c{prompt_excerpt(trace)}\u201d"]


def _frame(scene_width: float, title: list[str], u: float) -> tuple[list[Text], float, float]:
    """Title texts at the top of a figure ``scene_width`` wide; returns (texts, top of the body,
    the margin)."""
    m, texts, y = 14 * u, [], 14 * u
    for i, line in enumerate(title):
        size = (15 if i == 0 else 12) * u
        for part in wrap(line, size, scene_width - 2 * m, bold=i == 0):
            texts.append(Text(m, y + size * 0.6, part, size, bold=i == 0, colour=INK if i == 0 else MUTED))
            y += size * 1.35
    return texts, y + 6 * u, m


def _footer(scene: Scene, y: float, m: float, u: float) -> None:
    size = 11 * u
    for part in wrap(CAVEAT, size, scene.width - 2 * m):
        scene.items.append(Text(m, y + size * 0.6, part, size, colour=MUTED))
        y += size * 1.35
    scene.height = math.ceil(y + m)


def _cell_size(n: int, pixels: float) -> tuple[int, int, int]:
    """(pool side, cells, image pixels per cell) to fit ``n`` tokens in about ``pixels``."""
    side = max(1, math.ceil(n / max(1.0, pixels)))
    cells = math.ceil(n / side)
    return side, cells, max(1, int(pixels // cells))


def _colour_bar(scene: Scene, x: float, y0: float, y1: float, colours: ColourScale, u: float) -> None:
    width, h = 14 * u, y1 - y0
    rows = max(1, int(h))
    fraction = (np.arange(rows)[::-1] + 0.5) / rows  # top = high
    if colours.kind == "log":
        values = colours.low * (colours.high / colours.low) ** fraction
    else:
        values = colours.low + fraction * (colours.high - colours.low)
    rgba = np.concatenate([colours.rgb(values)[:, None, :], np.full((rows, 1, 1), 255, np.uint8)], axis=2)
    scene.items.append(Picture(int(x), int(y0), np.repeat(rgba, max(1, int(width)), axis=1), 1))
    scene.items.append(_frame_around(int(x), int(y0), int(x) + max(1, int(width)), int(y0) + rows, u))
    if colours.kind == "log":
        ticks = [colours.low * 10 ** k for k in range(round(math.log10(colours.high / colours.low)) + 1)]
        where = [math.log(t / colours.low) / math.log(colours.high / colours.low) for t in ticks]
    else:
        ticks = [colours.low + f * (colours.high - colours.low) for f in (0, 0.25, 0.5, 0.75, 1)]
        where = [0, 0.25, 0.5, 0.75, 1]
    for t, f in zip(ticks, where):
        ty = y0 + (1 - f) * rows
        scene.items.append(Box(x + width, ty - u / 2, x + width + 4 * u, ty + u / 2, fill=INK))
        scene.items.append(Text(x + width + 6 * u, ty, _num(float(f"{t:.3g}")), 10 * u))


def _frame_around(x0: float, y0: float, x1: float, y1: float, u: float) -> Box:
    """A thin frame just outside a box, so that it never covers the cells at its edges."""
    w = max(1, round(u))
    return Box(x0 - w, y0 - w, x1 + w, y1 + w, outline=MUTED, width=w)


def _heatmap_scene(trace, b, li: int, hi: int | None, step: int | None, scale: str, weighting: str,
                   size: int, u: float) -> tuple[Scene, tuple[int, int, int, int], int, int]:
    nq, nk = b.n_queries, b.n_keys
    side, _, _ = _cell_size(max(nq, nk), size * u)
    values = pooled(b, li, hi, side, weighting, scale == "row")
    colours = colour_scale(scale, float(values.max(initial=0.0)), weighting, nk)
    rows, cols = values.shape
    cell = max(1, int(size * u // max(rows, cols)))
    pw, ph = cols * cell, rows * cell
    label_size, room = 10 * u, 12 * u
    queries, keys = trace.sequence(b.queries), trace.sequence(b.keys)
    xl = axis_labels(nk, keys.display, pw, room)
    yl = axis_labels(nq, queries.display, ph, room)
    xl_h = max((text_width(t, label_size) for _, t in xl), default=0) + 8 * u
    yl_w = max((text_width(t, label_size) for _, t in yl), default=0) + 8 * u
    what = f"layer {b.layers[li]} · " + ("mean of heads" if hi is None else f"head {b.heads[hi]}")
    title = _title_lines(trace, b, what, colours, weighting, side)
    m = 14 * u
    left = m + 16 * u + yl_w
    width = math.ceil(max(left + pw + 90 * u + m, 560 * u))
    texts, top, m = _frame(width, title, u)
    scene = Scene(width, 0, title, list(texts))
    axis_y = top + 8 * u
    scene.items.append(Text(left + pw / 2, axis_y, "key (attended to)", 11 * u, anchor="middle",
                            colour=MUTED))
    y0 = math.ceil(axis_y + 8 * u + xl_h)
    x0 = math.ceil(left)
    scene.items.append(Picture(x0, y0, _cells_rgba(values, colours, b.causal), cell))
    scene.items.append(_frame_around(x0, y0, x0 + pw, y0 + ph, u))
    per_token = cell / side
    for i, text in xl:
        x = x0 + (i + 0.5) * per_token
        scene.items.append(Box(x - u / 2, y0 - 4 * u, x + u / 2, y0, fill=INK))
        scene.items.append(Text(x, y0 - 6 * u, text, label_size, vertical=True))
    for i, text in yl:
        y = y0 + (i + 0.5) * per_token
        scene.items.append(Box(x0 - 4 * u, y - u / 2, x0, y + u / 2, fill=INK))
        scene.items.append(Text(x0 - 6 * u, y, text, label_size, anchor="end"))
    scene.items.append(Text(m + 6 * u, y0 + ph / 2, "query (attending)", 11 * u, anchor="middle",
                            colour=MUTED, vertical=True))
    if step is not None and b.queries == "tokens":
        q = trace.step_position(step)
        if q >= 0:
            ry = y0 + (q // side) * cell
            scene.items.append(Box(x0, ry, x0 + pw, ry + cell, outline=STEP_OUTLINE, width=2 * u))
    bar_h = max(ph, 160 * u)  # a short matrix (few queries) still gets a readable bar
    _colour_bar(scene, x0 + pw + 18 * u, y0, y0 + bar_h, colours, u)
    _footer(scene, y0 + bar_h + 14 * u, m, u)
    return scene, (x0, y0, x0 + pw, y0 + ph), cell, side


def _grid_scene(trace, b, li: int | None, scale: str, weighting: str, size: int,
                u: float) -> tuple[Scene, tuple[int, int, int, int], int, int]:
    layers = range(len(b.layers)) if li is None else [li]
    n_heads = len(b.heads)
    gap = max(1, round(3 * u))
    thumb = max(8 * u, min(96 * u, (size * u - gap * n_heads) / n_heads))
    side, _, _ = _cell_size(max(b.n_queries, b.n_keys), thumb)
    thumbs = [[pooled(b, i, h, side, weighting, scale == "row") for h in range(n_heads)] for i in layers]
    peak = max(float(t.max(initial=0.0)) for row in thumbs for t in row)
    colours = colour_scale(scale, peak, weighting, b.n_keys)
    rows, cols = thumbs[0][0].shape
    cell = max(1, int(thumb // max(rows, cols)))
    tw, th = cols * cell, rows * cell
    grid_w, grid_h = n_heads * (tw + gap) - gap, len(layers) * (th + gap) - gap
    canvas = np.empty((grid_h, grid_w, 4), np.uint8)
    canvas[...] = (*rgb(PAPER), 255)
    for r, row in enumerate(thumbs):
        for c, values in enumerate(row):
            tile = np.repeat(np.repeat(_cells_rgba(values, colours, b.causal), cell, 0), cell, 1)
            canvas[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = tile
    what = (f"all heads of layer {b.layers[li]}" if li is not None
            else f"all heads, layers {format_ranges(b.layers)}")
    title = _title_lines(trace, b, what, colours, weighting, side)
    label_size = 10 * u
    left = 14 * u + text_width(f"L{b.layers[-1]}", label_size) + 8 * u
    width = math.ceil(max(left + grid_w + 90 * u + 14 * u, 560 * u))
    texts, top, m = _frame(width, title, u)
    scene = Scene(width, 0, title, list(texts))
    x0, y0 = math.ceil(left), math.ceil(top + 16 * u)
    for c, h in enumerate(b.heads):
        scene.items.append(Text(x0 + c * (tw + gap) + tw / 2, y0 - 8 * u, f"H{h}", label_size,
                                anchor="middle"))
    for r, i in enumerate(layers):
        scene.items.append(Text(x0 - 6 * u, y0 + r * (th + gap) + th / 2, f"L{b.layers[i]}", label_size,
                                anchor="end"))
    scene.items.append(Picture(x0, y0, canvas, 1))
    bar_h = min(max(grid_h, 140 * u), 320 * u)
    _colour_bar(scene, x0 + grid_w + 18 * u, y0, y0 + bar_h, colours, u)
    _footer(scene, y0 + max(grid_h, bar_h) + 14 * u, m, u)
    return scene, (x0, y0, x0 + grid_w, y0 + grid_h), cell, side


def _bars_scene(trace, b, li: int, hi: int | None, step: int, weighting: str, size: int,
                u: float) -> tuple[Scene, tuple[int, int, int, int], int, int]:
    q = trace.step_position(step)
    if q < 0:
        raise ValueError(f"generated token {step} is at position 0 and no query produced it; choose a "
                         f"step between 1 and {trace.n_generated - 1}")
    if b.queries != "tokens":
        raise ValueError(f"view='bars' needs a block whose queries are the generated tokens; block "
                         f"{b.name!r} runs over the source")
    row = b.head_rows(li, hi, q, q + 1, weighting)[0]
    n = len(row) if not b.causal else q + 1
    pw = math.ceil(max(size, 360) * u)
    bucket = max(1, math.ceil(n / (pw / (2 * u))))
    slots = math.ceil(n / bucket)
    slot = pw / slots
    tops = np.maximum.reduceat(row[:n], np.arange(0, n, bucket)) if n else np.zeros(0)
    at = np.array([k + int(np.argmax(row[k:min(n, k + bucket)])) for k in range(0, n, bucket)], np.intp)
    high = float(tops.max(initial=0.0)) * 1.08 or 1.02
    if weighting == "attention":
        high = min(1.02, high)
    ph = math.ceil(220 * u)
    label_size = 10 * u
    keys = trace.sequence(b.keys)
    xl = axis_labels(n, keys.display, pw, 12 * u)
    xl_h = max((text_width(t, label_size) for _, t in xl), default=0) + 8 * u
    out = trace.spans["generated"][0] + step
    what = (f"step {step}: output \u201c{token_label(trace.tokens.display[out], 20)}\u201d (position {out}), "
            f"produced by query {q} · layer {b.layers[li]} · "
            + ("mean of heads" if hi is None else f"head {b.heads[hi]}"))
    extra = "" if bucket == 1 else f" · 1 bar = max of {bucket} keys"
    title = _title_lines(trace, b, what, None, weighting, 1, extra)
    left = 14 * u + 16 * u + text_width("0.000", label_size) + 10 * u
    width = math.ceil(max(left + pw + 14 * u + 140 * u, 560 * u))
    texts, top, m = _frame(width, title, u)
    scene = Scene(width, 0, title, list(texts))
    x0, y0 = math.ceil(left), math.ceil(top + 8 * u)
    scene.items.append(_frame_around(x0, y0, x0 + pw, y0 + ph, u))
    tick = _nice(high / 4)
    for value in np.arange(0, high * (1 + 1e-9), tick):
        ty = y0 + ph * (1 - value / high)
        scene.items.append(Box(x0 - 4 * u, ty - u / 2, x0, ty + u / 2, fill=INK))
        scene.items.append(Text(x0 - 6 * u, ty, f"{value:.3g}", label_size, anchor="end"))
    scene.items.append(Text(m + 6 * u, y0 + ph / 2, "weight", 11 * u, anchor="middle", colour=MUTED,
                            vertical=True))
    prompt_end = trace.spans["generated"][0]
    for s, (value, k) in enumerate(zip(tops.tolist(), at.tolist())):
        colour = BAR_COLOURS["generated" if k >= prompt_end and b.keys == "tokens" else "prompt"]
        bx = x0 + s * slot
        scene.items.append(Box(bx + slot * 0.1, y0 + ph * (1 - value / high), bx + slot * 0.9, y0 + ph,
                               fill=colour))
    for i, text in xl:
        x = x0 + (i // bucket + 0.5) * slot
        scene.items.append(Box(x - u / 2, y0 + ph, x + u / 2, y0 + ph + 4 * u, fill=INK))
        scene.items.append(Text(x, y0 + ph + 6 * u, text, label_size, anchor="end", vertical=True))
    legend_x = x0 + pw + 14 * u
    for j, (name, colour) in enumerate(BAR_COLOURS.items()):
        ly = y0 + 8 * u + j * 18 * u
        scene.items.append(Box(legend_x, ly - 5 * u, legend_x + 10 * u, ly + 5 * u, fill=colour))
        scene.items.append(Text(legend_x + 14 * u, ly, f"{name} token", label_size))
    _footer(scene, y0 + ph + 8 * u + xl_h + 10 * u, m, u)
    return scene, (x0, y0, x0 + pw, y0 + ph), max(1, int(slot)), bucket

