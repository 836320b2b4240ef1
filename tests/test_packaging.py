"""The package as pip installs it: the sdist and wheel carry the built front end, and the wheel,
installed into a fresh venv, draws a widget and writes a snapshot that paints in Chromium.

``make test`` runs ``make dist`` first and points ``ATTN_WIDGET_DIST`` at its folder; run alone,
the module builds both with ``python -m build`` (the wheel from the sdist, as pip does). The
fresh venv reuses the dev venv's installed packages (torch included) through a ``.pth`` line, so
nothing is downloaded, and it sees the installed wheel, not this source tree. Deselect with
``-m "not packaging"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from browser.browser_support import CHROMIUM

import attn_widget as aw

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parent.parent
BROWSER_HELPERS = ROOT / "tests" / "browser"
FRONT_END = ("attn_widget/static/widget.js", "attn_widget/static/snapshot.js",
             "attn_widget/static/snapshot.css")

# Run by the fresh venv's python: a widget from a tiny trace, its snapshot, and where things came from.
DRAW = """
import json, sys
import numpy as np
import attn_widget as aw

rng = np.random.default_rng(0)
t = 12
logits = rng.normal(0, 2, (2, 3, t, t))
logits[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] = -np.inf
a = np.exp(logits - logits.max(-1, keepdims=True))
a /= a.sum(-1, keepdims=True)
trace = aw.AttentionTrace.from_dense(a, [f"w{i} " for i in range(t)], prompt_len=8, model_name="toy")
widget = aw.AttentionWidget(trace)
widget.save_html(sys.argv[1])
print(json.dumps({"file": aw.__file__, "torch": "torch" in sys.modules}))
"""

# Run by the dev venv's python: open the page from file:// in Chromium with every other request
# refused, and wait for the heatmap's first paint.
PAINT = """
import json, sys
from browser_support import CHROMIUM, CHROMIUM_ARGS, new_page
from playwright.sync_api import sync_playwright

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = new_page(browser)
    blocked = []
    page.context.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:")
                       else (blocked.append(r.request.url), r.abort()))
    page.goto(sys.argv[1])
    page.wait_for_function("document.documentElement.dataset.snapshotReady === '1'", timeout=60_000)
    page.wait_for_function("Number(document.querySelector('.aw-root').dataset.paints || 0) > 0",
                           timeout=60_000)
    print(json.dumps({"painted": True, "page_errors": page.events["page_errors"], "blocked": blocked}))
    browser.close()
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The folder holding the sdist and wheel: ``make dist``'s, or built here."""
    if os.environ.get("ATTN_WIDGET_DIST"):
        return Path(os.environ["ATTN_WIDGET_DIST"])
    folder = tmp_path_factory.mktemp("dist")
    out = subprocess.run([sys.executable, "-m", "build", "--outdir", str(folder), str(ROOT)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return folder


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {folder}, found {[p.name for p in found]}"
    return found[0]


@pytest.fixture(scope="module")
def wheel(dist) -> Path:
    return only(dist, f"attn_widget-{aw.__version__}-py3-none-any.whl")


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> dict:
    """A fresh venv holding the wheel; the dev venv's site-packages (torch, transformers, bokeh,
    ...) come after its own, but not the dev venv's .pth files (the editable install)."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], check=True)
    python = root / "env" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dev_venv_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["HF_HUB_OFFLINE"] = "1"
    # pip comes from the dev venv's packages; --ignore-installed: install here even though the
    # dev venv's editable attn-widget is visible on sys.path.
    out = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                          "--ignore-installed", "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr
    return {"python": python, "bin": root / "env" / "bin", "site": site, "env": env, "cwd": root}


def test_wheel_carries_the_built_front_end_and_the_typing_marker(wheel):
    with zipfile.ZipFile(wheel) as z:
        sizes = {i.filename: i.file_size for i in z.infolist()}
    assert {name: sizes.get(name, 0) > 0 for name in FRONT_END} == dict.fromkeys(FRONT_END, True)
    assert "attn_widget/py.typed" in sizes
    assert not [n for n in sizes if n.startswith(("js/", "tests/")) or "node_modules" in n]


def test_wheel_metadata_names_version_classifiers_and_no_placeholder(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"attn_widget-{aw.__version__}.dist-info/METADATA").decode()
        entry_points = z.read(f"attn_widget-{aw.__version__}.dist-info/entry_points.txt").decode()
    assert f"\nVersion: {aw.__version__}\n" in meta
    assert "\nRequires-Python: >=3.10\n" in meta
    assert "\nClassifier: Typing :: Typed\n" in meta and "\nClassifier: Framework :: Jupyter\n" in meta
    assert "attn-widget = attn_widget.cli:main" in entry_points
    headers = meta.split("\n\n", 1)[0].lower()
    assert not [word for word in ("example.com", "todo", "placeholder", "your-") if word in headers]


def test_sdist_carries_front_end_sources_but_not_node_modules_or_generated_code(dist):
    with tarfile.open(only(dist, f"attn_widget-{aw.__version__}.tar.gz")) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"js/package.json", "js/package-lock.json", "js/src/index.js", "js/scripts/wasm.mjs",
            "build_frontend.py", *FRONT_END} <= names
    assert not [n for n in names if "node_modules" in n or n.startswith("js/gen/")]


def test_installed_wheel_is_what_imports_and_its_command_reports_the_version(venv):
    out = subprocess.run([str(venv["bin"] / "attn-widget"), "--version"], capture_output=True, text=True,
                         env=venv["env"], cwd=venv["cwd"], check=True)
    assert out.stdout == f"attn-widget {aw.__version__}\n"
    where = subprocess.run([str(venv["python"]), "-c", "import attn_widget; print(attn_widget.__file__)"],
                           capture_output=True, text=True, env=venv["env"], cwd=venv["cwd"], check=True)
    assert Path(where.stdout.strip()).is_relative_to(venv["site"])


def test_installed_wheel_writes_a_snapshot_that_paints_in_chromium(venv, tmp_path):
    html = tmp_path / "installed.html"
    out = subprocess.run([str(venv["python"]), "-c", DRAW, str(html)], capture_output=True, text=True,
                         env=venv["env"], cwd=venv["cwd"], timeout=300)
    assert out.returncode == 0, out.stderr
    drawn = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(drawn["file"]).is_relative_to(venv["site"]) and drawn["torch"] is False
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set ATTN_WIDGET_CHROMIUM)")
    # Its own process: the browser tests' session-wide Playwright may be running in this one.
    shown = subprocess.run([sys.executable, "-c", PAINT, html.as_uri()], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(BROWSER_HELPERS)}, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout.strip().splitlines()[-1]) == {"painted": True, "page_errors": [],
                                                                 "blocked": []}
