"""Offline snapshots in Chromium: a file written by ``attn-widget snapshot`` opened from file://
with every other request blocked, and a tutorial exported by nbconvert.

One page for the module; the tests use it in order, as a reader would.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser_support import new_page

import attn_widget as aw
from attn_widget.encoding import decode_payload

pytestmark = [pytest.mark.browser, pytest.mark.smollm2]

ROOT = Path(__file__).resolve().parents[2]
XSS = "</script><img src=x onerror=alert(1)>"
PROMPT = f"The capital of France is Paris. {XSS} What is the capital of France?"


def attn_widget_command() -> list[str]:
    script = Path(sys.executable).with_name("attn-widget")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from attn_widget.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The snapshot and trace the command line writes for the France prompt with markup in it."""
    folder = tmp_path_factory.mktemp("snapshot")
    out = subprocess.run([*attn_widget_command(), "snapshot", "--model", "smollm2", "--prompt", PROMPT,
                          "--chat", "--max-new-tokens", "8", "--out", str(folder / "run.html"),
                          "--save-trace", str(folder / "run.attn")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return folder / "run.html", aw.load_trace(folder / "run.attn")


def open_offline(browser, url: str):
    """A page that may load file: URLs only; every other request is aborted and recorded in
    ``page.blocked`` with the URL of the frame that made it."""
    page = new_page(browser)
    page.blocked = []

    def record(req):
        if not req.url.startswith("file:") and (req.url, req.frame.url) not in page.blocked:
            page.blocked.append((req.url, req.frame.url))

    page.context.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
    page.on("request", record)
    page.goto(url)
    return page


@pytest.fixture(scope="module")
def snap(browser, written):
    page = open_offline(browser, written[0].as_uri())
    try:
        page.wait_for_function("document.documentElement.dataset.snapshotReady === '1'", timeout=60_000)
        root = page.locator(".aw-root")
        page.wait_for_function("el => Number(el.dataset.paints || 0) > 0", arg=root.element_handle(),
                               timeout=60_000)
        yield page
    finally:
        page.context.close()


@pytest.fixture(autouse=True)
def _screenshot_on_failure(request):
    if "snap" in request.fixturenames:
        request.node._pages = [request.getfixturevalue("snap")]


def pixels(locator):
    """The element as the page shows it (a clip of the page: also for elements in an iframe)."""
    from PIL import Image

    page = locator.page
    page.mouse.move(1, 1)
    page.wait_for_timeout(150)
    return Image.open(io.BytesIO(page.screenshot(clip=locator.bounding_box()))).convert("RGB")


def n_colours(img) -> int:
    return len(img.getcolors(maxcolors=1 << 20) or [])


def changed_fraction(a, b) -> float:
    from PIL import ImageChops

    return float((np.asarray(ImageChops.difference(a, b).convert("L")) > 8).mean())


def model_get(page, name):
    return page.evaluate("n => window.attnWidgetSnapshot.model.get(n)", name)


def wait_shown(page, shown: str):
    page.wait_for_function("s => document.querySelector('.aw-root').dataset.shown === s", arg=shown,
                           timeout=30_000)


# --------------------------------------------------------------------------- the CLI-written page
def test_the_heatmap_paints(snap):
    assert n_colours(pixels(snap.locator(".aw-plot-host").first)) > 50, "the heatmap looks blank"


def test_moving_the_layer_slider_repaints_from_inlined_data(snap, written):
    trace = written[1]
    host = snap.locator(".aw-plot-host").first
    before = pixels(host)
    layer, head = model_get(snap, "layer"), model_get(snap, "head")
    snap.locator(".aw-layer").focus()
    steps = 3 if layer + 3 <= trace.layers[-1] else -3
    for _ in range(abs(steps)):
        snap.keyboard.press("ArrowRight" if steps > 0 else "ArrowLeft")
    wait_shown(snap, f"head/{layer + steps}/{head}:linear")
    assert model_get(snap, "layer") == layer + steps
    assert changed_fraction(before, pixels(host)) > 0.01


def test_hovering_a_cell_shows_both_tokens_and_the_traced_weight(snap, written):
    trace = written[1]
    box = snap.locator(".aw-plot-host").first.bounding_box()
    snap.mouse.move(box["x"] + 0.42 * box["width"], box["y"] + 0.8 * box["height"])
    tooltip = snap.locator(".aw-tooltip:not(.aw-bar-tip)")
    tooltip.wait_for(state="visible", timeout=10_000)
    text = tooltip.inner_text()
    m = re.search(r'query (\d+) "(.*)" → key (\d+) "(.*)"\s+weight ([-\d.e]+)', text, re.S)
    assert m, text
    q, k = int(m.group(1)), int(m.group(3))
    expected = trace.head(model_get(snap, "layer"), model_get(snap, "head"))[q, k]
    assert float(m.group(5)) == pytest.approx(expected, rel=2e-3, abs=6e-5)
    assert trace.tokens.text[q].strip() in m.group(2)


def test_clicking_a_grid_thumbnail_selects_that_head(snap):
    cell = snap.locator('.aw-grid-cell[data-layer="7"][data-head="2"]')
    cell.wait_for(timeout=30_000)
    cell.scroll_into_view_if_needed()
    cell.click()
    wait_shown(snap, "head/7/2:linear")
    assert (model_get(snap, "layer"), model_get(snap, "head")) == (7, 2)


def test_heads_decoded_in_the_page_equal_the_trace_bit_for_bit(snap, written):
    """Every byte value survives the page's windows-1252 blobs, inflate and unshuffle."""
    trace = written[1]
    got = snap.evaluate("""async (keys) => {
      const m = window.attnWidgetSnapshot.model;
      const tid = JSON.parse(new TextDecoder().decode(new Uint8Array(m.get("_payload").buffer).slice(8,
        8 + m.get("_payload").getUint32(4, true)))).trace_id;
      const out = {};
      for (const key of keys) {
        out[key] = await new Promise((resolve) => {
          const on = (msg, buffers) => {
            if (msg.id !== "t-" + key) return;
            m.off("msg:custom", on);
            const b = new Uint8Array(buffers[0].buffer, buffers[0].byteOffset, buffers[0].byteLength);
            let s = ""; for (const x of b) s += String.fromCharCode(x);
            resolve(btoa(s));
          };
          m.on("msg:custom", on);
          m.send({ type: "fetch", id: "t-" + key, trace_id: tid, source: 0, key });
        });
      }
      return out;
    }""", ["head/0/0", "head/17/3", "head/29/8", "mean/5"])
    for key, b64 in got.items():
        _, arrays = decode_payload(base64.b64decode(b64))
        values = arrays[(0, key)]
        if key.startswith("head/"):
            layer, head = map(int, key.split("/")[1:])
            want = trace.block().data[layer, head]
            np.testing.assert_array_equal(values.view(np.uint16), want.view(np.uint16))
        else:
            want = trace.layer_mean(5)[np.tril_indices(len(trace.tokens))]
            np.testing.assert_allclose(values.astype(np.float32), want, rtol=2**-11, atol=2**-25)


def test_markup_in_the_prompt_shows_literally_and_runs_nothing(snap):
    assert XSS in snap.locator(".aw-strip").inner_text()
    assert XSS in snap.locator("h1").inner_text()
    assert snap.locator("img[src='x']").count() == 0
    snap.wait_for_timeout(300)
    assert snap.events["dialogs"] == []
    assert snap.events["page_errors"] == []
    assert snap.events["console_errors"] == []


def test_the_page_made_no_network_request(snap):
    """Runs after the interactions above: loading, slider, hover, grid and fetches."""
    assert snap.blocked == []


# --------------------------------------------------------------------------- budget
def test_a_left_out_head_says_so_and_the_page_keeps_working(browser, written, tmp_path):
    trace = written[1]
    full = aw.save_snapshot(trace, tmp_path / "full.html")
    per_head = (full.nbytes - aw.save_snapshot(trace, tmp_path / "one.html", heads=[(0, 0)]).nbytes) / 269
    small = aw.save_snapshot(trace, tmp_path / "small.html", budget_mb=(full.nbytes - 200 * per_head) / 1e6)
    assert small.left_out
    page = open_offline(browser, small.path.as_uri())
    try:
        page.wait_for_function("document.documentElement.dataset.snapshotReady === '1'", timeout=60_000)
        assert f"{len(small.left_out)} of 270 heads were left out" in page.locator("header").inner_text()
        layer, head = small.left_out[0]
        page.evaluate("([l, h]) => { const m = window.attnWidgetSnapshot.model; m.set('layer', l); "
                      "m.set('head', h); }", [layer, head])
        missing = page.locator(".aw-missing")  # in place of the heatmap, not "loading…" over the old one
        missing.wait_for(state="visible", timeout=10_000)
        text = missing.inner_text()
        assert f"Layer {layer}, head {head} is not in this file." in text
        assert re.search(rf"head/{layer}/{head} is not in this snapshot", text)
        keep_layer, keep_head = small.heads[0]
        page.evaluate("([l, h]) => { const m = window.attnWidgetSnapshot.model; m.set('layer', l); "
                      "m.set('head', h); }", [keep_layer, keep_head])
        wait_shown(page, f"head/{keep_layer}/{keep_head}:linear")
        assert page.blocked == [] and page.events["page_errors"] == []
    finally:
        page.context.close()


# --------------------------------------------------------------------------- nbconvert export
def test_tutorial_1_exported_by_nbconvert_is_interactive_offline(browser, tmp_path):
    notebook = tmp_path / "01_quickstart.ipynb"
    shutil.copy(ROOT / "notebooks" / "01_quickstart.ipynb", notebook)
    out = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute",
                          "--ExecutePreprocessor.timeout=600", str(notebook)],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    page = open_offline(browser, (tmp_path / "01_quickstart.html").as_uri())
    try:
        page.locator("iframe[title='attention snapshot']").first.scroll_into_view_if_needed()
        frame = page.frame_locator("iframe[title='attention snapshot']").first
        root = frame.locator(".aw-root")
        root.wait_for(timeout=60_000)
        handle = root.element_handle()
        handle.owner_frame().wait_for_function("el => Number(el.dataset.paints || 0) > 0", arg=handle,
                                               timeout=60_000)
        assert n_colours(pixels(frame.locator(".aw-plot-host").first)) > 50
        before = root.get_attribute("data-shown")
        frame.locator(".aw-layer").focus()
        page.keyboard.press("ArrowRight")
        handle.owner_frame().wait_for_function("([el, s]) => el.dataset.shown !== s", arg=[handle, before],
                                               timeout=30_000)
        # the notebook page around it asks CDNs for require.js and MathJax (blocked); the
        # snapshot in the iframe asks for nothing
        assert [u for u, frame in page.blocked if frame == "about:srcdoc"] == []
    finally:
        page.context.close()
