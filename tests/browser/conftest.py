"""Browser fixtures: Debian Chromium through Playwright, and a private JupyterLab server.

``browser`` is a plain Chromium (reused by the snapshot tests); ``lab`` is a JupyterLab on
127.0.0.1 with a random free port, no token, its own settings/workspace/runtime folders, and a
notebook folder under pytest's tmp_path. Everything started here is stopped at teardown, also
when a test fails. A failing test's page screenshot is kept under ``artifacts/browser/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, NotebookPage, new_page, start_lab

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    """A headless Debian Chromium, shared by the session's tests."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set ATTN_WIDGET_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """JupyterLab 4 serving a fresh folder on 127.0.0.1 (random free port, no token, --allow-root)."""
    server = start_lab(tmp_path_factory.mktemp("lab"))
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for page in getattr(item, "_pages", []):
            try:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"{item.name}-{id(page)}.png"), full_page=True)
            except Exception:  # the page may be gone; the failure itself is what matters
                pass


@pytest.fixture
def page_for(browser, request):
    """page_for(**new_page options) -> a page closed after the test; kept as a screenshot on failure."""
    pages = []
    request.node._pages = pages

    def open_page(**kwargs):
        pages.append(new_page(browser, **kwargs))
        return pages[-1]

    yield open_page
    for page in pages:
        page.context.close()


@pytest.fixture
def open_notebook(lab, page_for):
    """open_notebook(name, cells) -> NotebookPage on a fresh page (and kernel)."""

    def open_it(name: str, cells: list[str], **page_kwargs) -> NotebookPage:
        lab.write_notebook(name, cells)
        return NotebookPage(page_for(**page_kwargs), lab, name)

    return open_it
