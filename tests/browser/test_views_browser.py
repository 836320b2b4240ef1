"""Issue 14's view items in Chromium, on offline snapshots of a tiny random model (file://, every
other request blocked): a head the file left out says so in place (not "loading…" over the old
image) and the page keeps working; the default colour scale is log on a long prompt and says
so; the step bar chart's hover; no light line along the plots in the dark theme; the download
buttons' titled PNGs. Screenshots, light and dark, go to ``SHOTS`` (outside git).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from browser_support import new_page

import attn_widget as aw
from attn_widget.widget import AttentionWidget

SHOTS = Path(os.environ.get("ATTN_WIDGET_SHOTS", "/tmp/attn_widget_view_shots"))
SHORT = " ".join(f"w{(7 * i) % 90 + 3}" for i in range(20))
LONG = " ".join(f"w{(13 * i) % 90 + 3}" for i in range(300))


@pytest.fixture(scope="module")
def model():
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return tf.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def files(model, word_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("views")
    short = aw.capture(model, word_tokenizer, SHORT, max_new_tokens=60, values="norms")
    long = aw.capture(model, word_tokenizer, LONG, max_new_tokens=2)
    # Two heads only: the others are left out of the file (and answered with an error).
    aw.save_snapshot(AttentionWidget(short, layer=1, head=1), folder / "short.html", heads=[(1, 1), (0, 2)])
    # A widget's snapshot keeps its scale (a trace's is written "linear" by the snapshot writer).
    aw.save_snapshot(AttentionWidget(long, layer=0, head=0), folder / "long.html", heads=[(0, 0), (1, 3)])
    aw.save_snapshot(AttentionWidget(long, layer=1, head=3, scale="linear"), folder / "long_linear.html",
                     heads=[(1, 3)])
    return folder


def open_offline(browser, url: str, scheme: str = "light", width: int = 1280, height: int = 900):
    page = new_page(browser, width=width, height=height, color_scheme=scheme)
    page.blocked = []
    page.context.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:")
                       else (page.blocked.append(r.request.url), r.abort()))
    page.goto(url)
    page.wait_for_function("document.documentElement.dataset.snapshotReady === '1'", timeout=60_000)
    page.wait_for_function("Number(document.querySelector('.aw-root')?.dataset.paints || 0) > 0",
                           timeout=60_000)
    page.wait_for_function("!!document.querySelector('.aw-grid-table')", timeout=30_000)
    return page


def set_view(page, layer: int, head: int):
    page.evaluate("([l, h]) => { const m = window.attnWidgetSnapshot.model; m.set('layer', l); "
                  "m.set('head', h); }", [layer, head])


def wait_shown(page, shown: str):
    page.wait_for_function("s => document.querySelector('.aw-root').dataset.shown === s", arg=shown,
                           timeout=30_000)


def shot(page, name: str, locator=None):
    SHOTS.mkdir(parents=True, exist_ok=True)
    (locator or page).screenshot(path=str(SHOTS / f"{name}.png"))


def pixels(page, locator):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


# --------------------------------------------------------------------------- 1: a head left out
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_head_left_out_of_the_file_says_so_in_place_and_the_widget_stays_usable(browser, files, scheme):
    page = open_offline(browser, (files / "short.html").as_uri(), scheme)
    try:
        wait_shown(page, "head/1/1:linear")
        note = page.locator(".aw-missing")
        assert not note.is_visible()
        set_view(page, 0, 3)  # not in the file
        note.wait_for(state="visible", timeout=10_000)
        text = note.inner_text()
        assert "Layer 0, head 3 is not in this file." in text
        assert "layer mean and grid thumbnail are here" in text  # what the file holds
        assert not page.locator(".aw-notice").is_visible()  # said once, in place
        assert "budget_mb" in text and "live widget" in text  # how to get it
        root = page.locator(".aw-root")
        assert "aw-loading" not in root.get_attribute("class")
        assert "loading" not in page.locator(".aw-plot-label").first.inner_text()
        assert root.get_attribute("data-missing") == "head/0/3"
        # The note covers the old heatmap (which is not layer 0, head 3's).
        host, box = page.locator(".aw-plot-host").first.bounding_box(), note.bounding_box()
        assert box["y"] <= host["y"] + 1 and box["y"] + box["height"] >= host["y"] + host["height"] - 1
        assert box["x"] <= host["x"] + 1 and box["x"] + box["width"] >= host["x"] + host["width"] - 1
        shot(page, f"missing_{scheme}")
        # Usable: the button shows the layer mean, the sliders reach heads the file holds.
        note.locator("button").click()
        wait_shown(page, "mean/0:linear")
        assert not note.is_visible()
        set_view(page, 0, 1)
        note.wait_for(state="visible", timeout=10_000)
        page.locator(".aw-head").focus()
        page.keyboard.press("ArrowRight")  # head 2: in the file
        wait_shown(page, "head/0/2:linear")
        assert not note.is_visible()
        assert page.blocked == [] and page.events["page_errors"] == []
    finally:
        page.context.close()


def test_the_snapshot_of_a_widget_holds_the_head_it_shows(model, word_tokenizer, tmp_path):
    trace = aw.capture(model, word_tokenizer, LONG, max_new_tokens=2)
    full = aw.save_snapshot(trace, tmp_path / "full.html")
    budget = full.nbytes * 0.6 / 1e6
    for layer, head in [(1, 2), (0, 3)]:
        widget = AttentionWidget(trace, layer=layer, head=head)
        snap = aw.save_snapshot(widget, tmp_path / "w.html", budget_mb=budget)
        assert snap.left_out, "the budget is meant to leave heads out"
        assert (layer, head) in snap.heads, (layer, head, snap.heads)


# --------------------------------------------------------------------------- 2: default scale
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_default_scale_is_log_on_a_long_prompt_and_the_menu_says_so(browser, files, scheme):
    page = open_offline(browser, (files / "long.html").as_uri(), scheme)
    try:
        wait_shown(page, "head/0/0:log")
        menu = page.locator(".aw-scale")
        assert menu.input_value() == "auto"
        assert page.locator(".aw-scale option[value=auto]").inner_text() == "auto: log"
        assert "log" in page.evaluate("document.querySelector('.aw-scale').title")
        plot = page.locator(".aw-plot-host").first
        page.mouse.move(1, 1)
        auto = pixels(page, plot)
        shot(page, f"long_auto_{scheme}")
        menu.select_option("linear")
        wait_shown(page, "head/0/0:linear")
        assert page.evaluate("window.attnWidgetSnapshot.model.get('scale')") == "linear"
        page.wait_for_timeout(200)
        linear = pixels(page, plot)
        # Weights of ~1/300 are the palette's darkest on linear; on log they reach its middle
        # (viridis's green rises with the value).
        assert auto[..., 1].mean() > linear[..., 1].mean() + 15, (auto[..., 1].mean(), linear[..., 1].mean())
        assert page.locator(".aw-scale option[value=auto]").inner_text() == "auto: log"
    finally:
        page.context.close()


def test_an_explicit_scale_stays_and_a_short_prompt_stays_linear(browser, files):
    page = open_offline(browser, (files / "long_linear.html").as_uri())
    try:
        wait_shown(page, "head/1/3:linear")
        assert page.locator(".aw-scale").input_value() == "linear"
    finally:
        page.context.close()
    page = open_offline(browser, (files / "short.html").as_uri())
    try:
        wait_shown(page, "head/1/1:linear")
        assert page.locator(".aw-scale option[value=auto]").inner_text() == "auto: linear"
    finally:
        page.context.close()


# --------------------------------------------------------------------------- 3: the step bars
BARS_AXIS = """() => { const v = Object.keys(window.Bokeh).find(k => /^\\d/.test(k));
  const axis = window.Bokeh[v].documents.flatMap(d => [...d.all_models]).find(m => m.name === 'bars_x_axis');
  return [...axis.major_label_overrides.entries()].map(([k, t]) => [Number(k), String(t)]); }"""


def hover_bars(page, fx: float):
    """Hover the bar chart's frame at a fraction of its width; the tooltip's text ('' if none)."""
    box = page.locator(".aw-bars-host .bk-Plot").first.bounding_box()
    page.mouse.move(box["x"] + 60 + fx * (box["width"] - 120), box["y"] + box["height"] * 0.45)
    page.wait_for_timeout(150)
    tip = page.locator(".aw-bar-tip")
    return tip.inner_text() if tip.is_visible() else ""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_step_bars_say_token_and_value_on_hover_and_keep_token_labels_past_50(browser, files, scheme):
    page = open_offline(browser, (files / "short.html").as_uri(), scheme, height=1100)
    try:
        wait_shown(page, "head/1/1:linear")
        page.evaluate("window.attnWidgetSnapshot.model.set('step', 59)")  # query 78: 79 keys
        page.wait_for_timeout(300)
        page.locator(".aw-steps").scroll_into_view_if_needed()
        text = hover_bars(page, 0.5)
        assert text.startswith("key "), text
        assert "attention weight 0." in text and "from query 78" in text
        key = int(text.split()[1])
        assert 30 <= key <= 50, key
        assert ("(generated)" in text) == (key >= 20)
        shot(page, f"bars_hover_{scheme}")
        labels = page.evaluate(BARS_AXIS)
        assert 5 <= len(labels) < 79, labels  # thinned, not one per key, not none
        assert all(t.split()[0].isdigit() and len(t.split()) == 2 for _, t in labels), labels  # "40 w3"
        page.locator(".aw-weighting").select_option("norm")
        wait_shown(page, "head/1/1/norm:linear")
        page.wait_for_timeout(300)
        assert "value-weighted α·‖f(x)‖" in hover_bars(page, 0.5)
        page.mouse.move(1, 1)
        page.wait_for_timeout(100)
        assert not page.locator(".aw-bar-tip").is_visible()
    finally:
        page.context.close()


# --------------------------------------------------------------------------- 4: dark theme edges
EDGES = """() => { const out = [];
  const walk = (n) => {
    if (n.tagName === 'CANVAS' && n.width > 50) {
      const c = n.getContext('2d');
      const top = c.getImageData(0, 0, n.width - 40, 1).data;
      const left = c.getImageData(0, 0, 1, n.height - 40).data;
      out.push([Array.from(top), Array.from(left)]);
    }
    if (n.shadowRoot) for (const c of n.shadowRoot.children) walk(c);
    for (const c of n.children) walk(c);
  };
  for (const host of document.querySelectorAll('.aw-plot-host, .aw-bars-host')) walk(host);
  return out; }"""


def test_no_light_line_along_the_plots_in_the_dark_theme(browser, files):
    """The plots' canvas layers, top row and left column, over the page's background: no lighter
    line (the light theme's first paint stayed there, half-covered by every later one)."""
    page = open_offline(browser, (files / "short.html").as_uri(), "dark", height=1100)
    try:
        wait_shown(page, "head/1/1:linear")
        page.wait_for_timeout(500)
        bg = np.array([27, 29, 33])  # the dark theme's background, --aw-bg
        layers = page.evaluate(EDGES)
        assert len(layers) >= 2
        for top, left in layers:
            for line in (top, left):
                rgba = np.array(line, dtype=float).reshape(-1, 4)
                seen = rgba[:, :3] * rgba[:, 3:] / 255 + bg * (1 - rgba[:, 3:] / 255)
                assert np.abs(seen - bg).max() < 10, np.abs(seen - bg).max()
    finally:
        page.context.close()


# --------------------------------------------------------------------------- 5: figure download
def download(page, view: str, scale: int):
    with page.expect_download() as d:
        page.locator(f".aw-save-{view} .aw-save-{scale}x").click()
    from PIL import Image

    path = d.value.path()
    return d.value.suggested_filename, np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_each_view_downloads_a_titled_png_at_1x_and_2x_offline(browser, files, scheme):
    page = open_offline(browser, (files / "short.html").as_uri(), scheme, height=1100)
    try:
        wait_shown(page, "head/1/1:linear")
        page.wait_for_timeout(300)
        bg = np.array([255, 255, 255]) if scheme == "light" else np.array([27, 29, 33])
        plot = page.locator(".aw-plot-host .bk-Plot").first.bounding_box()
        sizes = {}
        for view in ("heatmap", "grid", "bars"):
            for scale in (1, 2):
                name, px = download(page, view, scale)
                assert name == {"heatmap": "attn_LlamaForCausalLM_L1_H1_heatmap.png",
                                "grid": "attn_LlamaForCausalLM_all-heads_grid.png",
                                "bars": "attn_LlamaForCausalLM_L1_H1_bars.png"}[view]
                sizes[view, scale] = px.shape[:2]
                # The title: text (pixels far from the background) in the top 50 px of each scale.
                title = px[: 50 * scale]
                assert (np.abs(title - bg).max(axis=2) > 100).sum() > 200 * scale, (view, scale)
                assert (np.abs(px[0] - bg) < 3).all(), "the image's background is the theme's"
                if view == "heatmap":
                    # The heatmap itself: the palette's dark purple (viridis's low end) is there.
                    purple = (px[..., 0] < 90) & (px[..., 1] < 40) & (px[..., 2] > 70)
                    assert purple.sum() > 5000 * scale * scale, purple.sum()
                    assert px.shape[1] >= plot["width"] * scale - 2
            h1, w1 = sizes[view, 1]
            h2, w2 = sizes[view, 2]
            assert abs(h2 - 2 * h1) <= 2 and abs(w2 - 2 * w1) <= 2, (view, sizes)
        if scheme == "dark":
            shot(page, "downloads_page_dark")
        assert page.blocked == [] and page.events["page_errors"] == []
    finally:
        page.context.close()
