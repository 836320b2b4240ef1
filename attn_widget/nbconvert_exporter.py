"""``jupyter nbconvert --to attn_html``: HTML copies of notebooks with each live attention widget
replaced by an interactive offline snapshot (see :mod:`attn_widget.nbexport` for the design).

::

    jupyter nbconvert --to attn_html --execute notebook.ipynb   # runs it: every widget, fully
    jupyter nbconvert --to attn_html notebook.ipynb             # as saved: from saved widget state
    jupyter nbconvert --to attn_html --execute --SnapshotExecutePreprocessor.budget_mb=25 nb.ipynb

Registered with nbconvert through the ``nbconvert.exporters`` entry point ``attn_html``; from
Python, :func:`export_notebook`. Needs nbconvert (``pip install nbconvert``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbformat
from nbconvert.exporters import HTMLExporter
from nbconvert.preprocessors import ExecutePreprocessor, Preprocessor
from traitlets import Bool, Float, List

from .nbexport import (
    SNAPSHOTS_MIMETYPE,
    WIDGET_STATE_MIMETYPE,
    WIDGET_VIEW_MIMETYPE,
    is_attention_state,
    page_from_state,
    probe_source,
)
from .storage import write_atomically

RESOURCE = "attn_widget_snapshots"
"""Where the executed kernel's snapshots travel between the two preprocessors (``resources``)."""


class SnapshotExecutePreprocessor(ExecutePreprocessor):
    """nbconvert's ExecutePreprocessor (``--execute`` and every ``ExecutePreprocessor`` option
    apply), which after the last cell asks the kernel for a snapshot of each displayed attention
    widget, in an extra cell that is taken out of the notebook again."""

    budget_mb = Float(10.0, help="Largest snapshot page per widget, in MB (10^6 bytes).").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        language = (nb.metadata.get("kernelspec", {}).get("language")
                    or nb.metadata.get("language_info", {}).get("name") or "python")
        if language != "python":
            return super().preprocess(nb, resources, km)
        probe = nbformat.v4.new_code_cell(probe_source(self.budget_mb))
        nb.cells.append(probe)
        try:
            nb, resources = super().preprocess(nb, resources, km)
        finally:
            if nb.cells and nb.cells[-1] is probe:
                nb.cells.pop()
        found: dict[str, Any] = {}
        for output in probe.get("outputs", []):
            if output.get("output_type") == "error":
                self.log.warning("attn_widget: the kernel could not make snapshots: %s: %s",
                                 output.get("ename"), output.get("evalue"))
            found.update(output.get("data", {}).get(SNAPSHOTS_MIMETYPE, {}))
        resources[RESOURCE] = found
        return nb, resources


class SnapshotPreprocessor(Preprocessor):
    """Puts a snapshot (``text/html``: an iframe holding the page) in place of each attention
    widget's view, from the executed kernel's snapshots or else from the notebook's saved widget
    state, and drops those widgets' saved state (megabytes the page would carry, and the reason
    it loads a widget manager from a CDN)."""

    enabled = Bool(True).tag(config=True)

    def preprocess(self, nb, resources):
        from .snapshot import StaticSnapshot

        saved = nb.metadata.get("widgets", {}).get(WIDGET_STATE_MIMETYPE, {}).get("state", {})
        ours = {k for k, entry in saved.items() if is_attention_state(entry)}
        executed = resources.get(RESOURCE, {})
        pages: dict[str, str | None] = {}
        replaced = missing = 0
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                view = output.get("data", {}).get(WIDGET_VIEW_MIMETYPE)
                model_id = view.get("model_id") if isinstance(view, dict) else None
                if model_id is None or (model_id not in executed and model_id not in ours):
                    missing += "attn-widget-offline" in str(output.get("data", {}).get("text/html", ""))
                    continue
                if model_id not in pages:
                    pages[model_id] = self._page(model_id, executed, saved)
                if pages[model_id] is None:
                    continue
                output["data"] = {"text/html": StaticSnapshot(pages[model_id])._repr_html_(),
                                  "text/plain": output["data"].get("text/plain", "")}
                replaced += 1
        for model_id in ours | _parts_of(ours, saved):
            saved.pop(model_id)
        if ours and not saved:
            nb.metadata["widgets"].pop(WIDGET_STATE_MIMETYPE)
            if not nb.metadata["widgets"]:
                nb.metadata.pop("widgets")
        if missing:
            self.log.warning("attn_widget: %d attention widget view(s) had neither a running kernel nor "
                             "saved widget state to copy; they show a note. Export with --execute to "
                             "include them.", missing)
        self.log.info("attn_widget: %d widget view(s) replaced by offline snapshots", replaced)
        return nb, resources

    def _page(self, model_id: str, executed: dict[str, Any], saved: dict[str, Any]) -> str | None:
        got = executed.get(model_id)
        if got and "page" in got:
            return got["page"]
        if got:
            self.log.warning("attn_widget: no snapshot of widget %s: %s", model_id, got.get("error"))
        if model_id in saved:
            try:
                return page_from_state(saved[model_id])
            except ValueError as e:
                self.log.warning("attn_widget: no snapshot of widget %s: %s", model_id, e)
        return None


def _references(value: Any) -> set[str]:
    """Model ids a saved widget state refers to (``"IPY_MODEL_<id>"``, at any depth)."""
    if isinstance(value, str):
        return {value[10:]} if value.startswith("IPY_MODEL_") else set()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value))
    return set()


def _parts_of(ours: set[str], saved: dict[str, Any]) -> set[str]:
    """The widgets only ``ours`` refer to (their Layout models), directly or through one another."""
    parts, todo = set(), set().union(*(_references(saved[k].get("state")) for k in ours))
    while todo:
        parts |= todo
        todo = set().union(*(_references(saved[k].get("state")) for k in todo if k in saved)) - parts - ours
    kept = set(saved) - ours - parts
    shared = set().union(*(_references(saved[k].get("state")) for k in kept))
    return {k for k in parts if k in saved and k not in shared}


class AttentionHTMLExporter(HTMLExporter):
    """HTML export (``--to attn_html``) with each attention widget as an offline snapshot."""

    export_from_notebook = "HTML with attention snapshots"
    default_preprocessors = List([
        *(SnapshotExecutePreprocessor if p == "nbconvert.preprocessors.ExecutePreprocessor" else p
          for p in HTMLExporter.class_traits()["default_preprocessors"].default()),
        SnapshotPreprocessor]).tag(config=True)


def export_notebook(notebook: str | os.PathLike, out: str | os.PathLike | None = None, *,
                    execute: bool = False, budget_mb: float = 10.0, timeout: int = 600) -> Path:
    """Write ``notebook`` as HTML (default: beside it, ``.html``) with each attention widget as an
    offline snapshot: what ``jupyter nbconvert --to attn_html [--execute]`` does. ``execute`` runs
    the notebook first, in its own folder (every widget then snapshotted in full). Returns the
    path written (atomically)."""
    from traitlets.config import Config

    src = Path(notebook)
    out = src.with_suffix(".html") if out is None else Path(out)
    config = Config({"ExecutePreprocessor": {"enabled": bool(execute), "timeout": int(timeout)},
                     "SnapshotExecutePreprocessor": {"budget_mb": float(budget_mb)}})
    exporter = AttentionHTMLExporter(config=config)
    nb = nbformat.read(src, as_version=4)
    where = {"metadata": {"path": str(src.parent.resolve()), "name": src.stem}}
    body, _ = exporter.from_notebook_node(nb, resources=where)
    return write_atomically(out, lambda f: f.write(body.encode("utf-8")), "exported notebook")
