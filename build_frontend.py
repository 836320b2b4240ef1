"""Bundle the front end (``js/``) into ``attn_widget/static/`` while Python builds the package.

hatch-jupyter-builder calls :func:`build` for every wheel, sdist and editable install
(``[tool.hatch.build.hooks.jupyter-builder]`` in pyproject.toml). It runs
``npm ci && npm run build`` in ``js/`` only when a bundle file is missing or older than one of
its inputs, so repeated and editable installs do not run npm again for nothing; a wheel built
from an sdist that already carries a fresh bundle needs no npm at all. Can also be run by hand:
``python build_frontend.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
JS = ROOT / "js"
# What `npm run build` reads (the Makefile's bundle rule lists the same): a change to any of
# them makes the bundle stale.
INPUTS = ("package.json", "package-lock.json", "scripts", "src")


def _newest_input() -> float:
    files = [p for name in INPUTS for p in ([JS / name] if (JS / name).is_file()
                                             else (JS / name).rglob("*")) if p.is_file()]
    if not files:
        raise FileNotFoundError(f"no front-end sources under {JS}: cannot build {INPUTS}")
    return max(p.stat().st_mtime for p in files)


def is_stale(targets: Sequence[str]) -> bool:
    """True when a target is missing or older than the newest input."""
    paths = [ROOT / t for t in targets]
    if not all(p.is_file() for p in paths):
        return True
    if not JS.is_dir():  # a wheel built from an sdist without js/: nothing to compare against
        return False
    return min(p.stat().st_mtime for p in paths) < _newest_input()


def build(target_name: str = "wheel", version: str = "standard", *, targets: Sequence[str] = ()) -> None:
    """hatch-jupyter-builder's build function: rebuild ``targets`` if stale."""
    if targets and not is_stale(targets):
        print(f"attn_widget front end is up to date ({', '.join(targets)})", file=sys.stderr)
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("building attn_widget's front end needs Node.js and npm (npm not found on "
                           f"PATH); it bundles js/ into {', '.join(targets) or 'attn_widget/static/'}")
    for args in (["ci", "--no-audit", "--no-fund", "--loglevel=error"], ["run", "--silent", "build"]):
        print(f"attn_widget front end: npm {' '.join(args)} (in js/)", file=sys.stderr)
        subprocess.run([npm, *args], cwd=JS, check=True)
