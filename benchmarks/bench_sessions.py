"""Long notebook sessions (issue 17): memory after many widgets are created and closed. Prints
numbers, asserts nothing (tests/test_memory.py and tests/browser/test_memory_browser.py check
the same by weak references).

- in this process (as a kernel would, without a page): ``--cycles`` (50) widgets of a
  1024-token trace created, asked for a few heads and the all-heads grid, and closed; the
  resident set size (RSS, /proc/self/statm) after a garbage collection and ``malloc_trim(0)``
  (glibc otherwise keeps freed pages for reuse), after the first cycle and after the last;
- in JupyterLab + Debian Chromium: a cell that closes the widget it replaces and shows a new
  one of a 1024-token trace, run ``--cycles`` times; the kernel's RSS (from a cell; as read,
  and after ``malloc_trim(0)``) and the
  page's JS heap in use after a garbage collection forced through the DevTools protocol
  (``HeapProfiler.collectGarbage``, ``Runtime.getHeapUsage``), after the first run and the last.

The trace: ``AttentionTrace.from_dense`` of random causal weights (``--layers`` × ``--heads``,
default 4 × 8, 1024 tokens; stored as float16), one trace for all cycles (the widgets are what
come and go). Goals (issue 17): growth under 30 MB in the kernel, under 50 MB in the page.

Run: ``python benchmarks/bench_sessions.py`` (``--no-browser`` for the in-process part only).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))

MB = 2**20

TRACE = """
import gc, os, numpy as np, attn_widget as aw
def random_trace(t, n_layers, n_heads, seed=0):
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((n_layers, n_heads, t, t), dtype=np.float32) ** 8)
    a[..., 0] += 0.5
    a /= a.sum(-1, keepdims=True)
    return aw.AttentionTrace.from_dense(a, [f" t{i}" for i in range(t)], prompt_len=t - 8)
def rss_mb(trim=False):
    gc.collect()
    if trim:  # hand freed heap pages back to the system (glibc keeps them for reuse)
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
"""


def in_process(cycles: int, tokens: int, layers: int, heads: int) -> None:
    from attn_widget import protocol
    from attn_widget.widget import AttentionWidget

    scope: dict = {}
    exec(TRACE, scope)
    trace = scope["random_trace"](tokens, layers, heads)
    del scope["np"]
    rss = scope["rss_mb"]

    def settle() -> None:
        for worker in (protocol.FETCH_WORKER, protocol.PREFETCH_WORKER, protocol.GRID_WORKER):
            worker.submit(lambda: None).result(600)

    def cycle() -> None:
        w = AttentionWidget(trace, push_bokeh=False)
        w.send = lambda content, buffers=None: None  # no comm here: replies go nowhere
        tid = w.view_data.trace_id
        for i, key in enumerate(["head/0/1", "head/1/0", "mean/2", "grid"]):
            w._handle_custom_msg({"type": "fetch", "id": f"f{i}", "trace_id": tid, "source": 0,
                                  "key": key}, [])
        w.wait(timeout=600)
        w.close()

    t0 = time.perf_counter()
    cycle()
    settle()
    first = rss(trim=True)  # trimmed both times: untrimmed readings after a trim do not compare
    for _ in range(cycles - 1):
        cycle()
    settle()
    last = rss(trim=True)
    print(f"in process: {cycles} widgets of a {tokens}-token trace ({layers}×{heads} heads) created, "
          f"fetched from and closed in {time.perf_counter() - t0:.1f} s")
    print(f"  RSS (after malloc_trim(0)) after the first: {first:7.1f} MB   after the last: "
          f"{last:7.1f} MB   growth: {last - first:+.1f} MB (goal < 30 MB)")


CLOSING = ("if 'w' in globals():\n    w.close()\n"
           "w = aw.AttentionWidget(trace)\ndisplay(w)")


def in_lab(cycles: int, tokens: int, layers: int, heads: int) -> None:
    from browser_support import NotebookPage, lab_and_browser, new_page

    setup = TRACE + f"trace = random_trace({tokens}, {layers}, {heads})\nprint('READY')"
    cells = [setup, CLOSING, "print('RSS', rss_mb(), rss_mb(trim=True))"]
    with lab_and_browser() as (lab, browser):
        lab.write_notebook("sessions.ipynb", cells)
        page = new_page(browser)
        nb = NotebookPage(page, lab, "sessions.ipynb")
        assert "READY" in nb.run(0, timeout=600_000)
        cdp = page.context.new_cdp_session(page)

        def heap() -> float:
            for _ in range(2):
                cdp.send("HeapProfiler.collectGarbage")
            return cdp.send("Runtime.getHeapUsage")["usedSize"] / MB

        def kernel_rss() -> tuple[float, float]:
            plain, trimmed = re.search(r"RSS ([\d.]+) ([\d.]+)", nb.run(2)).groups()
            return float(plain), float(trimmed)

        def run_once() -> None:
            nb.run(1)
            page.wait_for_function(
                "() => Number(document.querySelectorAll('.jp-Notebook .jp-Cell')[1]"
                "?.querySelector('.aw-root')?.dataset.paints || 0) > 0", timeout=120_000)
            page.wait_for_timeout(500)  # the grid and bar chart after the first paint

        t0 = time.perf_counter()
        run_once()
        heap0, rss0 = heap(), kernel_rss()
        for _ in range(cycles - 1):
            run_once()
        heap1, rss1 = heap(), kernel_rss()
        live = page.evaluate("() => globalThis.__attnWidgetLiveViews?.size ?? -1")
        print(f"JupyterLab: a cell closing its widget and showing a new one of a "
              f"{tokens}-token trace, run {cycles} times in {time.perf_counter() - t0:.0f} s")
        print(f"  kernel RSS after the first: {rss0[0]:.1f} MB   after the last: {rss1[0]:.1f} MB"
              f"   growth: {rss1[0] - rss0[0]:+.1f} MB (goal < 30 MB); after malloc_trim(0): "
              f"{rss0[1]:.1f} → {rss1[1]:.1f} MB, {rss1[1] - rss0[1]:+.1f} MB")
        print(f"  page JS heap after the first: {heap0:6.1f} MB   after the last: {heap1:6.1f} MB"
              f"   growth: {heap1 - heap0:+.1f} MB (goal < 50 MB); live views: {live}")
        page.context.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--no-browser", action="store_true", help="only the in-process part")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    in_process(args.cycles, args.tokens, args.layers, args.heads)
    if not args.no_browser:
        in_lab(args.cycles, args.tokens, args.layers, args.heads)


if __name__ == "__main__":
    main()
