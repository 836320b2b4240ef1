"""Snapshot benchmark: file size per attention cell, and time to first paint in Chromium.

SmolLM2-135M over the first 256 tokens of the article "Understanding What Your Model Attends To",
all 30 layers × 9 heads:

- bytes per attention cell (file bytes ÷ (heads × T²)) of ``attn_widget.save_snapshot``,
  against the same attention written as inline JSON floats (what BertViz and CircuitsVis
  embed: ``tensor.tolist()`` of every head's full T × T matrix);
- time from opening the snapshot from file:// (every other request blocked) to the widget's
  first painted heatmap, median of several loads in Debian Chromium.

Run: ``python benchmarks/bench_snapshot.py [--tokens 256] [--loads 7]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import attn_widget as aw

LONG_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "long_text.txt"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
# Records when the widget first reports a painted heatmap, on the page's own clock (ms since
# navigation started), one animation frame later so the pixels are on screen.
_FIRST_PAINT = """
new MutationObserver((_, obs) => {
  const root = document.querySelector(".aw-root");
  if (root && Number(root.dataset.paints || 0) > 0) {
    obs.disconnect();
    requestAnimationFrame(() => { window.__firstPaint = performance.now(); });
  }
}).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ["data-paints"] });
"""


def json_bytes_per_value(trace) -> float:
    """Inline-JSON bytes per attention value, every head's full T × T matrix as nested lists."""
    total = 0
    for layer in trace.layers:
        dense = trace.attention(layers=[layer])  # float32 (1, heads, T, T), zeros above the diagonal
        total += len(json.dumps(dense[0].tolist()))
    return total / (len(trace.layers) * len(trace.heads) * len(trace.tokens) ** 2)


def first_paint_ms(path: Path, loads: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(loads):
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = ctx.new_page()
                # Requests are recorded, not routed: routing sends even the file: load through
                # Playwright and slows it. The browser tests block them; here we only check.
                # (blob: is the widget module handed to import() from memory, not the network.)
                asked: list[str] = []
                page.on("request", lambda r, asked=asked: r.url.startswith(("file:", "blob:"))
                        or asked.append(r.url))
                page.add_init_script(_FIRST_PAINT)
                page.goto(path.as_uri())
                page.wait_for_function("window.__firstPaint !== undefined", timeout=120_000)
                times.append(page.evaluate("window.__firstPaint"))
                assert not asked, f"the snapshot asked the network for {asked}"
                ctx.close()
        finally:
            browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--loads", type=int, default=7)
    args = parser.parse_args()

    model, tokenizer = aw.load_model("smollm2")
    ids = tokenizer(LONG_TEXT.read_text() * 4).input_ids[:args.tokens]
    trace = aw.capture(model, tokenizer, tokenizer.decode(ids))
    del model  # its idle threads would compete with Chromium for the CPU
    t = len(trace.tokens)
    heads = len(trace.layers) * len(trace.heads)
    print(f"trace: SmolLM2-135M, {t} tokens, {len(trace.layers)} layers × {len(trace.heads)} heads "
          f"= {heads} heads, {heads * t * t / 1e6:.1f} M attention cells")

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        snap = aw.save_snapshot(trace, Path(folder) / "run.html", budget_mb=1000)
        write_s = time.perf_counter() - start
        times = first_paint_ms(snap.path, args.loads)
    print(f"snapshot: {snap.nbytes / 1e6:.2f} MB, {snap.bytes_per_cell:.3f} bytes per attention cell "
          f"(BokehJS and the widget included), written in {write_s:.1f} s")
    json_per_value = json_bytes_per_value(trace)
    json_mb = json_per_value * heads * t * t / 1e6
    print(f"inline JSON floats: {json_per_value:.2f} bytes per value → {json_mb:.0f} MB for the same "
          f"heads; the snapshot is {json_per_value / snap.bytes_per_cell:.1f}× smaller")
    raw = trace.block().data.nbytes / (heads * t * t)
    print(f"float16 packed triangle, uncompressed: {raw:.3f} bytes per cell")
    print(f"open from file:// → first painted heatmap, Chromium: median {statistics.median(times):.0f} "
          f"ms (min {min(times):.0f}, max {max(times):.0f}, {len(times)} loads)")


if __name__ == "__main__":
    main()
