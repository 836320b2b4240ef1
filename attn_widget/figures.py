"""Bokeh for the widget: the figure skeletons it embeds and the BokehJS that draws them.

Python builds the skeletons (``json_item``) once: a heatmap (image glyph over queries × keys,
colour bar, highlight boxes) and the bar chart of one output token's attention. The front end
embeds them and swaps pixels into their data sources. BokehJS is the installed bokeh's own
``bokeh.min.js``, so the JavaScript and Python versions always match.

Nothing here imports bokeh until a skeleton has to be built: the version and bokeh.min.js are
found without ``import bokeh`` (≈0.3 s), and the skeletons are cached on disk, so the first widget
of a fresh kernel does not pay for importing Bokeh's Python models (1–2 s).
"""

from __future__ import annotations

import json
import math
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .storage import cache_dir, write_atomically


@lru_cache(maxsize=1)
def bokeh_version() -> str:
    from importlib.metadata import version

    return version("bokeh")


def _bokeh_dir() -> Path:
    from importlib.util import find_spec

    spec = find_spec("bokeh")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("bokeh is not installed: pip install bokeh")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def bokeh_source() -> bytes:
    """The installed bokeh's own ``bokeh.min.js`` (so the JS and Python versions match)."""
    return (_bokeh_dir() / "server" / "static" / "js" / "bokeh.min.js").read_bytes()


_BOKEH_PUSHED = threading.Event()


def bokeh_once() -> bytes:
    """BokehJS for the first widget made in this process, nothing for the others."""
    if _BOKEH_PUSHED.is_set():
        return b""
    _BOKEH_PUSHED.set()
    return bokeh_source()


def frame_pixels(compact: bool = False) -> int:
    """Width and height in CSS pixels of the heatmap's frame (the compare view's panels are
    smaller): long traces are pooled to about this many squares a side."""
    return 260 if compact else 540


def display_pixels(compact: bool = False) -> int:
    """Width and height in CSS pixels the heatmap's figure leaves its frame, about: small enough
    that the controls, heatmap, readout and the grid's first row fit a 1280×800 laptop screen in
    JupyterLab with the file browser open. Pooled images keep ``frame_pixels`` squares a side
    (at least one per CSS pixel of the frame; on a 2× screen, about one per device pixel)."""
    return 260 if compact else 384


def figure_items(n_tokens: int, *, compact: bool = False, n_keys: int | None = None) -> dict[str, Any]:
    """Bokeh skeletons (``json_item``) the front end embeds and fills with pixels.

    ``heatmap``: an image_rgba glyph over queries (y, downwards) × keys (x), a colour bar,
    row/column highlight boxes; ``bars``: the chosen output token's attention over earlier
    tokens. Models the front end drives carry names (``heat_source``, ``x_ticker``…).
    Each call returns a fresh copy, sized for ``n_tokens`` queries and ``n_keys`` keys (default:
    as many as queries).
    """
    q = max(int(n_tokens), 1)
    k = q if n_keys is None else max(int(n_keys), 1)
    items = json.loads(_skeleton_json(bool(compact)))
    ranges = {"x_range": (0, k), "y_range": (q, 0), "bars_x_range": (0, k)}
    for model in _named_models(items):
        name = model["attributes"].get("name")
        if name in ranges:
            start, end = ranges[name]
            model["attributes"].update(start=start, end=end, bounds=[min(start, end), max(start, end)])
    return items


def _named_models(node: Any):
    """Every serialised Bokeh model (``{"type": "object", "attributes": {"name": ...}}``) in a
    json_item tree."""
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "object" and isinstance(node.get("attributes"), dict) \
                    and "name" in node["attributes"]:
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


@lru_cache(maxsize=2)
def _skeleton_json(compact: bool) -> str:
    """The skeletons as JSON text, from the disk cache when this bokeh and this file made them.

    Building them imports bokeh.models and bokeh.embed (1–2 s in a fresh kernel); the cache file
    is keyed by the bokeh version and a digest of this module's source, so an upgrade or an edit
    here rebuilds it. An unwritable cache folder only costs the rebuild.
    """
    import hashlib

    digest = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:12]
    kind = "compact" if compact else "full"
    path = cache_dir() / "figures" / f"bokeh-{bokeh_version()}-{digest}-{kind}.json"
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)  # a damaged file is rebuilt
        return text
    except (OSError, ValueError):
        pass
    text = _build_skeleton_json(compact)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda f: f.write(text.encode("utf-8")), "figure cache")
    except OSError:
        pass
    return text


