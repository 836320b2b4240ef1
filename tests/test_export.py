"""Figures from Python (aw.save_figure): PNG through Pillow and SVG as text, no browser; colours,
pooling, labels and errors as a user would check them."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from attn_widget.export import EMPTY, save_figure, save_widget_figure, save_widget_png
from attn_widget.querykeys import QueryKeys
from attn_widget.tokens import TokenTable
from attn_widget.trace import AttentionBlock, AttentionTrace
from attn_widget.widget import MEAN, AttentionWidget

TOKENS = ["The", " cat", " sat", " on", " the", " mat", "\n", " and"]


def viridis() -> np.ndarray:
    """Bokeh's Viridis256 as uint8 (256, 3), read here from the hex strings."""
    from bokeh.palettes import Viridis256

    return np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in Viridis256], np.uint8)


def small_trace(seed=0, t=8, prompt_len=5):
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((2, 3, t, t)) ** 3)
    a /= a.sum(-1, keepdims=True)
    return AttentionTrace.from_dense(a, TOKENS[:t], prompt_len=prompt_len, model_name="tiny-random")


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def cell_centres(fig, n_rows, n_cols):
    x0, y0 = fig.plot[:2]
    ys = y0 + np.arange(n_rows) * fig.cell + fig.cell // 2
    xs = x0 + np.arange(n_cols) * fig.cell + fig.cell // 2
    return np.ix_(ys, xs)


def test_png_has_its_size_and_each_cell_the_widgets_colour_for_its_weight(tmp_path):
    trace = small_trace()
    fig = save_figure(trace, tmp_path / "head.png", layer=1, head=2, pixel_scale=1, size=160)
    px = pixels(fig.path)
    assert px.shape == (fig.height, fig.width, 3) and fig.format == "png" and fig.pool_side == 1
    weights = trace.head(1, 2)
    t = len(TOKENS)
    expected = viridis()[np.clip(np.floor(weights * 256), 0, 255).astype(int)]
    got = px[cell_centres(fig, t, t)]
    below = np.tril(np.ones((t, t), bool))
    np.testing.assert_array_equal(got[below], expected[below])
    empty = [int(EMPTY[i:i + 2], 16) for i in (1, 3, 5)]
    assert (got[~below] == empty).all()  # no attention cell above the causal diagonal


def test_log_scale_maps_from_1e_minus_4_to_1(tmp_path):
    trace = small_trace(seed=3)
    fig = save_figure(trace, tmp_path / "log.png", layer=0, head=1, scale="log", pixel_scale=1)
    w = trace.head(0, 1)
    x = np.log(np.maximum(w, 1e-30) / 1e-4) / np.log(1e4)
    index = np.where(w > 0, np.clip(np.floor(x * 256), 0, 255), 0).astype(int)
    got = pixels(fig.path)[cell_centres(fig, len(TOKENS), len(TOKENS))]
    below = np.tril(np.ones(w.shape, bool))
    np.testing.assert_array_equal(got[below], viridis()[index][below])
    assert "log scale" in fig.title


def test_row_scale_divides_each_query_row_by_its_max(tmp_path):
    trace = small_trace(seed=4)
    fig = save_figure(trace, tmp_path / "row.png", layer=1, head=0, scale="row", pixel_scale=1)
    w = trace.head(1, 0)
    rel = w / w.max(axis=1, keepdims=True)
    got = pixels(fig.path)[cell_centres(fig, len(TOKENS), len(TOKENS))]
    below = np.tril(np.ones(w.shape, bool))
    want = viridis()[np.clip(np.floor(rel * 256), 0, 255).astype(int)]
    np.testing.assert_array_equal(got[below], want[below])
    assert "row scale" in fig.title


def test_the_auto_scale_is_log_from_256_tokens_on_and_the_title_says_which(tmp_path):
    short = save_figure(small_trace(), tmp_path / "short.png", pixel_scale=1)
    long = save_figure(long_trace(300), tmp_path / "long.png", size=100, pixel_scale=1)
    assert "auto: linear scale 0–1" in short.title and "auto: log scale 1e-4–1" in long.title


def test_mean_of_heads_is_drawn_and_titled_as_such(tmp_path):
    trace = small_trace()
    fig = save_figure(trace, tmp_path / "mean.png", layer=1, head="mean", pixel_scale=1)
    got = pixels(fig.path)[cell_centres(fig, len(TOKENS), len(TOKENS))]
    expected = viridis()[np.clip(np.floor(trace.layer_mean(1) * 256), 0, 255).astype(int)]
    below = np.tril(np.ones((len(TOKENS), len(TOKENS)), bool))
    assert (got[below] == expected[below]).all(axis=-1).mean() > 0.95  # float16 mean vs float32 mean
    assert "layer 1 · mean of heads" in fig.title


