"""The live widget in JupyterLab, in Chromium, on SmolLM2: what a user sees and does.

One notebook (one kernel) for the module; the tests run its cells in order, as a user would.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from browser_support import NotebookPage, displayed, hover_heatmap, new_page
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.smollm2]

TESTS = Path(__file__).resolve().parents[1]

FRANCE = "The capital of France is Paris. What is the capital of France?"
XSS = "<img src=x onerror=alert(1)> is this text?"
CELLS = [
    "import json, attn_widget as aw\nmodel, tok = aw.load_model('smollm2')\n"
    "session = aw.AttentionSession(model, tok)\nprint('READY')",
    f"w = session.run({FRANCE!r}, max_new_tokens=8, chat=True)\nw",
    "w.head = 5",
    "print('VIEW', w.layer, w.head, w.selected_token)",
    "q, k = json.load(open('hover.json'))\n"
    "print('CELL', json.dumps([w.trace.tokens.text[q], w.trace.tokens.text[k], "
    "float(w.trace.head(w.layer, w.head)[q, k])]))",
    "w2 = aw.AttentionWidget(w.trace, layer=3, head=1, send_all_below=0)\nw2",
    "print('VIEW2', w2.layer, w2.head)",
    # As if the trace had been replaced since the page got its payload: the next fetch is refused.
    "import dataclasses\nw2._data = dataclasses.replace(w2.view_data, trace_id='stale')",
    f"x = session.run({XSS!r}, max_new_tokens=2)\nx",
    "print('TEXT', json.dumps(w.trace.text))",
    # An encoder-decoder model (tiny, random weights) for the attention-block menu.
    f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom conftest import tiny_model\n"
    "from tokenizers import Tokenizer, models, pre_tokenizers\n"
    "from transformers import PreTrainedTokenizerFast\n"
    "vocab = {f'w{i}': i for i in range(100)} | {'[UNK]': 100}\n"
    "tk = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))\n"
    "tk.pre_tokenizer = pre_tokenizers.Whitespace()\n"
    "words = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token='[UNK]', pad_token='[UNK]')\n"
    "s2s = aw.capture(tiny_model('t5'), words, 'w1 w2 w3 w4 w5 w6 w7 w8 w9 w10', target='w3 w8 w9')\n"
    "ws = aw.AttentionWidget(s2s)\nws",
    "print('BLOCK', ws.block, json.dumps(ws.trace.source_tokens.text))",
]


@pytest.fixture(scope="module")
def nb(browser, lab):
    lab.write_notebook("widget.ipynb", CELLS)
    page = new_page(browser)
    try:
        notebook = NotebookPage(page, lab, "widget.ipynb")
        assert "READY" in notebook.run(0, timeout=300_000)
        yield notebook
    finally:
        page.context.close()


@pytest.fixture(autouse=True)
def _screenshot_on_failure(request, nb):
    request.node._pages = [nb.page]


def pixels(locator):
    from PIL import Image

    nb_page = locator.page
    nb_page.mouse.move(1, 1)  # no hover highlight in the picture
    nb_page.wait_for_timeout(150)
    return Image.open(io.BytesIO(locator.screenshot())).convert("RGB")


def n_colours(img) -> int:
    return len(img.getcolors(maxcolors=1 << 20) or [])


def changed_fraction(a, b) -> float:
    from PIL import ImageChops

    histogram = ImageChops.difference(a, b).convert("L").histogram()
    return sum(histogram[9:]) / (a.width * a.height)  # pixels that moved by more than 8 levels


def view(nb: NotebookPage, cell: int, tag: str) -> list[int]:
    out = nb.run(cell)
    m = re.search(rf"{tag} (-?\d+) (-?\d+)", out)
    assert m, out
    return [int(x) for x in m.groups()]


def wait_shown(nb: NotebookPage, root, shown: str):
    nb.page.wait_for_function("([el, s]) => el.dataset.shown === s", arg=[root.element_handle(), shown],
                              timeout=60_000)


def test_the_heatmap_is_painted(nb):
    nb.run(1)
    root = nb.widget(1)
    img = pixels(root.locator(".aw-plot-host").first)
    assert n_colours(img) > 50, "the heatmap looks blank"
    caveat = root.locator(".aw-caveat").inner_text()
    assert caveat.startswith("Attention is a debugging signal, not an explanation")


def test_moving_the_layer_slider_repaints_and_python_reads_the_layer(nb):
    root = nb.widget(1)
    host = root.locator(".aw-plot-host").first
    before = pixels(host)
    root.locator(".aw-layer").focus()
    # Presses ~30 ms apart land while the kernel's echo of the previous move is on its way;
    # no move may be lost to it (the view must not jump back to an echoed older layer).
    for _ in range(3):
        nb.page.keyboard.press("ArrowRight")
        nb.page.wait_for_timeout(30)
    wait_shown(nb, root, "head/3/0:linear")
    assert changed_fraction(before, pixels(host)) > 0.01
    assert view(nb, 3, "VIEW") == [3, 0]


def test_setting_the_head_from_python_repaints(nb):
    root = nb.widget(1)
    host = root.locator(".aw-plot-host").first
    before = pixels(host)
    nb.run(2)
    wait_shown(nb, root, "head/3/5:linear")
    assert changed_fraction(before, pixels(host)) > 0.01
    assert root.locator(".aw-head").input_value() == "5"


def test_hovering_a_cell_shows_both_tokens_and_the_weight(nb, lab):
    root = nb.widget(1)
    hover = hover_heatmap(nb.page, root)
    (lab.root / "hover.json").write_text(json.dumps([hover["q"], hover["k"]]))
    query, key, weight = json.loads(nb.run(4).split("CELL", 1)[1])
    assert (hover["query"], hover["key"]) == (displayed(query), displayed(key))
    assert hover["weight"] == pytest.approx(weight, rel=2e-3, abs=6e-5)
    assert root.locator(".aw-readout").inner_text() == hover["text"]


def test_clicking_a_grid_thumbnail_selects_that_head(nb):
    root = nb.widget(1)
    cell = root.locator('.aw-grid-cell[data-layer="7"][data-head="2"]')
    cell.scroll_into_view_if_needed()
    assert cell.locator(".aw-badge").inner_text().strip() != ""
    cell.click()
    wait_shown(nb, root, "head/7/2:linear")
    assert view(nb, 3, "VIEW") == [7, 2]
    assert "aw-current" in cell.get_attribute("class")


def test_the_token_strip_pins_a_token_for_python(nb):
    root = nb.widget(1)
    token = root.locator('.aw-token[data-pos="4"]')
    token.click()
    assert "aw-pinned" in token.get_attribute("class")
    out = nb.run(3)
    assert out.strip().endswith("4")


def test_two_widgets_in_one_notebook_both_work(nb):
    nb.run(5)
    second = nb.widget(5)
    wait_shown(nb, second, "head/3/1:linear")
    assert n_colours(pixels(second.locator(".aw-plot-host").first)) > 50
    second.locator(".aw-head").focus()
    nb.page.keyboard.press("ArrowRight")  # a head the lazy widget has to fetch
    wait_shown(nb, second, "head/3/2:linear")
    assert view(nb, 6, "VIEW2") == [3, 2]
    first = nb.widget(1)
    first.locator(".aw-layer").focus()
    nb.page.keyboard.press("ArrowLeft")
    wait_shown(nb, first, "head/6/2:linear")
    assert view(nb, 3, "VIEW")[:2] == [6, 2]


def test_a_refused_fetch_shows_a_message_and_the_widget_keeps_working(nb):
    second = nb.widget(5)
    nb.run(7)
    second.locator(".aw-layer").focus()
    nb.page.keyboard.press("End")  # the last layer: not cached, so it is fetched and refused
    notice = second.locator(".aw-missing")  # in place of the heatmap
    notice.wait_for(state="visible", timeout=30_000)
    assert "head/29/2 was not sent: the trace shown was replaced" in notice.inner_text()
    nb.page.keyboard.press("Home")
    for _ in range(4):
        nb.page.keyboard.press("ArrowRight")
    wait_shown(nb, second, "head/4/2:linear")  # prefetched earlier: drawn from the cache


def test_the_prompt_box_reruns_the_model_in_place(nb):
    root = nb.widget(1)
    box = root.locator(".aw-prompt-text")
    box.fill("The capital of Italy is Rome. What is the capital of Italy?")
    root.locator(".aw-run").click()
    expect(root.locator(".aw-run-status")).to_have_text("done", timeout=180_000)
    expect(root.locator(".aw-strip")).to_contain_text("capital of Italy")
    assert "Italy" in nb.run(9)
    assert view(nb, 3, "VIEW")[:2] == [6, 2]  # the view survived the re-run


def test_rerunning_the_cell_shows_a_working_widget(nb):
    nb.run(1)
    root = nb.widget(1)
    assert nb.cell(1).locator(".aw-root").count() == 1
    assert "France" in root.locator(".aw-strip").inner_text()
    root.locator(".aw-layer").focus()
    nb.page.keyboard.press("ArrowRight")
    wait_shown(nb, root, "head/1/0:linear")


def test_a_prompt_with_html_is_shown_as_text_and_runs_no_script(nb):
    nb.run(8)
    root = nb.widget(8)
    assert "<img src=x onerror=alert(1)>" in root.locator(".aw-strip").inner_text()
    assert nb.page.locator(".jp-OutputArea-output img[src='x']").count() == 0
    nb.page.wait_for_timeout(500)
    assert nb.page.events["dialogs"] == []
    assert nb.page.events["page_errors"] == []
    assert [e for e in nb.page.events["console_errors"] if "attn_widget" in e or "onerror" in e] == []


def test_the_attention_menu_shows_cross_attention_of_an_encoder_decoder_model(nb):
    nb.run(10)
    root = nb.widget(10)
    assert root.locator(".aw-block").input_value() == "decoder"
    root.locator(".aw-block").select_option("cross")
    expect(root.locator(".aw-title")).to_contain_text("decoder tokens (queries) →", timeout=30_000)
    wait_shown(nb, root, "head/0/0:linear")
    out = nb.run(11)
    assert "BLOCK cross" in out, out
    hover = hover_heatmap(nb.page, root, fx=0.6, fy=0.7)
    sources = json.loads(out.split("BLOCK cross", 1)[1].strip())
    assert hover["key"] == displayed(sources[hover["k"]]), (hover, sources)