def _build_skeleton_json(compact: bool) -> str:
    # Every embed makes its own Bokeh document, so one skeleton (same model ids) can serve
    # any number of widgets and views. Ranges are sized per trace by figure_items.
    t = 1
    from bokeh.embed import json_item
    from bokeh.models import (
        BoxAnnotation,
        BoxZoomTool,
        ColorBar,
        ColumnDataSource,
        FixedTicker,
        GlyphRenderer,
        ImageRGBA,
        LinearAxis,
        LinearColorMapper,
        LogColorMapper,
        PanTool,
        Plot,
        Range1d,
        ResetTool,
        SaveTool,
        VBar,
        WheelZoomTool,
    )
    from bokeh.palettes import Viridis256

    size = display_pixels(compact)
    heat = Plot(name="heatmap", width=size + 80, height=size + 40, min_border=6,
                x_range=Range1d(0, t, bounds=(0, t), name="x_range"),
                y_range=Range1d(t, 0, bounds=(0, t), name="y_range"),
                # No toolbar for the first paint (its buttons cost ~0.1 s of the embed); the front
                # end adds it on the right once the heatmap is on screen (TOOLBAR in index.js).
                toolbar_location=None, output_backend="canvas")
    source = ColumnDataSource({"image": [np.zeros((1, 1), np.uint32)], "x": [0], "y": [0],
                               "dw": [t], "dh": [t]}, name="heat_source")
    # The image and the highlight boxes live on Bokeh's "overlay" canvas layer: a new image then
    # repaints that layer alone, not the axes, token labels and colour bar under it (the front
    # end clips the image to the frame, as Bokeh does for the lower levels).
    heat.renderers.append(GlyphRenderer(data_source=source, name="heat_image", level="overlay",
                                        glyph=ImageRGBA(image="image", x="x", y="y", dw="dw", dh="dh")))
    for place, name, label in (("above", "x", "key (attended to)"), ("left", "y", "query (attending)")):
        axis = LinearAxis(ticker=FixedTicker(ticks=[], name=f"{name}_ticker"), axis_label=label,
                          name=f"{name}_axis", major_label_text_font_size="10px",
                          axis_label_text_font_size="11px", axis_label_text_font_style="normal")
        if name == "x":
            axis.major_label_orientation = math.pi / 2
        heat.add_layout(axis, place)
    mapper = dict(palette=Viridis256, nan_color=(0, 0, 0, 0))
    linear = LinearColorMapper(low=0, high=1, name="linear_mapper", **mapper)
    log = LogColorMapper(low=1e-4, high=1, name="log_mapper", **mapper)
    heat.add_layout(ColorBar(color_mapper=linear, name="colour_bar", width=10,
                             major_label_text_font_size="10px", title_text_font_size="10px",
                             title_text_font_style="normal", padding=4), "right")
    box = dict(fill_alpha=0.12, line_alpha=0.9, line_width=1, visible=False, level="overlay")
    for name, colour in (("hover_row", "#ffffff"), ("hover_col", "#ffffff"),
                         ("pin_row", "#ff4f9a"), ("pin_col", "#ff4f9a")):
        heat.add_layout(BoxAnnotation(name=name, fill_color=colour, line_color=colour, **box))
    # The generation step: a dashed outline, no fill (an amber fill read as a row of strong
    # attention on viridis); the front end keeps it inside the frame.
    heat.add_layout(BoxAnnotation(name="step_row", fill_alpha=0, line_color="#ffb000", line_width=2,
                                  line_dash="dashed", line_alpha=1, visible=False, level="overlay"))
    # The wheel scrolls the notebook; Ctrl+wheel (or pinch) zooms. A plain-wheel zoom caught
    # every scroll that passed over the heatmap.
    heat.add_tools(PanTool(), WheelZoomTool(modifiers={"ctrl": True}), BoxZoomTool(), ResetTool(), SaveTool())
    heat.toolbar.active_scroll = heat.tools[1]
    heat.tags = [log]  # keeps the log mapper in the document, for the front end to swap in

    bars = Plot(name="bars", width=3 * (size + 80) + 16 if compact else size + 330, height=190,
                min_border=6, x_range=Range1d(0, t, bounds=(0, t), name="bars_x_range"),
                y_range=Range1d(0, 1.02, name="bars_y_range"), toolbar_location=None)
    bar_source = ColumnDataSource({"x": [], "top": [], "color": []}, name="bars_source")
    bars.renderers.append(GlyphRenderer(data_source=bar_source, glyph=VBar(
        x="x", top="top", width=0.8, fill_color="color", line_color=None)))
    bars.add_layout(LinearAxis(ticker=FixedTicker(ticks=[], name="bars_x_ticker"), name="bars_x_axis",
                               major_label_orientation=math.pi / 2, major_label_text_font_size="10px"),
                    "below")
    bars.add_layout(LinearAxis(name="bars_y_axis", axis_label="weight",
                               major_label_text_font_size="10px", axis_label_text_font_size="11px",
                               axis_label_text_font_style="normal"), "left")
    return json.dumps({"heatmap": json_item(heat), "bars": json_item(bars)})
