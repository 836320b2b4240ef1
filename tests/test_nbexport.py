"""Exported notebooks: each live attention widget becomes an interactive offline snapshot
(``jupyter nbconvert --to attn_html``), with and without ``--execute``; the notebook itself
carries only a small note."""

from __future__ import annotations

import base64
import gc
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import nbformat
import numpy as np
import pytest

from attn_widget import nbexport
from attn_widget.nbconvert_exporter import AttentionHTMLExporter, SnapshotPreprocessor
from attn_widget.trace import AttentionTrace
from attn_widget.widget import AttentionWidget

CDN_MANAGER = "html-manager"  # what nbconvert's page loads from unpkg to draw live widgets


def small_trace(t=10, seed=0):
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((2, 3, t, t)) ** 3)
    a /= a.sum(-1, keepdims=True)
    return AttentionTrace.from_dense(a, [f" w{i}" for i in range(t)], prompt_len=t - 3, model_name="tiny")


def saved_state(widget) -> dict:
    """The widget's state as JupyterLab or nbclient save it in a notebook: binary traits moved
    to base64 buffers."""
    state, buffers = {}, []
    for name, value in widget.get_state().items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            buffers.append({"path": [name], "encoding": "base64", "data": base64.b64encode(value).decode()})
        else:
            state[name] = value
    return {"model_name": state["_model_name"], "model_module": state["_model_module"],
            "model_module_version": state["_model_module_version"], "state": state, "buffers": buffers}


def notebook_showing(widget, *, with_state: bool) -> nbformat.NotebookNode:
    view = {"version_major": 2, "version_minor": 0, "model_id": widget.model_id}
    bundle = nbexport.mimebundle(widget, {"text/plain": "AttentionWidget()",
                                          nbexport.WIDGET_VIEW_MIMETYPE: view})
    cell = nbformat.v4.new_code_cell("w", outputs=[nbformat.v4.new_output(
        "display_data", data=bundle)])
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Attention"), cell])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    if with_state:
        nb.metadata["widgets"] = {nbexport.WIDGET_STATE_MIMETYPE: {
            "version_major": 2, "version_minor": 0, "state": {widget.model_id: saved_state(widget)}}}
    return nb


def test_a_widgets_display_carries_only_a_small_note_saying_how_to_export():
    w = AttentionWidget(small_trace(), push_bokeh=False)
    view = {"model_id": w.model_id}
    bundle = nbexport.mimebundle(w, {"text/plain": "x", nbexport.WIDGET_VIEW_MIMETYPE: view})
    note = bundle["text/html"]
    assert len(note.encode()) < 1000 and "jupyter nbconvert --to attn_html --execute" in note
    assert bundle[nbexport.WIDGET_VIEW_MIMETYPE] == view and w.model_id in nbexport.displayed()
    assert nbexport.mimebundle(w, None) is None  # a closed widget displays nothing


def test_the_widgets_own_display_keeps_the_live_view_and_adds_the_note():
    w = AttentionWidget(small_trace(), push_bokeh=False)
    data, metadata = w._repr_mimebundle_()  # anywidget's (data, metadata), as IPython displays it
    assert data[nbexport.WIDGET_VIEW_MIMETYPE]["model_id"] == w.model_id
    assert "jupyter nbconvert --to attn_html" in data["text/html"] and isinstance(metadata, dict)
    assert w.model_id in nbexport.displayed()
    w.close()


def test_displayed_widgets_are_snapshotted_while_open_and_not_kept_alive():
    w = AttentionWidget(small_trace(), push_bokeh=False)
    nbexport.register(w)
    pages = nbexport.snapshots(budget_mb=10)
    page = pages[w.model_id]["page"]
    assert page.isascii() and "aw-manifest" in page and "unpkg" not in page
    model_id = w.model_id
    w.close()
    assert model_id not in nbexport.snapshots()
    del w
    gc.collect()
    assert model_id not in nbexport.displayed()


def test_a_page_rebuilt_from_saved_state_holds_the_payload_and_needs_no_network():
    w = AttentionWidget(small_trace(), layer=1, head=2, push_bokeh=False)
    entry = saved_state(w)
    assert nbexport.is_attention_state(entry)
    page = nbexport.page_from_state(entry)
    manifest = json.loads(page.split('id="aw-manifest">', 1)[1].split("</script>", 1)[0])
    assert manifest["state"]["layer"] == 1 and manifest["state"]["head"] == 2
    assert manifest["state"]["_live"] is False and "_payload" in manifest["binary_state"]
    assert "Every head is in it" in page  # a small trace's payload holds every head
    assert "https://" not in page.split("<script>", 1)[0]  # nothing fetched before the boot script
    w.close()


def test_saved_state_without_attention_is_a_clear_error():
    entry = {"model_name": "AnyModel", "state": {"_figures": {}, "_blocks": []},
             "buffers": [{"path": ["_payload"], "encoding": "base64", "data": ""}]}
    with pytest.raises(ValueError, match="holds no attention"):
        nbexport.page_from_state(entry)


