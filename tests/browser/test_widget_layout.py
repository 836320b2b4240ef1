"""The widget on a laptop screen, in JupyterLab with the file browser open: what must be on
screen without scrolling, and what must not move.

A random 30-layer × 9-head llama (SmolLM2's head count, 270 grid thumbnails) over ~190 words,
run through an AttentionSession so the prompt box is there too. Screenshots: ``AW_SHOTS=dir``.
"""

from __future__ import annotations

import os

import pytest
from browser_support import NotebookPage, new_page, start_lab

pytestmark = pytest.mark.browser

SETUP = """
import sys, torch, attn_widget as aw
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
vocab = {f'w{i}': i for i in range(100)} | {'[UNK]': 100}
tk = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
tk.pre_tokenizer = pre_tokenizers.Whitespace()
words = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token='[UNK]', pad_token='[UNK]')
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=36, intermediate_size=64,
    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    attn_implementation='eager')).eval()
session = aw.AttentionSession(model, words)
prompt = ' '.join(f'w{i % 97}' for i in range(188))
print('READY')
"""
CELLS = [SETUP, "w = session.run(prompt, max_new_tokens=4)\nw"]
SIZES = [(1280, 800), (1440, 900)]


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def shown(request, browser, tmp_path_factory):
    width, height = request.param
    name = f"layout{width}.ipynb"
    # A JupyterLab of its own per size: a second notebook page in one server restores the first
    # notebook's tab, whose cells the page helpers would find first.
    lab = start_lab(tmp_path_factory.mktemp("layout"))
    lab.write_notebook(name, CELLS)
    page = new_page(browser, width=width, height=height)
    try:
        nb = NotebookPage(page, lab, name)
        # The file browser open, as a user has it (JupyterLab's left sidebar).
        if not page.locator(".jp-FileBrowser").is_visible():
            page.locator('.jp-SideBar [data-id="filebrowser"]').click()
        page.locator(".jp-FileBrowser").wait_for(state="visible")
        assert "READY" in nb.run(0, timeout=300_000)
        nb.run(1, timeout=300_000)
        root = nb.widget(1)
        # The grid complete (it is rebuilt while the kernel fills it in).
        page.wait_for_function("(el) => el.querySelectorAll('.aw-grid-cell').length === 270"
                               " && !el.querySelector('.aw-grid-status').textContent",
                               arg=root.element_handle(), timeout=120_000)
        page.wait_for_timeout(500)
        # Scrolled as a user would: the widget's top at the top of the notebook's view.
        root.evaluate("(el) => el.scrollIntoView({ block: 'start' })")
        page.wait_for_timeout(300)
        yield nb, root, (width, height)
    finally:
        page.context.close()
        lab.stop()


def visible_box(page):
    """The notebook's visible area (its scroller) in page coordinates."""
    return page.evaluate("""() => {
      const el = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')
        ?? document.querySelector('.jp-NotebookPanel .jp-Notebook');
      const r = el.getBoundingClientRect();
      return { left: r.left, top: r.top, right: r.right, bottom: r.bottom };
    }""")


def inside(page, locator, what):
    view = visible_box(page)
    b = locator.bounding_box()
    assert b is not None, f"{what} is not shown"
    assert (b["x"] >= view["left"] - 1 and b["y"] >= view["top"] - 1
            and b["x"] + b["width"] <= view["right"] + 1 and b["y"] + b["height"] <= view["bottom"] + 1), \
        f"{what} {b} is not inside the notebook's visible area {view} without scrolling"


def test_controls_heatmap_readout_and_the_grids_first_row_fit_the_screen(shown):
    nb, root, (width, height) = shown
    page = nb.page
    if os.environ.get("AW_SHOTS"):
        page.screenshot(path=f"{os.environ['AW_SHOTS']}/lab-{width}x{height}.png")
    inside(page, root.locator(".aw-layer"), "the layer slider")
    inside(page, root.locator(".aw-head"), "the head slider")
    inside(page, root.locator(".aw-plot-host").first, "the heatmap")
    inside(page, root.locator(".aw-readout"), "the readout")
    for head in range(9):  # every head column of the first layer: the last is not cut off
        cell = root.locator(f'.aw-grid-cell[data-layer="0"][data-head="{head}"]')
        inside(page, cell, f"grid cell 0/{head}")
    grid = root.locator(".aw-grid")
    assert grid.evaluate("(g) => g.scrollWidth <= g.clientWidth"), "the grid scrolls sideways"


def test_the_prompt_box_sits_under_the_controls_not_at_the_bottom(shown):
    nb, root, _ = shown
    prompt = root.locator(".aw-prompt-text").bounding_box()
    heatmap = root.locator(".aw-plot-host").first.bounding_box()
    assert prompt["y"] < heatmap["y"], "the prompt box is below the heatmap"
    inside(nb.page, root.locator(".aw-prompt-text"), "the prompt box")


def test_mean_of_heads_does_not_move_the_heatmap(shown):
    nb, root, _ = shown
    before = root.locator(".aw-plot-host").first.bounding_box()
    root.locator(".aw-mean").check()
    nb.page.wait_for_function("(el) => el.classList.contains('aw-is-mean')", arg=root.element_handle())
    root.locator(".aw-mean-caveat").wait_for(state="visible")
    after = root.locator(".aw-plot-host").first.bounding_box()
    root.locator(".aw-mean").uncheck()
    assert (before["x"], before["y"]) == (after["x"], after["y"]), (before, after)
