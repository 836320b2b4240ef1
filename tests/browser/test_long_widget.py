"""An 8192-token widget in Chromium, answered live by its kernel-side object: first paint from a
pooled head, another head fetched pooled, a zoomed region fetched at full resolution, the
windowed token strip, and the scrubber's last step. Checks pixels and DOM state, not timings.

The page is tests/browser/standalone.py's, with its stand-in host replaced (an init script) by
one that hands each message to the widget itself and polls for its replies, the ones sent later
from its worker threads included.
"""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest
from standalone import standalone_html

from attn_widget.querykeys import QueryKeys
from attn_widget.tokens import TokenTable
from attn_widget.trace import AttentionBlock, AttentionTrace
from attn_widget.widget import AttentionWidget

pytestmark = pytest.mark.browser

WORDS = "The capital of France is Paris . It lies on the Seine , and the river runs".split()
NEEDLE = 5000  # the one token " Zanzibar"


def random_long_trace(t: int = 8192, *, n_layers: int = 2, n_heads: int = 3, n_groups: int = 1,
                      head_dim: int = 64, generated: int = 8, seed: int = 0) -> AttentionTrace:
    """A trace holding random queries and keys (SmolLM2-like: grouped keys, head_dim 64), with
    a sink at position 0 and a band of nearby tokens (narrower in lower heads), over ``t``
    tokens of which the last ``generated`` were generated."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n_layers, n_heads, t, head_dim), np.float32)
    k = rng.standard_normal((n_layers, n_groups, t, head_dim), np.float32)
    # Nearby tokens: sinusoids of the position (periods 6 to ~400 tokens), stronger in lower
    # heads, make a diagonal band; a sink at key 0 that every query leans towards.
    angles = np.arange(t)[:, None] * (2 * np.pi / (6 * 64 ** (np.arange(16) / 16)))
    near = np.concatenate([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    for h in range(n_heads):
        q[:, h, :, :32] += 8.0 * (n_heads - h) / n_heads * near
    k[:, :, :, :32] += near
    q[..., 32:40] += 2.0
    k[:, :, 0, 32:40] += 4.0
    qk = QueryKeys(q, k, np.arange(n_heads) * n_groups // n_heads, np.full(n_layers, head_dim ** -0.5),
                   np.zeros(n_layers, np.int64))
    block = AttentionBlock("self", True, tuple(range(n_layers)), tuple(range(n_heads)), qk=qk)
    words = [" " + WORDS[i % len(WORDS)] for i in range(t)]
    if t > NEEDLE:
        words[NEEDLE] = " Zanzibar"
    table = TokenTable(list(range(t)), words, words)
    model = {"name": "random-qk", "architecture": "decoder", "n_layers": n_layers, "n_heads": n_heads,
             "n_kv_heads": n_groups}
    spans = {"prompt": (0, t - generated), "generated": (t - generated, t)}
    return AttentionTrace(table, {"self": block}, spans, model, {"max_new_tokens": generated})


HOST_JS = """
(() => {
  const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const deliver = (json) => {
    for (const [content, buffers] of JSON.parse(json)) window.emit("msg:custom", content, buffers.map(b64));
  };
  Object.defineProperty(window, "model", {
    configurable: true,
    get() { return window.__awModel; },
    set(m) {
      m.send = (msg) => { window.sent.push(msg); window.awSend(JSON.stringify(msg)).then(deliver); };
      window.__awModel = m;
    },
  });
  setInterval(() => window.awPoll().then(deliver), 40);
})();
"""


class LiveHost:
    """The widget's side of the page: messages go to the widget as from a kernel's comm, and
    what it sends (at once, or later from its worker threads) waits here for the page's poll."""

    def __init__(self, widget: AttentionWidget):
        self.widget = widget
        self.lock = threading.Lock()
        self.outbox: list = []
        widget.send = self.queue

    def queue(self, content, buffers=None):
        with self.lock:
            self.outbox.append([content, [base64.b64encode(bytes(b)).decode() for b in buffers or []]])

    def receive(self, message: str) -> str:
        self.widget._handle_custom_msg(json.loads(message), [])
        return self.poll()

    def poll(self) -> str:
        with self.lock:
            out, self.outbox = self.outbox, []
        return json.dumps(out)


def open_live(page_for, tmp_path, widget: AttentionWidget):
    """A page showing ``widget``, answered live; waits for the first paint."""
    host = LiveHost(widget)
    page = page_for(width=1300, height=1300)
    page.expose_function("awSend", host.receive)
    page.expose_function("awPoll", host.poll)
    page.add_init_script(HOST_JS)
    path = tmp_path / "long.html"
    path.write_text(standalone_html(widget, fetchable=False), encoding="utf-8")
    page.goto(path.as_uri())
    page.wait_for_function("window.rendered === true && document.querySelector('.aw-root')?.dataset.paints",
                           timeout=60_000)
    return page


def root_data(page) -> dict:
    return page.evaluate("({...document.querySelector('.aw-root').dataset})")


def heatmap_image(page):
    import io

    from PIL import Image

    page.mouse.move(1, 1)
    page.wait_for_timeout(150)
    return Image.open(io.BytesIO(page.locator(".aw-plot-host").first.screenshot())).convert("RGB")


def differ(a, b) -> bool:
    from PIL import ImageChops

    return ImageChops.difference(a, b).getbbox() is not None


@pytest.fixture(scope="module")
def long_trace():
    return random_long_trace()


