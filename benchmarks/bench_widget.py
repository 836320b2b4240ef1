"""Widget speed in JupyterLab + Debian Chromium: prints medians, asserts nothing.

- slider move → heatmap painted, at 1024² and 4096² (synthetic traces, every head already in
  the browser): from the slider's input event to the end of Bokeh's next canvas paint, and to
  the frame after it. Alternating clicks mostly revisit heads whose coloured image the widget
  keeps (cache hits); a sweep visiting each of 16 heads of a 1000² trace once shows the moves
  to heads never shown before (their images are pre-rendered while the page is idle; not
  1024²);
- first paint of a 1024-token SmolLM2 widget, from pressing Ctrl+Enter on the cell to the
  heatmap's first paint, on a fresh page (BokehJS not loaded yet) and, once that widget has
  settled, for a second widget of the same trace;
- the bytes the browser received over the kernel websocket for that first paint;
- ``--long``: a long trace (default 8192 tokens) of random queries and keys in SmolLM2's shape
  (30 layers × 9 heads, 3 key/value groups, head_dim 64): the first payload's bytes and build
  time in the kernel; in the page, a head never shown before (its pooled image asked from the
  kernel) and a 512-token zoom (its region at full resolution) from the input to the frame after
  the paint, while the all-heads grid is computed; and the kernel's own time to answer them.

- ``--real`` (also part of the full run): what a user sees on a real model: SmolLM2 widgets of
  192 tokens (the France prompt ×11 through the chat template, 8 new tokens) and 1024 tokens, the
  full 270-thumbnail grid on screen; a head-slider input event → the heatmap's next paint → the
  frame that shows it has been produced (requestAnimationFrame, then a task after it: style,
  layout, paint and the compositor commit of that frame are done), and the longest task on the
  main thread meanwhile (Long Tasks API).

Run: ``python benchmarks/bench_widget.py`` (needs the built front end, Chromium, SmolLM2).
``--quick`` skips SmolLM2 and the 4096² case. ``--first-paint N`` runs only the SmolLM2 first
paint, N times on fresh pages, and prints medians of its stages (performance marks ``aw:*``).
``--long [--tokens T]`` runs only the long-trace section; ``--real`` only the real-model section.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from browser_support import NotebookPage, lab_and_browser, new_page  # noqa: E402

SETUP = """
import numpy as np, attn_widget as aw
def synthetic(t, n_heads, seed=0):
    rng = np.random.default_rng(seed)
    out = np.zeros((1, n_heads, t, t), np.float32)
    for h in range(n_heads):
        a = np.tril(rng.random((t, t), dtype=np.float32) ** 8)
        a[:, 0] += 1.0
        out[0, h] = a / a.sum(-1, keepdims=True)
    return aw.AttentionTrace.from_dense(out, [f"t{i}" for i in range(t)], prompt_len=t)
