"""How the heatmap answers the mouse: the wheel scrolls the page, Ctrl+wheel zooms."""

from __future__ import annotations

import numpy as np
import pytest
from standalone import standalone_html

from attn_widget.trace import AttentionTrace
from attn_widget.widget import AttentionWidget

pytestmark = pytest.mark.browser

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