HEATMAP = "Object.values(Bokeh.index).find((v) => v.model.name === 'heatmap')"
SHOWN = "document.querySelector('.aw-root').dataset"


def test_a_long_widget_opens_pooled_shows_another_head_and_zooms_to_full_resolution(page_for, tmp_path,
                                                                                    long_trace):
    from browser_support import hover_heatmap

    w = AttentionWidget(long_trace, layer=0, head=0, scale="linear")  # the default would be log here
    page = open_live(page_for, tmp_path, w)
    # pooled by the kernel to 16 tokens a square (540 a side); the 384-pixel figure shows them
    # pooled further to whole squares per pixel, and says so
    shown = int(root_data(page)["resolution"].removeprefix("pooled:"))
    assert shown % 16 == 0 and 8192 / shown <= 384
    assert page.locator(".aw-resolution").first.inner_text().startswith(
        f"pooled: 1 px = {shown}×{shown} tokens (max)")
    first = heatmap_image(page)

    page.locator(".aw-head").press("ArrowRight")  # a head never shown: its pooled image is fetched
    page.wait_for_function(f"{SHOWN}.shown === 'pool/0/1/16:linear'", timeout=60_000)
    other = heatmap_image(page)
    assert differ(first, other)
    assert page.evaluate("window.model.get('head')") == 1

    # Box zoom on the heatmap: drag over ~250 × 250 tokens around the middle of the diagonal.
    page.evaluate(f"{HEATMAP}.model.toolbar.tools.find((t) => t.type === 'BoxZoomTool').active = true")
    frame = page.evaluate(f"""(() => {{ const v = {HEATMAP};
        const r = v.canvas_view.el.getBoundingClientRect(); const b = v.frame.bbox;
        return {{x: r.left + b.left, y: r.top + b.top, w: b.width, h: b.height}}; }})()""")
    px = frame["w"] / 8192  # pixels per token
    start = (frame["x"] + 4000 * px, frame["y"] + 4100 * px)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(start[0] + 250 * px, start[1] + 250 * px, steps=5)
    page.mouse.up()
    page.wait_for_function(f"{SHOWN}.detail.startsWith('region/0/1/')", timeout=60_000)
    page.wait_for_function(f"{SHOWN}.resolution === 'full:1'", timeout=30_000)
    assert page.locator(".aw-resolution").first.inner_text() == "full resolution"
    zoomed = heatmap_image(page)
    assert differ(other, zoomed)
    # The readout now gives each weight, as the model computed it.
    cell = hover_heatmap(page, page.locator(".aw-root"), 0.5, 0.7)
    b = long_trace.block()
    exact = b.rows(0, 1, cell["q"], cell["q"] + 1)[0, cell["k"]]
    assert cell["weight"] == pytest.approx(exact, rel=2e-3, abs=1e-6), cell["text"]
    assert page.events["page_errors"] == [] and page.events["console_errors"] == []


def test_a_long_widget_strip_is_windowed_finds_text_zooms_to_a_typed_span_and_scrubs_to_the_end(
        page_for, tmp_path, long_trace):
    w = AttentionWidget(long_trace, layer=1, head=2)
    page = open_live(page_for, tmp_path, w)
    tokens = page.locator(".aw-strip .aw-token")
    tokens.first.wait_for()
    assert tokens.count() == 512  # a window, not 8192 spans
    assert page.locator(".aw-strip-window").inner_text() == "tokens 0–511 of 8192"

    jump = page.locator(".aw-jump")
    jump.fill("zanzibar")
    jump.press("Enter")
    page.wait_for_function(f"window.model.get('selected_token') === {NEEDLE}")
    assert page.locator(".aw-jump-status").inner_text() == '"zanzibar" at token 5000 (1 of 1)'
    assert page.locator(".aw-strip-window").inner_text() == "tokens 4608–5119 of 8192"
    assert "aw-pinned" in page.locator(f'.aw-token[data-pos="{NEEDLE}"]').get_attribute("class")

    jump.fill("6000-6200")
    jump.press("Enter")
    page.wait_for_function(f"{SHOWN}.detail === 'region/1/2/5952/6208/5952/6208'", timeout=60_000)
    ranges = page.evaluate(f"""(() => {{ const d = {HEATMAP}.model.document;
        const x = d.get_model_by_name('x_range'), y = d.get_model_by_name('y_range');
        return [x.start, x.end, y.end, y.start]; }})()""")
    assert ranges == [6000, 6201, 6000, 6201]

    page.locator(".aw-step").press("End")
    last = long_trace.n_generated - 1
    page.wait_for_function(f"window.model.get('step') === {last}")
    assert page.locator(".aw-step-label").inner_text().startswith(f"step {last}: output")
    q = long_trace.step_position(last)
    page.wait_for_function("""Object.values(Bokeh.index).find((v) => v.model.name === 'bars')
        ?.model.document.get_model_by_name('bars_source').data.top.length > 0""", timeout=60_000)
    bars = page.evaluate("""Object.values(Bokeh.index).find((v) => v.model.name === 'bars')
        .model.document.get_model_by_name('bars_source').data""")
    note = page.locator(".aw-bar-note").inner_text()
    bucket = int(note.split("max of ")[1].split(" ")[0])
    exact = long_trace.block().rows(1, 2, q, q + 1)[0, :q + 1]
    want = [exact[i:i + bucket].max() for i in range(0, q + 1, bucket)]
    assert bars["top"] == pytest.approx(want, rel=2e-3, abs=1e-6)  # the exact row, pooled into bars
    assert page.events["page_errors"] == []