def test_svg_is_xml_with_the_title_and_token_labels_as_text(tmp_path):
    fig = save_figure(small_trace(), tmp_path / "head.svg", layer=0, head=1, scale="log")
    root = ET.parse(fig.path).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(f"{ns}text")]
    title = root.find(f"{ns}title").text
    assert "tiny-random · layer 0 · head 1" in title and "log scale" in title
    assert "tiny-random · layer 0 · head 1" in texts
    assert "The" in texts and " cat" in texts and "⏎" in texts  # tokens, newline made visible
    assert any("debugging signal" in t for t in texts)
    assert any(t.startswith("prompt: \u201cThe cat sat on the") for t in texts)
    images = list(root.iter(f"{ns}image"))
    assert images and images[0].get("href").startswith("data:image/png;base64,")
    assert (int(root.get("width")), int(root.get("height"))) == (fig.width, fig.height)


def long_trace(t=1500, seed=0):
    rng = np.random.default_rng(seed)
    qk = QueryKeys(rng.standard_normal((2, 4, t, 8), np.float32) * 2,
                   rng.standard_normal((2, 2, t, 8), np.float32) * 2,
                   np.array([0, 0, 1, 1]), np.array([0.35, 0.35]), np.array([0, 0]), causal=True)
    block = AttentionBlock("self", True, (0, 1), (0, 1, 2, 3), qk=qk)
    words = [f" w{i}" for i in range(t)]
    model = {"name": "random-qk", "architecture": "decoder", "n_layers": 2, "n_heads": 4, "n_kv_heads": 2}
    return AttentionTrace(TokenTable(list(range(t)), words, words), {"self": block},
                          {"prompt": (0, t - 10), "generated": (t - 10, t)}, model)


def test_a_long_trace_is_max_pooled_to_the_images_pixels_and_says_so(tmp_path):
    trace = long_trace()
    fig = save_figure(trace, tmp_path / "long.png", layer=1, head=3, size=100, pixel_scale=1, scale="linear")
    side = math.ceil(1500 / 100)
    assert fig.pool_side == side and fig.cell == 1
    assert f"pooled: 1 cell = max of {side} × {side} tokens" in fig.title
    dense = trace.head(1, 3)
    n = math.ceil(1500 / side)
    padded = np.zeros((n * side, n * side), np.float32)
    padded[:1500, :1500] = dense
    pooled = padded.reshape(n, side, n, side).max(axis=(1, 3))
    want = np.clip(np.floor(pooled * 256), 0, 255).astype(int)
    colours = {tuple(c): i for i, c in enumerate(viridis())}
    got_px = pixels(fig.path)[cell_centres(fig, n, n)]
    below = np.tril(np.ones((n, n), bool))
    got = np.array([colours[tuple(c)] for c in got_px[below]])
    assert np.abs(got - want[below]).max() <= 1  # float rounding at a colour's edge
    assert (got == want[below]).mean() > 0.99


