"""The package's shape: files a reader can hold in one sitting, public seams, imports one way.

These guard the layout described in README.md ("Layout") and DESIGN.md: modules share code
through public names only, no module-level import cycle, and no file grows past what one
sitting can read.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "attn_widget"
MAX_PY_LINES = 700
MAX_JS_LINES = 500


def _modules() -> dict[str, Path]:
    """``attn_widget.x.y`` → source path, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` in ``module`` reads from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str, path: Path, *, top_level_only: bool):
    """(imported module, imported names) for each import of the module (function bodies too,
    unless ``top_level_only``)."""
    tree = ast.parse(path.read_text("utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            yield _resolve(name, node, path.name == "__init__.py"), [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_no_python_module_is_longer_than_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text("utf-8").splitlines())) > MAX_PY_LINES}
    assert long == {}, f"split these by concern (more than {MAX_PY_LINES} lines)"


def test_no_front_end_module_is_longer_than_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "js" / "src").rglob("*.js")
            if (n := len(p.read_text("utf-8").splitlines())) > MAX_JS_LINES}
    assert long == {}, f"split these by concern (more than {MAX_JS_LINES} lines)"


def test_no_module_imports_a_private_name_from_another_module():
    modules = _modules()
    private = []
    for name, path in modules.items():
        for source, names in _imports(name, path, top_level_only=False):
            if not source.startswith("attn_widget") or source == name:
                continue
            private += [f"{name} imports {source}.{n}" for n in names
                        if n.startswith("_") and n != "__version__"]
            if any(part.startswith("_") for part in source.split(".")):
                private.append(f"{name} imports private module {source}")
    assert private == []


def test_no_module_reads_a_private_attribute_of_another_module_or_trace():
    # ``trace._sequence`` or ``widget._payload`` from outside the class that owns it: the owner
    # should offer a public method instead.
    reads = []
    owners = {"trace", "widget", "encoding", "snapshot", "analysis", "protocol", "figures"}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and node.value.id in owners and node.value.id != name.rsplit(".", 1)[-1]):
                reads.append(f"{name}: {node.value.id}.{node.attr} (line {node.lineno})")
    assert reads == []


def test_module_level_imports_have_no_cycle():
    modules = _modules()
    graph = {name: {src for src, names in _imports(name, path, top_level_only=True)
                    for src in [src, *(f"{src}.{n}" for n in names)] if src in modules and src != name}
             for name, path in modules.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return trail + [start]
                if nxt not in trail:
                    stack.append((nxt, trail + [nxt]))
        return None

    # A package's __init__ re-exporting its submodules is not a cycle through the package.
    cycles = [c for name in modules if (c := cycle_from(name)) and not
              any(a == b.rsplit(".", 1)[0] or b == a.rsplit(".", 1)[0] for a, b in zip(c, c[1:]))]
    assert cycles == []


def test_importing_the_package_and_a_saved_trace_does_not_import_torch():
    import subprocess
    import sys

    code = "import attn_widget, attn_widget.trace, attn_widget.analysis, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("folder", ["attn_widget", "notebooks", "js/src", "README.md", "js/PROTOCOL.md"])
def test_docs_and_code_name_rules_by_what_they_are_not_by_an_internal_word(folder):
    path = ROOT / folder
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and
                                          p.suffix in {".py", ".js", ".md", ".ipynb", ".css"}]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files
            for i, line in enumerate(p.read_text("utf-8").splitlines(), 1)
            if re.search(r"\bthe seed\b|\bseed's\b", line, re.IGNORECASE)]
    assert hits == [], "say what the rule is and cite the article or paper by name"