print('READY')
"""

HOOK_JS = """
([rootIndex]) => {
  // Time from the input event's own timestamp (when the browser received the click) to the end
  // of the heatmap's next Bokeh canvas paint, and to the next frame after that paint.
  const root = document.querySelectorAll('.aw-root')[rootIndex];
  const view = root.awHeatmapViews()[0];
  const paint = view.paint.bind(view);
  const results = (window.__awBench = { toPaint: [], toFrame: [], shown: [], cache: [] });
  let t0 = null;
  root.addEventListener('input', (e) => { t0 = e.timeStamp; }, { capture: true });
  view.paint = () => {
    paint();
    if (t0 === null) return;
    const start = t0;
    t0 = null;
    const painted = performance.now();
    results.toPaint.push(painted - start);
    results.shown.push(root.dataset.shown);
    results.cache.push(root.dataset.imageCache);
    requestAnimationFrame(() => results.toFrame.push(performance.now() - start));
  };
}
"""


def median_ms(xs):
    return f"{statistics.median(xs):6.1f} ms (n={len(xs)}, min {min(xs):.1f}, max {max(xs):.1f})"


def slider_bench(nb: NotebookPage, cell: int, widget_index: int, n_heads: int, repeats: int,
                 sweep: bool = False, cold: bool = False):
    """Click the head slider at alternating positions; each click is one input event.

    The widget keeps coloured images of heads it has shown, so alternating clicks mostly revisit
    (cache hits); ``sweep`` clicks heads 1, 2, … once each instead: every move a first visit.
    ``cold`` turns the widget's image cache and idle pre-rendering off (``__awColdImages``), so
    every move pools and colours its head from the float16 cells: the worst case.
    Returns the times to paint and to the next frame, and whether each move's image was cached.
    """
    if not nb.cell(cell).locator(".aw-root").count():
        nb.run(cell, timeout=600_000)
    root = nb.widget(cell)
    nb.page.evaluate(HOOK_JS, [widget_index])
    nb.page.evaluate(f"window.__awColdImages = {'true' if cold else 'false'}")
    slider = root.locator(".aw-head")
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    thumb = 8  # the range thumb's half width: value v sits at this inset from either end
    expected = []
    values = (list(range(1, n_heads)) if sweep else
              [(i % (n_heads - 1)) + 1 if i % 2 == 0 else 0 for i in range(repeats)])
    for i, v in enumerate(values):
        x = box["x"] + thumb + v / (n_heads - 1) * (box["width"] - 2 * thumb)
        nb.page.mouse.click(x, box["y"] + box["height"] / 2)
        expected.append(f"head/0/{v}:linear")
        nb.page.wait_for_function("n => window.__awBench.toFrame.length >= n", arg=i + 1, timeout=30_000)
        nb.page.wait_for_timeout(50)
    result = nb.page.evaluate("window.__awBench")
    nb.page.evaluate("window.__awColdImages = false")
    if result["shown"] != expected:
        raise RuntimeError(f"the clicks showed {result['shown']}, expected {expected}")
    return result["toPaint"], result["toFrame"], result["cache"]


def report(label, paint, frame, cache):
    print(f"slider → painted, {label}: {median_ms(paint)}; → next frame {median_ms(frame)}")
    misses = [i for i, c in enumerate(cache) if c == "miss"]
    line = (f"    image already coloured (cached or pre-rendered while idle) for "
            f"{len(cache) - len(misses)} of {len(cache)} moves")
    if misses:
        line += f"; the others → painted {median_ms([paint[i] for i in misses])}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024² slider only")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--first-paint", type=int, default=0, metavar="N",
                        help="only the SmolLM2 first paint, N fresh pages, with a stage breakdown")
    parser.add_argument("--setup-extra", default="", help="code appended to the setup cell "
                        "(experiments with --first-paint)")
    parser.add_argument("--long", action="store_true", help="only the long-trace section")
    parser.add_argument("--real", action="store_true", help="only the real-model section "
                        "(SmolLM2, 192 and 1024 tokens, full grid)")
    parser.add_argument("--tokens", type=int, default=8192, help="tokens of the --long trace")
    args = parser.parse_args()
    if args.long:
        long_bench(args.tokens)
        return
    if args.real:
        real_bench(args.repeats)
        return

    cells = [SETUP,
             "w1k = aw.AttentionWidget(synthetic(1024, 4), send_all_below=2**31, scale='linear')\nw1k",
             "w4k = aw.AttentionWidget(synthetic(4096, 3), send_all_below=2**31, scale='linear')\nw4k",
             # Closed, so that a fresh page does not restore them (and BokehJS with them).
             "for n in ('w1k', 'w4k', 'w1k_sweep'):\n"
             "    globals().get(n) is not None and globals()[n].close()",
             "import json\nmodel, tok = aw.load_model('smollm2')\n"
             "text = ' '.join(['The capital of France is Paris. What is the capital of France?'] * 120)\n"
             "prompt = tok.decode(tok(text).input_ids[:1024])\n"
             "long = aw.capture(model, tok, prompt)\nprint('TOKENS', len(long.tokens))",
             "w = aw.AttentionWidget(long, layer=15, head=4, scale='linear')\nw",
             "print('PAYLOAD', len(w._payload), 'FIGURES', len(json.dumps(w._figures)))",
             "w_again = aw.AttentionWidget(long, layer=15, head=4, scale='linear')\nw_again",
             "w1k_sweep = aw.AttentionWidget(synthetic(1000, 16), send_all_below=2**31,\n"
             "                               scale='linear')\nw1k_sweep",
             PUSH_CELL]  # the next widget is the kernel's first again: BokehJS travels with it
    with lab_and_browser() as (lab, browser):
        lab.write_notebook("bench.ipynb", cells)
        page = new_page(browser, width=1400, height=1000)
        received: list[tuple[float, int]] = []

        def on_ws(ws):
            ws.on("framereceived",
                  lambda payload: received.append((time.perf_counter(), len(payload))))

        page.on("websocket", on_ws)
        if args.first_paint:
            setup = cells[0] + (args.setup_extra or "")
            first_paint_only(browser, lab, [setup] + cells[1:], args.first_paint)
            return
        nb = NotebookPage(page, lab, "bench.ipynb")
        nb.run(0)
        print("machine: 2 shared CPU cores; Chromium headless, no GPU; JupyterLab 4")
        report("1024×1024", *slider_bench(nb, 1, 0, 4, args.repeats))
        report("1024×1024, image cache off (every move pools)",
               *slider_bench(nb, 1, 0, 4, args.repeats, cold=True))
        if not args.quick:
            report("4096×4096", *slider_bench(nb, 2, 1, 3, args.repeats))
            report("4096×4096, image cache off (every move pools)",
                   *slider_bench(nb, 2, 1, 3, args.repeats, cold=True))
        report("1000×1000, sweep visiting each of 16 heads once",
               *slider_bench(nb, 8, 1 if args.quick else 2, 16, 0, sweep=True))
        if not args.quick:
            nb.run(3)
            page.close()
            page = new_page(browser, width=1400, height=1000)
            received.clear()
            page.on("websocket", on_ws)
            nb = NotebookPage(page, lab, "bench.ipynb")
            print(nb.run(4, timeout=900_000).strip().splitlines()[-1])
            nb.run(9)
            cold, cold_bytes, cold_page = _first_paint_seconds(nb, 5, received, page_clock=True)
            # Let the first widget settle (its grid thumbnails arrive) before the next.
            nb.cell(5).locator(".aw-grid-cell").first.wait_for(timeout=60_000)
            print(nb.run(6).strip())
            warm, warm_bytes, warm_page = _first_paint_seconds(nb, 7, received, page_clock=True)
            print(f"first paint, 1024-token SmolLM2 widget, first of the kernel, fresh page "
                  f"(BokehJS sent with it): page clock {cold_page:.2f} s (Ctrl+Enter → painted "
                  f"frame); Python clock {cold:.2f} s (from before the click on the cell, "
                  f"paint polled); {cold_bytes / 2**20:.2f} MiB received")
            print(f"first paint, second widget of the same trace (BokehJS on the page): "
                  f"page clock {warm_page:.2f} s; Python clock {warm:.2f} s; "
                  f"{warm_bytes / 2**20:.2f} MiB received")
    if not args.quick:
        real_bench(args.repeats)


MARKS = ("aw:initialize", "aw:render", "aw:build", "aw:decoded", "aw:bokeh-request",
         "aw:bokeh-received", "aw:bokeh-eval", "aw:bokeh-ready", "aw:dom", "aw:embedded",
         "aw:first-image")
FRAMES_JS = """
(() => {
  const Native = window.WebSocket;
  const frames = (window.__awFrames = []);
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => {
        const d = e.data;
        frames.push([performance.now(), typeof d === "string" ? d.length : (d.byteLength ?? d.size ?? 0)]);
      });
    }
  };
})();
"""
KERNEL_CELL = ("import time\nt0 = time.perf_counter()\n"
               "_w = aw.AttentionWidget(long, layer=15, head=4, scale='linear')\n"
               "t1 = time.perf_counter()\n_w._repr_mimebundle_()\nt2 = time.perf_counter()\n_w.close()\n"
               "print(f'KERNEL construct {t1 - t0:.3f} s, display bundle {t2 - t1:.3f} s')")


PUSH_CELL = "import attn_widget.figures as _awf\n_awf._BOKEH_PUSHED.clear()"


def first_paint_only(browser, lab, cells, n):
    """The SmolLM2 first paint on ``n`` fresh pages: medians of the total and of each stage.

    Two cases, alternating: the first widget of the kernel (BokehJS travels with it), and a
    later widget on a fresh page (a reloaded page or a second tab: the page asks for BokehJS).
    """
    lab.write_notebook("fp.ipynb", [cells[0], cells[4], cells[5], "w.close()", KERNEL_CELL, PUSH_CELL])
    page = new_page(browser, width=1400, height=1000)
    nb = NotebookPage(page, lab, "fp.ipynb")
    nb.run(0)
    print(nb.run(1, timeout=900_000).strip().splitlines()[-1])
    for _ in range(3):
        print(nb.run(4).strip())
    page.context.close()
    results = {}
    for i in range(2 * n):
        first = i % 2 == 0
        totals, painted, stages = results.setdefault(first, ([], [], {}))
        page = new_page(browser, width=1400, height=1000)
        # Bytes counted in the page: Playwright's own frame events would ship every frame's
        # payload to Python, base64, on the same two cores, during the first paint.
        page.add_init_script(FRAMES_JS)
        nb = NotebookPage(page, lab, "fp.ipynb")
        # The page's own clock: the Ctrl+Enter keydown's timestamp is the start.
        page.evaluate("document.addEventListener('keydown', (e) => { if (e.key === 'Enter' && e.ctrlKey)"
                      " window.__awKey = e.timeStamp; }, { capture: true })")
        if first:
            nb.run(5)
        elapsed, _ = _first_paint_seconds(nb, 2, [])
        marks = page.evaluate("Object.fromEntries(performance.getEntriesByType('mark')"
                              ".filter(m => m.name.startsWith('aw:')).map(m => [m.name, m.startTime]))")
        start = page.evaluate("window.__awKey ?? window.__awPress")
        rel = {k: v - start for k, v in marks.items()}
        nbytes = page.evaluate("([t0, t1]) => window.__awFrames.filter(([t]) => t >= t0 && t <= t1)"
                               ".reduce((a, [, n]) => a + n, 0)", [start, marks.get("aw:painted", 1e12)])
        totals.append(elapsed)
        painted.append(rel.get("aw:painted", float("nan")) / 1000)
        for k, v in rel.items():
            stages.setdefault(k, []).append(v)
        print(f"run {i} ({'first widget of the kernel' if first else 'later widget'}): "
              f"{elapsed:.2f} s, {nbytes / 2**20:.2f} MiB; " +
              ", ".join(f"{k[3:]} {v:.0f}" for k, v in sorted(rel.items(), key=lambda kv: kv[1])))
        nb.run(3)
        page.context.close()
    for first, (totals, painted, stages) in results.items():
        print("== " + ("first widget of the kernel (BokehJS sent with it)" if first
                       else "later widget, fresh page (the page asks for BokehJS)"))
        print(f"first paint, fresh page, as Playwright sees it (Python clock, from before the "
              f"prompt click): median {statistics.median(totals):.2f} s "
              f"(n={n}, min {min(totals):.2f}, max {max(totals):.2f})")
        print(f"first paint, fresh page, page clock (Ctrl+Enter keydown → frame after Bokeh's "
              f"paint): median {statistics.median(painted):.2f} s "
              f"(n={n}, min {min(painted):.2f}, max {max(painted):.2f})")
        for k in sorted(stages, key=lambda k: statistics.median(stages[k])):
            print(f"    {k:22s} median {statistics.median(stages[k]):7.0f} ms after Ctrl+Enter")


PAGE_CLOCK_JS = """
() => {
  const painted = performance.getEntriesByName('aw:painted').map((m) => m.startTime)
    .filter((t) => t > window.__awKey);
  return painted.length ? (Math.min(...painted) - window.__awKey) / 1000 : null;
}
"""


def _first_paint_seconds(nb, cell, received, page_clock=False):
    """Python clock from before the click on the cell to the paint seen by polling; with
    ``page_clock`` also the page's own: Ctrl+Enter keydown → the frame after Bokeh's paint."""
    start = time.perf_counter()
    nb.cell(cell).locator(".jp-InputPrompt").click()
    mark = len(received)
    nb.page.evaluate("window.__awPress = performance.now(); window.__awKey = Infinity;"
                     "document.addEventListener('keydown', (e) => { if (e.key === 'Enter' && e.ctrlKey)"
                     " window.__awKey = e.timeStamp; }, { capture: true })")
    nb.page.keyboard.press("Control+Enter")
    nb.widget(cell)
    elapsed = time.perf_counter() - start
    bytes_in = sum(n for t, n in received[mark:] if t <= start + elapsed)
    nb.page.wait_for_timeout(1000)
    if page_clock:
        return elapsed, bytes_in, nb.page.evaluate(PAGE_CLOCK_JS)
    return elapsed, bytes_in


REAL_CELLS = [
    "import attn_widget as aw\nif 'short' not in globals():  # a second page shares the kernel\n"
    "    model, tok = aw.load_model('smollm2')\n"
    "    france = 'The capital of France is Paris. What is the capital of France?'\n"
    "    short = aw.capture(model, tok, ' '.join([france] * 11), max_new_tokens=8, chat=True)\n"
    "    text = ' '.join([france] * 120)\n"
    "    long = aw.capture(model, tok, tok.decode(tok(text).input_ids[:1024]))\n"
    "print('TOKENS', len(short.tokens), len(long.tokens))",
    "w = aw.AttentionWidget(short, layer=15, head=4, scale='linear')\nw",
    "w.close()\nw = aw.AttentionWidget(long, layer=15, head=4, scale='linear')\nw",
    "w.close()",
]
REAL_MEASURE_JS = """
async ([n]) => {
  // Input event → the heatmap's next paint (data-paints) → requestAnimationFrame → a task after
  // it: the frame that shows the new head has been styled, laid out, painted and committed.
  const root = [...document.querySelectorAll('.aw-root')].pop();
  const slider = root.querySelector('.aw-head');
  const longest = { ms: 0 };
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) longest.ms = Math.max(longest.ms, e.duration);
  });
  obs.observe({ entryTypes: ['longtask'] });
  const out = [];
  for (let i = 0; i < n; i++) {
    const v = i % 2 ? 0 : 1 + (i / 2) % 8;  // heads 1..8 against head 0
    out.push(await new Promise((resolve) => {
      const before = root.dataset.paints;
      let t0 = null;
      slider.addEventListener('input', (e) => { t0 = e.timeStamp; }, { once: true, capture: true });
      const watch = new MutationObserver(() => {
        if (root.dataset.paints === before) return;
        watch.disconnect();
        requestAnimationFrame(() => setTimeout(() => resolve(performance.now() - t0)));
      });
      watch.observe(root, { attributes: true, attributeFilter: ['data-paints'] });
      slider.value = v;
      slider.dispatchEvent(new Event('input', { bubbles: true }));
    }));
    await new Promise((r) => setTimeout(r, 150));
  }
  obs.disconnect();
  return { times: out, longest: longest.ms, thumbs: root.querySelectorAll('.aw-grid-cell').length };
}
"""


def real_bench(repeats: int) -> None:
    """SmolLM2 widgets with the full grid on screen: input → frame shown, and the longest task."""
    with lab_and_browser() as (lab, browser):
        lab.write_notebook("real.ipynb", REAL_CELLS)
        for width, height in ((1280, 800), (1440, 900)):
            page = new_page(browser, width=width, height=height)
            nb = NotebookPage(page, lab, "real.ipynb")
            print(nb.run(0, timeout=900_000).strip().splitlines()[-1])
            for cell, label in ((1, "192 tokens"), (2, "1024 tokens")):
                nb.run(cell, timeout=300_000)
                root = nb.widget(cell)
                root.locator(".aw-grid-cell").first.wait_for(timeout=120_000)
                root.locator(".aw-grid").scroll_into_view_if_needed()  # the grid on screen
                page.wait_for_timeout(2000)
                load = os.getloadavg()[0]
                r = page.evaluate(REAL_MEASURE_JS, [repeats])
                nb.run(cell + 1)  # closed: the next widget is alone on the page
                print(f"SmolLM2 {label}, {r['thumbs']} thumbnails on screen, {width}×{height}, "
                      f"load {load:.1f}: slider input → frame shown {median_ms(r['times'])}; "
                      f"longest main-thread task meanwhile {r['longest']:.0f} ms")
            page.context.close()


LONG_SETUP = """
import os, sys, time, numpy as np, attn_widget as aw
sys.path.insert(0, {browser_tests!r})
from test_long_widget import random_long_trace
t0 = time.perf_counter()
tr = random_long_trace({tokens}, n_layers=30, n_heads=9, n_groups=3, head_dim=64)
print(f'TRACE {{tr.block().nbytes / 2**20:.0f}} MiB of queries and keys, '
      f'made in {{time.perf_counter() - t0:.1f}} s')