def test_grid_has_a_thumbnail_per_head_each_in_its_heads_colours(tmp_path):
    trace = small_trace()
    fig = save_figure(trace, tmp_path / "grid.png", view="grid", size=300, pixel_scale=1)
    px = pixels(fig.path)
    x0, y0, x1, y1 = fig.plot
    t = len(TOKENS)
    gap = (x1 - x0 - 3 * t * fig.cell) // 2
    for layer in range(2):
        for head in range(3):
            left, top = x0 + head * (t * fig.cell + gap), y0 + layer * (t * fig.cell + gap)
            # the last query row of each thumbnail, cell by cell
            row = px[top + (t - 1) * fig.cell + fig.cell // 2,
                     left + np.arange(t) * fig.cell + fig.cell // 2]
            want = viridis()[np.clip(np.floor(trace.head(layer, head)[-1] * 256), 0, 255).astype(int)]
            np.testing.assert_array_equal(row, want)
    assert "all heads, layers 0..1" in fig.title
    one = save_figure(trace, tmp_path / "grid1.png", view="grid", layer=1, size=300, pixel_scale=1)
    assert "all heads of layer 1" in one.title and one.plot[3] - one.plot[1] < y1 - y0


def test_bars_show_the_producing_querys_weights_coloured_prompt_and_generated(tmp_path):
    trace = small_trace()
    fig = save_figure(trace, tmp_path / "bars.png", view="bars", layer=0, head=0, step=2, pixel_scale=1)
    px = pixels(fig.path)
    q = trace.step_position(2)  # generated token 2 at position 7, produced by query 6
    assert q == 6 and "step 2: output \u201c and\u201d (position 7), produced by query 6" in fig.title
    weights = trace.head(0, 0)[q, :q + 1]
    x0, y0, x1, y1 = fig.plot
    slot = (x1 - x0) / (q + 1)
    high = min(1.02, weights.max() * 1.08)
    for k, w in enumerate(weights):
        x = int(x0 + (k + 0.5) * slot)
        column = px[y0 + 2:y1 - 1, x]
        coloured = np.nonzero((column != 255).any(axis=1))[0]
        height = len(column) - coloured[0] if len(coloured) else 0
        assert abs(height - (y1 - y0) * w / high) <= 3
        want = (0x4C, 0x78, 0xA8) if k < 5 else (0xE4, 0x57, 0x56)
        if height > 3:
            assert tuple(px[y1 - 3, x]) == want


def test_an_existing_file_is_replaced_atomically_and_a_folder_refused(tmp_path):
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")
    save_figure(small_trace(), path, pixel_scale=1)
    assert pixels(path).shape[2] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no temporary file left
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(IsADirectoryError, match="cannot write figure"):
        save_figure(small_trace(), tmp_path / "dir.png")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"view": "lines"}, ValueError, "view must be one of 'heatmap', 'grid', 'bars'"),
    ({"scale": "diff"}, ValueError, "scale must be one of 'auto', 'linear', 'log', 'row'"),
    ({"layer": 5}, ValueError, r"layer must be one of the captured layers 0..1; got 5"),
    ({"head": 7}, ValueError, r"head must be one of the captured heads 0..2, or 'mean'"),
    ({"step": 3}, ValueError, r"step must be between 0 and 2 \(the generated tokens\); got 3"),
    ({"weighting": "norm"}, ValueError, "capture with values='norms'"),
    ({"weighting": "value"}, ValueError, "weighting must be 'attention'"),
    ({"size": 0}, ValueError, "size .* must be a finite number above 0"),
])
def test_bad_input_is_one_clear_error_saying_what_is_allowed(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        save_figure(small_trace(), tmp_path / "x.png", **kwargs)
    assert not (tmp_path / "x.png").exists()


def test_the_suffix_chooses_the_format_and_an_unknown_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"path must end in .png \(Pillow image\) or .svg"):
        save_figure(small_trace(), tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="give a path ending in .png"):
        save_figure(small_trace(), tmp_path / "x.svg", format="png")


def test_bars_need_generated_tokens(tmp_path):
    a = np.tril(np.ones((1, 1, 4, 4), np.float32))
    forward = AttentionTrace.from_dense(a / a.sum(-1, keepdims=True), ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="no generated tokens; use view='heatmap'"):
        save_figure(forward, tmp_path / "x.png", view="bars")


def test_a_widget_saves_what_it_shows(tmp_path):
    trace = small_trace()
    w = AttentionWidget(trace, layer=1, head=MEAN, scale="log", push_bokeh=False)
    w.step = 1
    fig = save_widget_png(w, tmp_path / "w.png", pixel_scale=1)
    same = save_figure(trace, tmp_path / "same.png", layer=1, head="mean", scale="log", step=1, pixel_scale=1)
    assert fig.path.read_bytes() == same.path.read_bytes()
    assert "layer 1 · mean of heads" in fig.title and "log scale" in fig.title
    svg = save_widget_figure(w, tmp_path / "w.svg", view="grid")
    assert svg.format == "svg" and "all heads" in svg.title
    with pytest.raises(ValueError, match="give a path ending in .png"):
        save_widget_png(w, tmp_path / "w.svg")
    w.close()


def test_value_weighted_figures_span_zero_to_their_max(tmp_path):
    from attn_widget.geometry import pack_causal
    from attn_widget.valuenorms import ValueNorms

    rng = np.random.default_rng(5)
    t = len(TOKENS)
    a = np.tril(rng.random((1, 2, t, t)) ** 3)
    a /= a.sum(-1, keepdims=True)
    norms = (rng.random((1, 2, t)) * 4).astype(np.float32)
    block = AttentionBlock("self", True, (0,), (0, 1), pack_causal(a), norms=ValueNorms(norms))
    model = {"name": "tiny-norms", "architecture": "decoder", "n_layers": 1, "n_heads": 2, "n_kv_heads": 2}
    trace = AttentionTrace(TokenTable(list(range(t)), TOKENS, TOKENS), {"self": block},
                           {"prompt": (0, 5), "generated": (5, t)}, model)
    fig = save_figure(trace, tmp_path / "norm.png", layer=0, head=1, weighting="norm", pixel_scale=1)
    weighted = trace.head(0, 1, weighting="norm")
    peak = weighted.max()
    assert peak > 1 and f"linear scale 0–{peak:.3g}" in fig.title and "value-weighted" in fig.title
    got = pixels(fig.path)[cell_centres(fig, t, t)]
    below = np.tril(np.ones((t, t), bool))
    want = viridis()[np.clip(np.floor(weighted / peak * 256), 0, 255).astype(int)]
    assert (got[below] == want[below]).all(axis=-1).mean() > 0.95  # float16 storage of the product
