"""The live widget in Notebook 7 (not JupyterLab), in Chromium, on SmolLM2.

Notebook 7 is built from JupyterLab's components but is a different application (its own page,
no status bar, no side panels): the widget must not lean on anything only JupyterLab has.
"""

from __future__ import annotations

import re

import pytest
from browser_support import NotebookPage, hover_heatmap, new_page, start_lab

pytestmark = [pytest.mark.browser, pytest.mark.smollm2]

CELLS = [
    "import attn_widget as aw\nmodel, tok = aw.load_model('smollm2')\n"
    "trace = aw.capture(model, tok, 'The capital of France is Paris. The capital of France is', "
    "max_new_tokens=4)\nprint('READY', len(trace))",
    "w = aw.AttentionWidget(trace, layer=2, head=0)\nw",
    "print('VIEW', w.layer, w.head)",
    "print('PINNED', w.selected_token)",
]


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory):
    server = start_lab(tmp_path_factory.mktemp("notebook7"), app="notebook")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nb(browser, notebook7):
    notebook7.write_notebook("widget.ipynb", CELLS)
    page = new_page(browser, width=1280, height=800)
    try:
        notebook = NotebookPage(page, notebook7, "widget.ipynb", app="notebook")
        assert "READY" in notebook.run(0, timeout=300_000)
        # Notebook 7.6 itself throws one error on load ("reading 'schema'"), with or without a
        # widget: only errors after this point are the widget's.
        notebook.errors_before_widget = list(page.events["page_errors"])
        notebook.run(1)
        yield notebook
    finally:
        page.context.close()


@pytest.fixture(autouse=True)
def _screenshot_on_failure(request, nb):
    request.node._pages = [nb.page]


def test_the_page_is_notebook7_and_the_heatmap_is_painted(nb):
    assert nb.page.locator("#jp-main-statusbar").count() == 0, "this looks like JupyterLab, not Notebook 7"
    root = nb.widget(1)
    assert root.locator(".aw-plot-host").first.is_visible()
    assert root.locator(".aw-caveat").inner_text().startswith("Attention is a debugging signal")
    new_errors = nb.page.events["page_errors"][len(nb.errors_before_widget):]
    assert not new_errors, new_errors


def test_the_head_slider_reaches_python(nb):
    root = nb.widget(1)
    root.locator(".aw-head").focus()
    nb.page.keyboard.press("ArrowRight")
    nb.page.keyboard.press("ArrowRight")
    nb.page.wait_for_function("el => (el.dataset.shown || '').startsWith('head/2/2:')",
                              arg=root.element_handle(), timeout=60_000)
    out = nb.run(2)
    assert re.search(r"VIEW 2 2\b", out), out


def test_hover_names_the_tokens_and_a_click_pins_one_for_python(nb):
    root = nb.widget(1)
    tip = hover_heatmap(nb.page, root)
    assert 0 <= tip["k"] <= tip["q"] and 0.0 <= tip["weight"] <= 1.0
    token = root.locator('.aw-token[data-pos="3"]')
    token.click()
    assert "aw-pinned" in token.get_attribute("class")
    out = nb.run(3)
    assert "PINNED 3" in out, out