"""
LONG_WIDGET = """
t0 = time.perf_counter()
w = aw.AttentionWidget(tr, layer=15, head=4, scale='linear')
build = time.perf_counter() - t0
print(f'FIRST {{len(w._payload)}} bytes, built in {{build:.2f}} s, load {{os.getloadavg()[0]:.1f}}')
w
"""
LONG_KERNEL = """
d = w.view_data
def ask(key):
    t0, c0 = time.perf_counter(), time.thread_time()
    reply, bufs = d.answer({{"type": "fetch", "id": 0, "trace_id": d.trace_id, "source": 0, "key": key}})
    assert reply["type"] == "data", reply
    return f"{{time.perf_counter() - t0:.2f}} ({{time.thread_time() - c0:.2f}} CPU)"
side = {side}
heads = ((3, 2), (22, 7), (9, 0), (27, 5))
pool = [ask(f"pool/{{layer}}/{{head}}/{{side}}") for layer, head in heads]
region = [ask(f"region/{{layer}}/{{head}}/4100/4612/4000/4512") for layer, head in heads]
print("KERNEL pool " + ", ".join(pool) + " | region " + ", ".join(region)
      + f" | grid done: {{d.grid[0].done()}} | load {{os.getloadavg()[0]:.1f}}")
"""
LONG_MEASURE_JS = """
([action, arg, expect]) => new Promise((resolve) => {
  // From the input (a head slider move, or new heatmap ranges) to the frame after the paint
  // that shows what was asked: the pooled head, or the full-resolution region over it.
  const root = document.querySelector('.aw-root');
  const t0 = performance.now();
  const done = () => {
    const d = root.dataset;
    return action === 'head' ? d.shown === expect : d.detail.startsWith(expect) && d.resolution === 'full:1';
  };
  const watch = new MutationObserver(() => {
    if (!done()) return;
    watch.disconnect();
    requestAnimationFrame(() => resolve(performance.now() - t0));
  });
  watch.observe(root, { attributes: true, attributeFilter: ['data-paints'] });
  if (action === 'head') {
    const input = root.querySelector('.aw-head');
    input.value = arg;
    input.dispatchEvent(new Event('input', { bubbles: true }));
  } else {
    const doc = Object.values(Bokeh.index).find((v) => v.model.name === 'heatmap').model.document;
    doc.get_model_by_name('x_range').setv({ start: arg[0], end: arg[1] });
    doc.get_model_by_name('y_range').setv({ start: arg[3], end: arg[2] });
  }
  setTimeout(() => { watch.disconnect(); resolve(null); }, 120000);
})
"""


def long_bench(tokens: int) -> None:
    """The long-trace section: a SmolLM2-shaped trace of random queries and keys in JupyterLab."""
    import math

    from attn_widget.figures import frame_pixels

    side = math.ceil(tokens / frame_pixels())
    cells = [LONG_SETUP.format(browser_tests=str(ROOT / "tests" / "browser"), tokens=tokens),
             LONG_WIDGET.format(), LONG_KERNEL.format(side=side)]
    with lab_and_browser() as (lab, browser):
        lab.write_notebook("long.ipynb", cells)
        page = new_page(browser, width=1400, height=1300)
        nb = NotebookPage(page, lab, "long.ipynb")
        print(f"machine: 2 CPU cores shared with other work (load {os.getloadavg()[0]:.1f} at "
              "start); Chromium headless, no GPU; JupyterLab 4; the kernel computes the "
              "all-heads grid on its grid thread meanwhile")
        print(nb.run(0, timeout=900_000).strip().splitlines()[-1])
        print(nb.run(1, timeout=900_000).strip().splitlines()[0])
        nb.widget(1)
        page.wait_for_timeout(3000)  # the first paint's prefetches (layer mean, heads ±1)
        heads = []
        for head in (8, 1, 6):  # never shown, and not neighbours of one shown
            ms = page.evaluate(LONG_MEASURE_JS, ["head", head, f"pool/15/{head}/{side}:linear"])
            heads.append(ms)
            page.wait_for_timeout(3000)
        zooms = []
        for start in (4000, 1000, 6500):  # 512 × 512 tokens each, a region never fetched
            box = [start, start + 512, start + 100, start + 612]  # keys, then queries
            ms = page.evaluate(LONG_MEASURE_JS, ["zoom", box, "region/15/6/"])
            zooms.append(ms)
            page.wait_for_timeout(2000)
        fmt = lambda xs: ", ".join("timed out" if x is None else f"{x / 1000:.2f} s" for x in xs)  # noqa: E731
        print(f"head never shown, slider input → pooled image painted (next frame): {fmt(heads)}")
        print(f"512-token zoom, new ranges → full-resolution region painted (next frame; "
              f"includes the view's 150 ms settle delay): {fmt(zooms)}")
        print(nb.run(2, timeout=900_000).strip().splitlines()[-1] + "  (seconds of "
              "ViewData.answer on the kernel thread, and that thread's CPU seconds, for "
              "pooled heads and 512² regions never asked)")
        print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
