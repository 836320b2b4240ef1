"""Helpers for the browser tests: Chromium pages, a JupyterLab server handle, a notebook driver."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("ATTN_WIDGET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running JupyterLab server and the folder it serves; ``stop()`` ends it and its kernels."""

    def __init__(self, root: Path, port: int, process: subprocess.Popen, log: Path):
        self.root, self.port, self.process, self.log = root, port, process, log
        self.url = f"http://127.0.0.1:{port}"

    def write_notebook(self, name: str, cells: list[str]) -> str:
        nb = {"nbformat": 4, "nbformat_minor": 5,
              "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                          "language": "python"}},
              "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None,
                         "outputs": [], "source": src} for i, src in enumerate(cells)]}
        (self.root / name).write_text(json.dumps(nb))
        return name

    def stop(self) -> None:
        """SIGTERM to the server's process group (it shuts its kernels down), then SIGKILL."""
        proc = self.process
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # kernels left in the group
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.wait(timeout=10)


def start_lab(base: Path, timeout: float = 90, app: str = "jupyterlab") -> Lab:
    """JupyterLab 4 (``app="notebook"``: Notebook 7, built on the same components) on 127.0.0.1
    (random free port, no token, --allow-root) serving ``base/notebooks``, with its own settings,
    workspaces, config and runtime folders under ``base``."""
    root, settings = base / "notebooks", base / "settings"
    root.mkdir(parents=True)
    # No news popup: it would ask for the network and cover the page.
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
           "JUPYTER_CONFIG_DIR": str(base / "config"), "PYTHONUNBUFFERED": "1"}
    log = base / "lab.log"
    name = {"jupyterlab": "LabApp", "notebook": "JupyterNotebookApp"}[app]
    cmd = [sys.executable, "-m", app, "--no-browser", "--allow-root", "--ip=127.0.0.1",
           f"--port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
           "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
           f"--ServerApp.root_dir={root}", f"--{name}.user_settings_dir={settings}",
           f"--{name}.workspaces_dir={base / 'workspaces'}", "--LabServerApp.extension_manager=readonly"]
    if app == "jupyterlab":
        cmd.append("--LabApp.news_url=None")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Lab(root, port, proc, log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{server.url}/api/status", timeout=2):
                    return server
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start in {timeout:g} s:\n"
                                       f"{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
    except BaseException:
        server.stop()
        raise


def new_page(browser, width=1400, height=1000, color_scheme="light"):
    """A page in its own browser context that records dialogs (dismissed), console errors and
    page errors in ``page.events``. Close it with ``page.context.close()``."""
    ctx = browser.new_context(viewport={"width": width, "height": height}, color_scheme=color_scheme)
    page = ctx.new_page()
    page.events = {"dialogs": [], "console_errors": [], "page_errors": []}
    page.on("dialog", lambda d: (page.events["dialogs"].append(d.message), d.dismiss()))
    page.on("console", lambda m: m.type == "error" and page.events["console_errors"].append(m.text))
    page.on("pageerror", lambda e: page.events["page_errors"].append(str(e)))
    return page


_STEADY_IDLE = """() => {
  const status = document.querySelector(".jp-Notebook-ExecutionIndicator")?.dataset.status;
  const now = performance.now();
  if (status !== window.__awKernelStatus) {
    window.__awKernelStatus = status;
    window.__awKernelSince = now;
  }
  return status === "idle" && now - window.__awKernelSince > 2000;
}"""


class NotebookPage:
    """A notebook open in JupyterLab, driven like a user: select a cell, press Ctrl+Enter."""

    def __init__(self, page, lab: Lab, name: str, app: str = "jupyterlab"):
        self.page = page
        page.goto(f"{lab.url}/lab/tree/{name}" if app == "jupyterlab" else f"{lab.url}/notebooks/{name}")
        page.wait_for_selector(".jp-Notebook .jp-Cell .jp-InputPrompt", timeout=90_000)
        # Keys pressed before the kernel is connected are lost: wait for "Idle" in the status bar
        # (JupyterLab) or on the toolbar's execution indicator (Notebook 7 has no status bar; its
        # indicator says idle for a moment before "connecting", so it must stay idle for 2 s).
        if app == "jupyterlab":
            page.wait_for_function(
                "() => /Idle/.test(document.querySelector('#jp-main-statusbar')?.textContent ?? '')",
                timeout=90_000)
        else:
            page.wait_for_function(_STEADY_IDLE, timeout=90_000, polling=100)

    def cell(self, i: int):
        return self.page.locator(".jp-Notebook .jp-Cell").nth(i)

    def run(self, i: int, timeout: float = 180_000) -> str:
        """Run cell ``i`` and wait for it to finish; its output text. A traceback fails the test."""
        cell = self.cell(i)
        prompt = cell.locator(".jp-InputPrompt")
        cell.scroll_into_view_if_needed()
        before = prompt.inner_text()
        prompt.click()
        self.page.keyboard.press("Control+Enter")
        self.page.wait_for_function(
            "([el, before]) => /\\[\\d+\\]/.test(el.textContent) && el.textContent !== before",
            arg=[prompt.element_handle(), before], timeout=timeout, polling=100)
        text = cell.locator(".jp-OutputArea").inner_text()
        if "Traceback" in text or "Error" in text.split("\n")[0]:
            raise AssertionError(f"cell {i} failed:\n{text[-3000:]}")
        return text

    def widget(self, i: int):
        """The attn_widget root in cell ``i``'s output, once it has painted."""
        root = self.cell(i).locator(".jp-OutputArea-output .aw-root").last
        root.wait_for(timeout=60_000)
        self.page.wait_for_function("el => Number(el.dataset.paints || 0) > 0", arg=root.element_handle(),
                                    timeout=60_000)
        return root


def hover_heatmap(page, root, fx: float = 0.42, fy: float = 0.8) -> dict:
    """Hover the first heatmap under ``root`` at a fraction of its box; what the tooltip says:
    ``{"q", "k", "query", "key", "weight", "text"}`` (token texts as displayed: ␣ ⏎ ⇥)."""
    import re

    host = root.locator(".aw-plot-host").first
    host.scroll_into_view_if_needed()
    box = host.bounding_box()
    page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    tooltip = root.locator(".aw-tooltip:not(.aw-bar-tip)")  # the heatmap's, not the step bars
    tooltip.wait_for(state="visible", timeout=10_000)
    text = tooltip.inner_text()
    m = re.search(r'query (\d+) "(.*)" → key (\d+) "(.*)"\s+weight ([-\d.e]+)', text, re.S)
    if not m:
        raise AssertionError(f"the tooltip does not name query, key and weight: {text!r}")
    return {"q": int(m.group(1)), "query": m.group(2), "k": int(m.group(3)), "key": m.group(4),
            "weight": float(m.group(5)), "text": text}


def displayed(token: str) -> str:
    """A token as the widget's readouts show it: visible newline, tab and leading space."""
    shown = token.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎").replace("\t", "⇥")
    return "␣" + shown[1:] if shown.startswith(" ") else shown


@contextlib.contextmanager
def lab_and_browser():
    """A private JupyterLab and a headless Chromium, both stopped on the way out (for benchmarks)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="attn-bench-") as tmp:
        lab = start_lab(Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    yield lab, browser
                finally:
                    browser.close()
        finally:
            lab.stop()
