"""The widget's front end in Chromium without Jupyter (a stand-in host, see standalone.py):
views and controls that need no kernel, checked fast on synthetic traces."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from playwright.sync_api import expect
from standalone import standalone_html

from attn_widget.trace import AttentionTrace
from attn_widget.widget import AttentionWidget, compare_widget

pytestmark = pytest.mark.browser


def trace(t=30, n_layers=3, n_heads=4, prompt_len=24, seed=0, tokens=None):
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((n_layers, n_heads, t, t)) ** 6)
    a[..., 0] += 0.5
    a /= a.sum(-1, keepdims=True)
    return AttentionTrace.from_dense(a, tokens or [f" w{i}" for i in range(t)], prompt_len=prompt_len)


@pytest.fixture
def show(page_for, tmp_path):
    def open_widget(widget, **kwargs):
        path = tmp_path / f"w{id(widget)}.html"
        path.write_text(standalone_html(widget, **kwargs), encoding="utf-8")
        page = page_for(width=1300, height=1100)
        page.goto(path.as_uri())
        page.wait_for_function(
            "window.rendered === true && document.querySelector('.aw-root')?.dataset.paints", timeout=30_000)
        return page

    return open_widget


def image(locator):
    from PIL import Image

    locator.page.mouse.move(1, 1)
    locator.page.wait_for_timeout(100)
    return Image.open(io.BytesIO(locator.screenshot())).convert("RGB")


def differ(a, b) -> bool:
    from PIL import ImageChops

    return ImageChops.difference(a, b).getbbox() is not None


def shown(page) -> str:
    return page.evaluate("document.querySelector('.aw-root').dataset.shown")


def test_log_and_row_scales_repaint_and_label_the_colour_bar(show):
    page = show(AttentionWidget(trace()))
    host = page.locator(".aw-plot-host")
    linear = image(host)
    page.select_option(".aw-scale", "log")
    page.wait_for_function("document.querySelector('.aw-root').dataset.shown.endsWith(':log')")
    log = image(host)
    page.select_option(".aw-scale", "row")
    page.wait_for_function("document.querySelector('.aw-root').dataset.shown.endsWith(':row')")
    assert differ(linear, log) and differ(log, image(host))
    assert page.evaluate("window.model.get('scale')") == "row"


def test_the_mean_of_heads_shows_its_caveat(show):
    page = show(AttentionWidget(trace()))
    caveat = page.locator(".aw-mean-caveat")
    expect(caveat).to_be_hidden()
    page.check(".aw-mean")
    expect(caveat).to_be_visible()
    expect(caveat).to_contain_text("Averaging over heads hides per-head behaviour")
    assert shown(page) == "mean/0:linear"


def test_compare_shows_a_b_and_their_difference_with_all_three_values_on_hover(show):
    a = trace(seed=1)
    b = trace(seed=2)
    page = show(compare_widget(a, b, layer=1, head=2))
    labels = page.locator(".aw-plot-label").all_inner_texts()
    assert labels == ["A · layer 1, head 2", "B · layer 1, head 2", "|A − B| · layer 1, head 2"]
    diff_host = page.locator(".aw-plot-host").nth(2)
    box = diff_host.bounding_box()
    page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.8 * box["height"])
    text = page.locator(".aw-tooltip:not(.aw-bar-tip)").inner_text()
    number = r"(\d+(?:\.\d+)?(?:e[-+]\d+)?)"  # 0.0123, or 8.34e-7 below 1e-3
    m = re.search(rf"query (\d+) .* key (\d+) .*\nA {number} · B {number} · \|Δ\| {number}", text, re.S)
    assert m, repr(text)
    q, k = int(m.group(1)), int(m.group(2))
    va, vb = a.head(1, 2)[q, k], b.head(1, 2)[q, k]
    assert float(m.group(3)) == pytest.approx(va, abs=6e-4)
    assert float(m.group(4)) == pytest.approx(vb, abs=6e-4)
    assert float(m.group(5)) == pytest.approx(abs(va - vb), abs=6e-4)


def test_a_lazy_widget_fetches_the_head_it_needs_and_prefetches_neighbours(show):
    page = show(AttentionWidget(trace(), layer=1, head=1, send_all_below=0))
    page.locator(".aw-head").press("ArrowRight")
    page.wait_for_function("document.querySelector('.aw-root').dataset.shown === 'head/1/2:linear'")
    expect(page.locator(".aw-grid-cell")).to_have_count(12)
    sent = page.evaluate("window.sent.filter((m) => m.type === 'fetch').map((m) => m.key)")
    assert "grid" in sent and "head/1/2" in sent
    assert {"head/1/0", "head/2/1", "head/0/1"} & set(sent), sent


def test_a_fetch_the_host_cannot_answer_shows_a_message_and_the_view_keeps_working(show):
    page = show(AttentionWidget(trace(), layer=1, head=1, send_all_below=0), fetchable=False)
    page.locator(".aw-layer").press("ArrowRight")
    expect(page.locator(".aw-missing")).to_contain_text("cannot send head/2/1")  # in place, no stale image
    expect(page.locator(".aw-plot-label")).to_contain_text("layer 2, head 1 · not available")
    page.locator(".aw-layer").press("ArrowLeft")
    page.wait_for_function("document.querySelector('.aw-root').dataset.shown === 'head/1/1:linear'")
    expect(page.locator(".aw-plot-label")).to_have_text("layer 1, head 1")


def test_the_scrubber_steps_through_generated_tokens(show):
    tr = trace(prompt_len=24)
    page = show(AttentionWidget(tr, layer=0, head=0))
    label = page.locator(".aw-step-label")
    expect(label).to_contain_text('step 0: output "␣w24" (position 24), produced by query 23 "␣w23"')
    page.click(".aw-next")
    page.click(".aw-next")
    expect(label).to_contain_text('step 2: output "␣w26"')
    assert page.evaluate("window.model.get('step')") == 2
    bars = page.evaluate("""Object.values(Bokeh.index).find((v) => v.model.name === 'bars')
        .model.document.get_model_by_name('bars_source').data""")
    assert len(bars["top"]) == 26
    assert bars["top"] == pytest.approx(tr.step(2)[0, 0, :26].tolist(), abs=6e-4)
    assert bars["color"][23] != bars["color"][24], "prompt and generated bars look the same"


def test_zooming_in_redraws_at_full_resolution(show):
    page = show(AttentionWidget(trace(t=1500, n_layers=1, n_heads=1, prompt_len=1500)))
    title = lambda: page.evaluate("""Object.values(Bokeh.index).find((v) => v.model.name === 'heatmap')
        .model.document.get_model_by_name('colour_bar').title""")  # noqa: E731
    assert "1 px = max of 4×4" in title()
    page.evaluate("""(() => {
        const d = Object.values(Bokeh.index).find((v) => v.model.name === 'heatmap').model.document;
        d.get_model_by_name('x_range').setv({start: 100, end: 130});
        d.get_model_by_name('y_range').setv({start: 230, end: 200}); })()""")
    page.wait_for_function("""!Object.values(Bokeh.index).find((v) => v.model.name === 'heatmap')
        .model.document.get_model_by_name('colour_bar').title.includes('1 px')""")
    labels = page.evaluate("""[...Object.values(Bokeh.index).find((v) => v.model.name === 'heatmap')
        .model.document.get_model_by_name('x_axis').major_label_overrides.values()]""")
    assert labels[:2] == [" w100", " w101"], "zoomed in, the axis shows token text again"


def test_dark_theme_paints_a_dark_heatmap_background(show):
    page = show(AttentionWidget(trace(), theme="dark"))
    assert "aw-dark" in page.locator(".aw-root").get_attribute("class")
    img = image(page.locator(".aw-plot-host"))
    r, g, b = img.getpixel((img.width - 3, img.height - 3))
    assert r + g + b < 150


def test_token_text_is_never_html(show):
    tokens = ["<img src=x onerror=alert(1)>", "<b>bold</b>", " &amp;", "\n"] * 5
    page = show(AttentionWidget(trace(t=20, prompt_len=15, tokens=tokens)))
    strip = page.locator(".aw-strip")
    assert "<img src=x onerror=alert(1)><b>bold</b> &amp;⏎" in strip.inner_text()
    assert page.locator(".aw-root img, .aw-root b").count() == 0
    page.locator('.aw-token[data-pos="0"]').hover()
    expect(page.locator(".aw-readout")).to_contain_text('token 0 "<img src=x onerror=alert(1)>"')
    assert page.events["dialogs"] == [] and page.events["page_errors"] == []


def seq2seq_trace(n_src=12, n_dec=5, seed=0, generated=False):
    """An encoder-decoder trace: source tokens " s0"…, decoder tokens " d0"…"""
    from attn_widget.trace import AttentionBlock, TokenTable

    rng = np.random.default_rng(seed)

    def rows(q, k, causal=False):
        a = rng.random((2, 3, q, k)) ** 4
        if causal:
            a = np.tril(a)
        return (a / a.sum(-1, keepdims=True)).astype(np.float16)

    dec = rows(n_dec, n_dec, causal=True)
    idx = np.tril_indices(n_dec)
    blocks = {
        "encoder": AttentionBlock("encoder", False, (0, 1), (0, 1, 2), rows(n_src, n_src),
                                  "source_tokens", "source_tokens"),
        "decoder": AttentionBlock("decoder", True, (0, 1), (0, 1, 2), dec[..., idx[0], idx[1]]),
        "cross": AttentionBlock("cross", False, (0, 1), (0, 1, 2), rows(n_dec, n_src), "tokens",
                                "source_tokens"),
    }
    table = lambda words: TokenTable(list(range(len(words))), words, words)  # noqa: E731
    spans = {"source": (0, n_src), "target": (0, n_dec)} | ({"generated": (1, n_dec)} if generated else {})
    return AttentionTrace(table([f" d{i}" for i in range(n_dec)]), blocks, spans,
                          {"name": "tiny-seq2seq", "architecture": "encoder-decoder"},
                          source_tokens=table([f" s{i}" for i in range(n_src)]))


def test_cross_attention_labels_keys_with_encoder_tokens_and_queries_with_decoder_tokens(show):
    from browser_support import hover_heatmap

    page = show(AttentionWidget(seq2seq_trace(), block="cross", layer=1, head=2))
    options = page.locator(".aw-block option").all_inner_texts()
    assert options == ["encoder self-attention", "decoder self-attention",
                       "cross-attention (decoder → encoder)"]
    assert page.locator(".aw-block").input_value() == "cross"
    expect(page.locator(".aw-title")).to_contain_text("5 decoder tokens (queries) → 12 encoder tokens (keys)")
    root = page.locator(".aw-root")
    hover = hover_heatmap(page, root, fx=0.65, fy=0.7)
    text = page.locator(".aw-tooltip:not(.aw-bar-tip)").inner_text()
    m = re.search(r"query (\d+) \"␣d(\d+)\" → key (\d+) \"␣s(\d+)\"", text)
    assert m, text
    assert m.group(1) == m.group(2) and m.group(3) == m.group(4)
    assert int(m.group(3)) > 5, f"keys run over the 12 encoder tokens: {text} ({hover})"
    # Choosing another block asks the kernel (here: records the trait change).
    page.select_option(".aw-block", "encoder")
    assert page.evaluate("window.model.get('block')") == "encoder"
    page.wait_for_function("window.saved > 0")


def test_compare_of_the_same_text_shades_the_strip_by_a_or_b(show):
    a, b = trace(seed=1), trace(seed=2)
    page = show(compare_widget(a, b, layer=1, head=2))
    buttons = page.locator(".aw-shade-source")
    assert buttons.all_inner_texts() == ["A", "B"]
    pos = 20

    def shading():
        page.locator(f'.aw-token[data-pos="{pos}"]').hover()
        page.wait_for_timeout(100)
        return page.evaluate("[...document.querySelectorAll('.aw-token')].map("
                             "(s) => Number(s.style.getPropertyValue('--aw-w') || 0))")

    def expected(t):
        w = t.head(1, 2)[pos]
        return list(np.round(np.nan_to_num(w / w.max()), 2))

    assert shading() == pytest.approx(expected(a), abs=0.011)
    buttons.nth(1).click()
    assert shading() == pytest.approx(expected(b), abs=0.011)


def test_compare_of_different_texts_shades_by_a_only(show):
    a = trace(seed=1)
    b = trace(seed=2, tokens=[f" v{i}" for i in range(30)])
    page = show(compare_widget(a, b))
    assert page.locator(".aw-shade-source").count() == 0
    expect(page.locator(".aw-strip-box")).to_contain_text("(tokens of A)")


def test_choosing_a_grid_badge_relabels_the_thumbnails_without_redrawing_them(show):
    from attn_widget import analysis

    t = trace()
    page = show(AttentionWidget(t))
    cell = page.locator('.aw-grid-cell[data-layer="2"][data-head="3"]')
    cell.locator(".aw-thumb").evaluate("(c) => { c.__kept = true; }")
    page.select_option(".aw-grid-metric", "sink_score")
    expected = analysis.head_scores(t).sink_score[2, 3]
    expect(cell.locator(".aw-badge")).to_have_text(f"{expected:.2f}")
    assert "sink_score" in cell.get_attribute("title")
    assert cell.locator(".aw-thumb").evaluate("(c) => c.__kept === true")
    page.select_option(".aw-grid-metric", "")
    expect(cell.locator(".aw-badge")).to_be_hidden()


def test_the_cross_attention_scrubber_shows_the_output_token_over_the_encoder_tokens(show):
    page = show(AttentionWidget(seq2seq_trace(generated=True), block="cross"))
    expect(page.locator(".aw-steps")).to_contain_text("attention over the encoder's tokens")
    page.locator(".aw-next").click()
    expect(page.locator(".aw-step-label")).to_contain_text(
        'step 1: output "␣d2" (position 2), produced by query 1')
    assert page.evaluate("window.model.get('step')") == 1
