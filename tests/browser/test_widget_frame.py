"""What a slider move costs the page: the all-heads grid must not add work to every frame.

Timings are not asserted here (benchmarks/bench_widget.py measures input → changed pixels on a
SmolLM2 trace); these tests check the structure that made each frame slow and that the cheaper
structure still draws the right thumbnails.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from standalone import standalone_html

from attn_widget.trace import AttentionTrace
from attn_widget.widget import AttentionWidget

pytestmark = pytest.mark.browser


def trace(t=30, n_layers=3, n_heads=4, seed=0):
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((n_layers, n_heads, t, t)) ** 6)
    # Head h attends mostly to key h * 7: each thumbnail has its own bright column.
    for h in range(n_heads):
        a[:, h, h * 7:, h * 7] += 3.0
    a /= a.sum(-1, keepdims=True)
    return AttentionTrace.from_dense(a, [f" w{i}" for i in range(t)], prompt_len=t)


@pytest.fixture
def show(page_for, tmp_path):
    def open_widget(widget):
        path = tmp_path / f"w{id(widget)}.html"
        path.write_text(standalone_html(widget), encoding="utf-8")
        page = page_for(width=1300, height=1100)
        page.goto(path.as_uri())
        page.wait_for_function(
            "window.rendered === true && document.querySelector('.aw-root')?.dataset.paints", timeout=30_000)
        page.locator(".aw-grid-cell").first.wait_for()
        return page

    return open_widget


def shot(locator):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


def test_grid_thumbnails_are_tiles_of_one_image_not_a_canvas_per_cell(show):
    # A canvas per thumbnail made Chromium commit 270 canvas layers on every frame of a SmolLM2
    # widget: 15-25 ms added to each slider move.
    page = show(AttentionWidget(trace()))
    assert page.locator(".aw-grid-cell").count() == 12
    assert page.locator(".aw-grid canvas").count() == 0
    assert page.locator(".aw-grid-cell .aw-thumb").count() == 12
    sprites = page.evaluate("[...new Set([...document.querySelectorAll('.aw-thumb')]"
                            ".map((e) => getComputedStyle(e).backgroundImage))].length")
    assert sprites == 1


def test_each_grid_tile_shows_its_own_head(show):
    page = show(AttentionWidget(trace(t=24)))  # 24 × 24 thumbnails: one per 24-px tile pixel
    page.select_option(".aw-grid-metric", "")  # no badges over the tiles
    page.mouse.move(1, 1)
    for layer in range(3):
        columns = []
        for head in range(4):
            img = shot(page.locator(f'.aw-grid-cell[data-layer="{layer}"][data-head="{head}"] .aw-thumb'))
            lum = img.sum(-1)
            lum[lum > 700] = 0  # white: above the diagonal, the page shows through
            bottom = lum[-3:, :-1].mean(0)  # the last rows: every key column is below the diagonal
            columns.append(int(np.argmax(bottom)) / len(bottom))
        # The brightest column moves right with the head (key h * 7 of 24).
        assert columns == sorted(columns) and columns[0] < 0.15 < columns[-1], (layer, columns)


def test_a_slider_move_keeps_the_grid_and_moves_its_mark(show):
    page = show(AttentionWidget(trace()))
    page.evaluate("window.__cell = document.querySelector("
                  "'.aw-grid-cell[data-layer=\"0\"][data-head=\"2\"]')")
    page.evaluate("(() => { const s = document.querySelector('.aw-head'); s.value = 2;"
                  " s.dispatchEvent(new Event('input', { bubbles: true })); })()")
    page.wait_for_function("document.querySelector('.aw-root').dataset.shown.startsWith('head/0/2')")
    assert page.evaluate("window.__cell.isConnected && window.__cell.classList.contains('aw-current')")
    assert page.locator(".aw-grid-cell.aw-current").count() == 1