def test_export_without_execute_uses_the_saved_state_and_drops_the_cdn_manager():
    w = AttentionWidget(small_trace(), push_bokeh=False)
    nb = notebook_showing(w, with_state=True)
    html, _ = AttentionHTMLExporter().from_notebook_node(nb)
    assert "srcdoc=" in html and "attention snapshot" in html
    assert CDN_MANAGER not in html and nbexport.WIDGET_STATE_MIMETYPE not in html
    assert "attn-widget-offline" not in html  # the note gave way to the snapshot
    w.close()


def test_export_without_state_or_kernel_keeps_the_note_and_warns(caplog):
    w = AttentionWidget(small_trace(), push_bokeh=False)
    nb = notebook_showing(w, with_state=False)
    pre = SnapshotPreprocessor()
    nb, _ = pre.preprocess(nb, {})
    assert "attn-widget-offline" in nb.cells[1].outputs[0].data["text/html"]
    html, _ = AttentionHTMLExporter().from_notebook_node(nb)
    assert "attn-widget-offline" in html and "srcdoc=" not in html
    w.close()


NOTEBOOK_CELLS = [
    """
    import numpy as np
    import attn_widget as aw
    from attn_widget import nbexport
    rng = np.random.default_rng(0)
    a = np.tril(rng.random((2, 3, 10, 10)) ** 3)
    trace = aw.AttentionTrace.from_dense(a / a.sum(-1, keepdims=True), [f" w{i}" for i in range(10)],
                                         prompt_len=7, model_name="tiny-executed")
    """,
    """
    w = aw.AttentionWidget(trace, layer=1, head=2)
    nbexport.register(w)  # what AttentionWidget._repr_mimebundle_ does once wired (widget.py)
    w
    """,
    "print('after the widget')",
]


def test_nbconvert_execute_puts_the_kernels_snapshot_in_place_of_the_widget(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c).strip())
                                         for c in NOTEBOOK_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, path)
    before = path.read_bytes()
    done = subprocess.run([sys.executable, "-m", "nbconvert", "--to",
                           "attn_widget.nbconvert_exporter.AttentionHTMLExporter", "--execute", str(path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    html = (tmp_path / "run.html").read_text("utf-8")
    assert html.count("srcdoc=") == 1 and "tiny-executed" in html and "after the widget" in html
    assert CDN_MANAGER not in html and nbexport.WIDGET_STATE_MIMETYPE not in html
    assert "send_snapshots" not in html  # the extra cell is not in the copy
    assert path.read_bytes() == before  # the notebook itself is untouched


def test_export_notebook_writes_the_html_beside_the_notebook(tmp_path):
    from attn_widget.nbconvert_exporter import export_notebook

    w = AttentionWidget(small_trace(), push_bokeh=False)
    path = tmp_path / "saved.ipynb"
    nbformat.write(notebook_showing(w, with_state=True), path)
    out = export_notebook(path)
    assert out == tmp_path / "saved.html"
    html = out.read_text("utf-8")
    assert "srcdoc=" in html and CDN_MANAGER not in html
    w.close()


@pytest.mark.browser
def test_exported_copies_draw_the_widget_offline_in_chromium(tmp_path):
    """Both paths (saved state, notebook written with sorted keys; executed kernel) paint the
    heatmap in the exported page with no network and no script error in the snapshot."""
    from browser.browser_support import CHROMIUM, CHROMIUM_ARGS, new_page
    from playwright.sync_api import sync_playwright

    from attn_widget.nbconvert_exporter import export_notebook

    w = AttentionWidget(small_trace(), layer=1, head=0, push_bokeh=False)
    nbformat.write(notebook_showing(w, with_state=True), tmp_path / "saved.ipynb")
    run = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c).strip())
                                          for c in NOTEBOOK_CELLS])
    run.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nbformat.write(run, tmp_path / "run.ipynb")
    pages = {"saved": (export_notebook(tmp_path / "saved.ipynb"), "layer 1, head 0"),
             "run": (export_notebook(tmp_path / "run.ipynb", execute=True), "layer 1, head 2")}
    def look() -> None:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for path, shown in pages.values():
                page = new_page(browser, 1300, 1400)
                problems: list[str] = []
                page.on("pageerror", lambda e, problems=problems: problems.append(str(e)))
                page.on("console", lambda m, problems=problems: problems.append(m.text)
                        if m.type == "error" and "attn_widget" in m.text else None)
                page.goto(path.as_uri())
                frame = page.frame_locator("iframe[title='attention snapshot']")
                frame.get_by_text(shown, exact=True).wait_for(timeout=30000)
                frame.locator(".bk-Canvas, canvas").first.wait_for(timeout=30000)
                assert problems == [], problems
                page.close()
            browser.close()

    # Playwright's sync API refuses a thread with a running asyncio loop (an earlier test's
    # kernel client may leave one on this thread): it gets a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(look).result()
    w.close()
