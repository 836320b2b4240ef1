"""The "Weights" menu in Chromium (issue 12): a snapshot of a tiny model captured with value
norms, opened offline from file://, switched to value-weighted and back; the painted heatmap,
the colour bar, the readout and the caveat follow. A trace without norms gets a disabled menu
that says why. Screenshots of both weightings, light and dark, go to ``SHOTS`` (outside git).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from browser_support import new_page

import attn_widget as aw
from attn_widget.widget import AttentionWidget

SHOTS = Path(os.environ.get("ATTN_WIDGET_SHOTS", "/tmp/attn_widget_weighting_shots"))
PROMPT = "w5 w7 w9 w11 w13 w2 w4 w6 w8 w3 w1 w12 w14 w15"


@pytest.fixture(scope="module")
def traces(word_tokenizer):
    from test_capture_fast import fast_model

    model = fast_model("llama")
    return (aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=4, values="norms"),
            aw.capture(model, word_tokenizer, PROMPT, values=False))


@pytest.fixture(scope="module")
def files(traces, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weighting")
    with_norms, plain = traces
    aw.save_snapshot(AttentionWidget(with_norms, layer=1, head=1), folder / "norms.html")
    aw.save_snapshot(plain, folder / "plain.html")
    return folder


def open_offline(browser, url: str, scheme: str = "light"):
    page = new_page(browser, width=1280, height=900, color_scheme=scheme)
    page.context.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
    page.goto(url)
    page.wait_for_function("document.documentElement.dataset.snapshotReady === '1'", timeout=60_000)
    page.wait_for_function("Number(document.querySelector('.aw-root')?.dataset.paints || 0) > 0",
                           timeout=60_000)
    page.wait_for_function("!!document.querySelector('.aw-grid-table')", timeout=30_000)
    return page


def heatmap_pixels(page):
    from PIL import Image

    page.mouse.move(1, 1)
    page.wait_for_timeout(200)
    box = page.locator(".aw-plot-host").first.bounding_box()
    return np.asarray(Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB")).astype(int)


def wait_shown(page, shown: str):
    page.wait_for_function("s => document.querySelector('.aw-root').dataset.shown === s", arg=shown,
                           timeout=30_000)


def choose(page, weighting: str):
    page.locator(".aw-weighting").select_option(weighting)
    suffix = "/norm" if weighting == "norm" else ""
    wait_shown(page, f"head/1/1{suffix}:linear")
    page.wait_for_timeout(300)  # the grid's thumbnails and the bars follow after the heatmap


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_weights_menu_repaints_the_snapshot_value_weighted_and_back(browser, files, traces, scheme):
    trace = traces[0]
    page = open_offline(browser, (files / "norms.html").as_uri(), scheme)
    try:
        SHOTS.mkdir(parents=True, exist_ok=True)
        menu = page.locator(".aw-weighting")
        assert menu.is_enabled()
        wait_shown(page, "head/1/1:linear")
        raw = heatmap_pixels(page)
        page.screenshot(path=str(SHOTS / f"{scheme}-attention.png"), full_page=True)

        choose(page, "norm")
        assert page.evaluate("window.attnWidgetSnapshot.model.get('weighting')") == "norm"
        norm = heatmap_pixels(page)
        changed = (np.abs(norm - raw).max(axis=2) > 8).mean()
        assert changed > 0.02, f"the heatmap barely changed ({changed:.1%} of its pixels)"
        root = page.locator(".aw-root")
        assert "aw-is-norm" in root.get_attribute("class")
        assert page.locator(".aw-norm-caveat").is_visible()
        assert "Kobayashi et al. 2020" in page.locator(".aw-norm-caveat").inner_text()
        assert "value-weighted" in page.locator(".aw-plot-label").first.inner_text()
        assert "value-weighted" in page.locator(".aw-grid-box .aw-section-title").inner_text()
        assert "value-weighted" in page.locator(".aw-bar-note").inner_text()

        box = page.locator(".aw-plot-host").first.bounding_box()
        page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.8 * box["height"])
        tooltip = page.locator(".aw-tooltip:not(.aw-bar-tip)")
        tooltip.wait_for(state="visible", timeout=10_000)
        text = tooltip.inner_text()
        m = re.search(r"query (\d+) .* key (\d+) .*\n\s*value-weighted α·‖f\(x\)‖ ([-\d.e]+)", text, re.S)
        assert m, f"the readout does not name the value-weighted value: {text!r}"
        q, k, shown = int(m.group(1)), int(m.group(2)), float(m.group(3))
        want = trace.head(1, 1, weighting="norm")[q, k]
        assert shown == pytest.approx(want, rel=2e-3, abs=1e-4)
        page.screenshot(path=str(SHOTS / f"{scheme}-value-weighted.png"), full_page=True)

        choose(page, "attention")
        back = heatmap_pixels(page)
        assert (np.abs(back - raw).max(axis=2) > 8).mean() < 0.002, "attention did not come back as it was"
        assert not page.locator(".aw-norm-caveat").is_visible()
        assert not page.events["page_errors"], page.events["page_errors"]
    finally:
        page.context.close()


def test_a_trace_without_value_norms_gets_a_disabled_menu_that_says_why(browser, files):
    page = open_offline(browser, (files / "plain.html").as_uri())
    try:
        menu = page.locator(".aw-weighting")
        assert menu.is_disabled()
        assert "values='norms'" in menu.get_attribute("title")
        assert menu.input_value() == "attention"
    finally:
        page.context.close()
