"""Long notebook sessions in JupyterLab (issue 17): a widget cell re-run 20 times leaves one
live view on the page, no Bokeh documents of the views it replaced, and a JS heap (after a
garbage collection forced through the DevTools protocol) that stays bounded; closed widgets
are freed in the kernel."""

from __future__ import annotations

import re

import pytest
from browser_support import NotebookPage, start_lab

pytestmark = pytest.mark.browser

RUNS = 20
SETUP = (
    "import gc, weakref\nimport numpy as np\nimport attn_widget as aw\n"
    "from attn_widget.trace import AttentionTrace\n"
    "rng = np.random.default_rng(0)\n"
    "a = np.tril(rng.random((2, 4, 384, 384)) ** 6)\na /= a.sum(-1, keepdims=True)\n"
    "trace = AttentionTrace.from_dense(a, [f' w{i}' for i in range(384)], prompt_len=376)\n"
    "refs = []\nprint('READY')")
# The cell a user re-runs, first as written (its old widget is then still held by the kernel:
# ipywidgets' registry keeps every widget until it is closed, and IPython's Out every cell's
# value), then closing the widget it replaces and showing the new one with display().
PLAIN = "w = aw.AttentionWidget(trace)\nw"
CLOSING = ("if 'w' in globals():\n    w.close()\n"
           "w = aw.AttentionWidget(trace)\nrefs.append(weakref.ref(w))\ndisplay(w)")
COUNT = ("w.close()\ndel w\ngc.collect()\n"
         "print('ALIVE', sum(r() is not None for r in refs), 'OF', len(refs))")

PAGE_STATE = """() => ({
  live: globalThis.__attnWidgetLiveViews ? globalThis.__attnWidgetLiveViews.size : -1,
  roots: document.querySelectorAll('.aw-root').length,
  docs: globalThis.Bokeh ? globalThis.Bokeh[globalThis.Bokeh.version].documents.length : -1,
})"""


def heap_mb(cdp) -> float:
    """The page's JS heap in use after a forced garbage collection, in MB."""
    for _ in range(2):  # a second pass frees what the first one's finalisers released
        cdp.send("HeapProfiler.collectGarbage")
    return cdp.send("Runtime.getHeapUsage")["usedSize"] / 2**20


def rerun(nb, cell: int) -> dict:
    nb.run(cell)
    # Painted. (Waited for without an element handle: a handle would keep the old view's
    # elements, and all they reach, alive in the page.)
    nb.page.wait_for_function(
        "i => Number(document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
        "?.querySelector('.jp-OutputArea-output .aw-root')?.dataset.paints || 0) > 0",
        arg=cell, timeout=60_000)
    nb.page.wait_for_timeout(300)  # the grid and bar chart settle after the first paint
    return nb.page.evaluate(PAGE_STATE)


@pytest.fixture
def own_lab(tmp_path):
    """A JupyterLab of this test's own: the shared one would reopen this notebook's tab in the
    next test's page (its workspace remembers it)."""
    server = start_lab(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_a_cell_rerun_twenty_times_keeps_one_view_and_a_bounded_heap(own_lab, page_for):
    own_lab.write_notebook("memory.ipynb", [SETUP, PLAIN, CLOSING, COUNT])
    nb = NotebookPage(page_for(), own_lab, "memory.ipynb")
    assert "READY" in nb.run(0, timeout=120_000)
    cdp = nb.page.context.new_cdp_session(nb.page)
    cdp.send("HeapProfiler.enable")

    # Re-runs as written: the page keeps one view and the documents of one view.
    first = rerun(nb, 1)
    assert first["live"] == 1 and first["roots"] == 1, first
    for _ in range(RUNS - 1):
        state = rerun(nb, 1)
        assert (state["live"], state["roots"]) == (1, 1), f"views left on the page: {state}"
    assert state["docs"] <= first["docs"], f"Bokeh documents pile up: {first} → {state}"

    # Re-runs that close the widget they replace: model, views and documents all go.
    nb.run(1)  # from here the cell's own widget is `w` again, closed by the next run
    rerun(nb, 2)
    base = heap_mb(cdp)
    for _ in range(RUNS):
        state = rerun(nb, 2)
        assert (state["live"], state["roots"]) == (1, 1), f"views left on the page: {state}"
    growth = heap_mb(cdp) - base
    assert state["docs"] <= first["docs"], f"Bokeh documents pile up: {first} → {state}"
    # One view of this trace holds ~5 MB (payload, coloured images, Bokeh documents, the token
    # strip): 20 leaked views would be ~100 MB.
    assert growth < 15, f"the page's JS heap grew by {growth:.1f} MB over {RUNS} re-runs"

    alive, total = map(int, re.search(r"ALIVE (\d+) OF (\d+)", nb.run(3)).groups())
    assert total == RUNS + 1 and alive == 0, f"{alive} of {total} closed widgets alive in the kernel"
