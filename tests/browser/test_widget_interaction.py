"""How the heatmap answers the mouse: the wheel scrolls the page, Ctrl+wheel zooms."""

from __future__ import annotations

import re

import numpy as np
import pytest
from standalone import standalone_html

from attn_widget.trace import AttentionTrace
from attn_widget.widget import AttentionWidget

pytestmark = pytest.mark.browser

DOC = "(() => { const d = Object.values(Bokeh.index).find((v) => v.model.name === 'heatmap').model.document"
RANGE_JS = """(name) => { const r = Object.values(Bokeh.index).find((v) => v.model.name === 'heatmap')
    .model.document.get_model_by_name(name); return [r.start, r.end]; }"""


def trace(t=60, n_layers=2, n_heads=3, seed=0):
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((n_layers, n_heads, t, t)) ** 6)
    a[..., 0] += 0.5
    a /= a.sum(-1, keepdims=True)
    return AttentionTrace.from_dense(a, [f" w{i}" for i in range(t)], prompt_len=t - 4)


@pytest.fixture
def show(page_for, tmp_path):
    def open_widget(widget, width=1300, height=600):
        path = tmp_path / f"w{id(widget)}.html"
        path.write_text(standalone_html(widget), encoding="utf-8")
        page = page_for(width=width, height=height)
        page.goto(path.as_uri())
        page.wait_for_function(
            "window.rendered === true && document.querySelector('.aw-root')?.dataset.paints", timeout=30_000)
        page.wait_for_function("Object.values(Bokeh.index).find((v) => v.model.name === 'heatmap')"
                               "?.model.toolbar_location === 'right'")  # added after the first paint
        page.wait_for_timeout(300)
        return page

    return open_widget


def test_the_wheel_over_the_heatmap_scrolls_the_page_and_ctrl_wheel_zooms(show):
    page = show(AttentionWidget(trace()))
    box = page.locator(".aw-plot-host").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.6)
    before = page.evaluate(RANGE_JS, "x_range")
    page.mouse.wheel(0, 200)
    page.wait_for_timeout(400)
    assert page.evaluate("window.scrollY") > 0, "the wheel over the heatmap did not scroll the page"
    assert page.evaluate(RANGE_JS, "x_range") == before, "the plain wheel zoomed the heatmap"
    box = page.locator(".aw-plot-host").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.6)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -200)
    page.keyboard.up("Control")
    span = f"(({RANGE_JS})('x_range')[1] - ({RANGE_JS})('x_range')[0])"
    page.wait_for_function(f"{span} < {before[1] - before[0]}")


def test_the_readout_names_its_layer_and_head_and_follows_a_head_change(show):
    t = trace()
    page = show(AttentionWidget(t, layer=1, head=0))
    box = page.locator(".aw-plot-host").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.8)
    readout = page.locator(".aw-readout")
    page.wait_for_function("document.querySelector('.aw-readout').innerText.includes('weight')")
    first = readout.inner_text().splitlines()
    assert first[0] == "layer 1, head 0", first
    q, k = (int(x) for x in re.search(r"query (\d+) .* key (\d+)", first[1]).groups())
    page.mouse.move(1, 1)  # away: the readout keeps the last cell
    page.evaluate("window.model.set('head', 2)")
    page.wait_for_function("document.querySelector('.aw-readout').innerText.startsWith('layer 1, head 2')")
    now = readout.inner_text().splitlines()
    assert now[1] == first[1]
    assert now[2] == f"weight {t.head(1, 2)[q, k]:.4f}", now
    page.evaluate("window.model.set('head', -1)")  # MEAN
    page.wait_for_function("document.querySelector('.aw-readout').innerText"
                           ".startsWith('layer 1, mean of heads')")


def test_the_generation_step_is_an_outline_inside_the_frame(show):
    page = show(AttentionWidget(trace()))  # 4 generated tokens: step 0 shown
    box = DOC + """;
        const b = d.get_model_by_name('step_row'); const x = d.get_model_by_name('x_range');
        return [b.visible, b.fill_alpha, b.left, b.right, x.start, x.end]; })()"""
    page.wait_for_function(box + "[0]")
    visible, fill, left, right, start, end = page.evaluate(box)
    assert fill == 0, "the step row is filled: it reads as attention"
    assert start < left < right < end, (left, right, start, end)
    page.evaluate(DOC + """;
        d.get_model_by_name('x_range').setv({ start: 10, end: 30 }); })()""")
    page.wait_for_function(box + "[3] < 30")
    _, _, left, right, start, end = page.evaluate(box)
    assert 10 < left < right < 30, (left, right)


def test_axes_keep_token_text_on_long_prompts_and_a_tick_at_deep_zoom(show):
    page = show(AttentionWidget(trace(t=190, n_layers=1, n_heads=2)))
    ticks = DOC + """; return ['x', 'y'].map((a) => [d.get_model_by_name(a + '_ticker').ticks,
        [...d.get_model_by_name(a + '_axis').major_label_overrides.values()]]); })()"""
    for tick_list, labels in page.evaluate(ticks):
        assert 10 <= len(tick_list) < 190 and all(" w" in label for label in labels), labels[:5]
    page.evaluate(DOC + """; d.get_model_by_name('x_range').setv({ start: 40.6, end: 40.9 });
        d.get_model_by_name('y_range').setv({ start: 120.9, end: 120.6 }); })()""")
    page.wait_for_function(DOC + "; return d.get_model_by_name('x_ticker').ticks.length === 1; })()")
    (xt, xl), (yt, yl) = page.evaluate(ticks)
    assert 40.6 < xt[0] < 40.9 and xl == [" w40"], (xt, xl)
    assert 120.6 < yt[0] < 120.9 and yl == [" w120"], (yt, yl)


def test_the_step_bar_chart_range_follows_its_bars(show):
    t = trace()
    page = show(AttentionWidget(t))  # step 0: query 55's row
    page.wait_for_function("Object.values(Bokeh.index).some((v) => v.model.name === 'bars')")
    bars = """(() => {
        const d = Object.values(Bokeh.index).find((v) => v.model.name === 'bars').model.document;
        const top = Math.max(...d.get_model_by_name('bars_source').data.top);
        return [d.get_model_by_name('bars_y_range').end, top]; })()"""
    page.wait_for_function(bars + "[1] > 0")
    end, top = page.evaluate(bars)
    assert top < end <= top * 1.1 + 1e-9, (end, top)
