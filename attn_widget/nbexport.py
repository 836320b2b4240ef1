"""Exported notebooks: an interactive offline snapshot in place of each live widget.

A live :class:`~attn_widget.widget.AttentionWidget` is drawn by a widget manager: in an HTML
copy of a notebook (``jupyter nbconvert --to html``) that manager comes from a CDN, so offline the
widget shows nothing. The fix has three parts:

- the kernel side (here): each displayed widget registers itself, and its display carries a
  small ``text/html`` note (about 600 bytes, never the attention) that says how to export it;
  plain ``nbconvert --to html`` shows that note wherever it cannot draw the widget;
- the exporter (:mod:`attn_widget.nbconvert_exporter`, ``--to attn_html``): with
  ``--execute`` it asks the kernel, after the last cell, for each registered widget's snapshot
  (:func:`send_snapshots`, the same page as ``widget.static()``) and puts it in place of the
  widget; without ``--execute`` it builds one from the widget state saved in the notebook
  (:func:`page_from_state`: JupyterLab's "Save Widget State Automatically", or a notebook
  executed by nbclient), which holds what the view had been sent;
- the notebook itself stays small: snapshots live only in the exported HTML.

The command users run::

    jupyter nbconvert --to attn_html --execute notebook.ipynb
"""

from __future__ import annotations

import base64
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SNAPSHOTS_MIMETYPE = "application/vnd.attn-widget.snapshots+json"
"""What :func:`send_snapshots` displays: ``{model_id: {"page": html} or {"error": message}}``."""
WIDGET_VIEW_MIMETYPE = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE_MIMETYPE = "application/vnd.jupyter.widget-state+json"
EXPORT_COMMAND = "jupyter nbconvert --to attn_html --execute notebook.ipynb"
OUR_TRAITS = frozenset({"_payload", "_figures", "_blocks"})
"""Synced traits that mark a saved widget state as an AttentionWidget's."""
_FETCH_FIELDS = ("type", "trace_id", "source", "key")  # what a recorded reply is keyed by (PROTOCOL.md)

_displayed: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()

OFFLINE_NOTE = (
    '<div class="attn-widget-offline" style="border: 1px solid #ccc; padding: 6px 10px; '
    'font: 13px sans-serif; color: #444;">attn_widget: this attention view is live and needs its '
    "kernel (or a widget manager from the internet), so this copy cannot draw it. For an HTML copy "
    "that keeps it interactive offline, export with <code>" + EXPORT_COMMAND + "</code>; for one "
    "view, <code>widget.static()</code> or <code>widget.save_html(\"view.html\")</code>.</div>")
"""The ``text/html`` fallback in every widget's display (shown where the widget cannot be)."""


def register(widget) -> None:
    """Remember ``widget`` (weakly) as displayed, so an ``--execute`` export can snapshot it."""
    _displayed[widget.model_id] = widget


def displayed() -> list[str]:
    """Model ids of the displayed widgets still alive (closed ones included until freed)."""
    return list(_displayed)


def mimebundle(widget, bundle: Mapping[str, Any] | tuple[Mapping[str, Any], Mapping[str, Any]] | None):
    """``bundle`` (a widget's ``_repr_mimebundle_``: data, or anywidget's ``(data, metadata)``)
    with the offline note as ``text/html``; registers the widget. None stays None (a closed
    widget displays nothing)."""
    if bundle is None:
        return None
    register(widget)
    if isinstance(bundle, tuple):
        data, metadata = bundle
        return {**data, "text/html": OFFLINE_NOTE}, metadata
    return {**bundle, "text/html": OFFLINE_NOTE}


def snapshots(budget_mb: float = 10.0) -> dict[str, dict[str, str]]:
    """``{model_id: {"page": html}}`` for every displayed widget still open (``{"error": …}``
    where its snapshot failed); the pages are those of ``widget.static(budget_mb=…)``."""
    from .snapshot import static

    out: dict[str, dict[str, str]] = {}
    for model_id, widget in list(_displayed.items()):
        if getattr(widget, "comm", None) is None:
            continue  # closed: its view shows nothing live either
        try:
            out[model_id] = {"page": static(widget, budget_mb=budget_mb).page}
        except Exception as e:  # one widget's failure is reported in its place, the export goes on
            out[model_id] = {"error": f"{type(e).__name__}: {e}"}
    return out


def send_snapshots(budget_mb: float = 10.0) -> None:
    """Display :func:`snapshots` as one :data:`SNAPSHOTS_MIMETYPE` output (the exporter runs this
    in the kernel after the last cell)."""
    from IPython.display import display

    display({SNAPSHOTS_MIMETYPE: snapshots(budget_mb)}, raw=True)


def probe_source(budget_mb: float) -> str:
    """Code for the exporter's extra cell: sends the snapshots when attn_widget's export side was
    imported in the kernel, does nothing (and imports nothing) otherwise."""
    return (f"(lambda m: m.send_snapshots({float(budget_mb)!r}) if m else None)"
            '(__import__("sys").modules.get("attn_widget.nbexport"))')


# --------------------------------------------------------------------------- saved widget state
def is_attention_state(entry: Mapping[str, Any]) -> bool:
    """Whether a saved widget state entry (``{"model_name", "state", "buffers"}``) is an
    AttentionWidget's."""
    state = entry.get("state") or {}
    names = set(state) | {tuple(b.get("path") or ("",))[0] for b in entry.get("buffers") or ()}
    return entry.get("model_name") == "AnyModel" and OUR_TRAITS <= names


def state_with_buffers(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The widget's synced traits from a saved state entry, binary traits (``_payload``) decoded
    from its base64 ``buffers``."""
    state = dict(entry.get("state") or {})
    for buf in entry.get("buffers") or ():
        path = list(buf.get("path") or ())
        if len(path) == 1 and buf.get("encoding", "base64") == "base64":
            state[path[0]] = base64.b64decode(buf["data"])
    return state


def page_from_state(entry: Mapping[str, Any], title: str | None = None) -> str:
    """An offline snapshot page (ASCII HTML, for an iframe ``srcdoc``) from a widget state saved in
    a notebook: the widget's own front end over what its view had been sent. A view sent every
    head (traces up to the widget's ``send_all_below``, 8 MiB of weights) is complete; otherwise
    heads it never showed answer that they need ``--execute``."""
    from .encoding import decode_payload
    from .figures import bokeh_source, figure_items
    from .snapshot.page import Page, ascii_html

    state = state_with_buffers(entry)
    payload = state.get("_payload")
    if not isinstance(payload, (bytes, bytearray)) or not payload:
        raise ValueError("the saved widget state holds no attention (_payload is empty: the widget was "
                         "closed, or its state was saved without buffers)")
    header = decode_payload(payload)[0]
    source = header["sources"][0]
    model = (source.get("model") or {}).get("name", "attention")
    title = title or f"{model}: attention, from the notebook's saved widget state"
    page = Page(title, portable=True, request_fields=_FETCH_FIELDS, echo_fields=("id",), unanswered={
        "fetch": {"content": {"type": "error"}, "copy": ["trace_id", "source", "key"],
                  "message": "{key} is not in this copy: the notebook's saved widget state holds only "
                  f"what the view had been sent; export with {EXPORT_COMMAND} to include every head"},
        "*": {"content": {"type": "error"}, "copy": [],
              "message": "{type} needs a live kernel; this is an offline copy of the notebook"}})
    page.scripts = [page.add_bytes(bokeh_source())]
    page.esm = page.add_text(widget_source())  # the installed front end reads this payload
    state = {k: v for k, v in state.items() if k not in ("_esm", "_css", "_bokeh_js", "_anywidget_id")}
    state["_live"] = False  # no kernel to run a prompt
    # Bokeh's serialised skeletons must keep their key order (a model is defined before it is
    # referred to), and notebooks are saved with sorted keys: they are built afresh for the view.
    state["_figures"] = figure_items(max(s["n_queries"] for s in header["sources"]),
                                     compact=len(header["sources"]) > 1,
                                     n_keys=max(s["n_keys"] for s in header["sources"]))
    if state.get("block"):
        state["_blocks"] = [state["block"]]  # switching blocks re-encodes in a kernel
    page.add_state(state, itemsize=lambda name: 2 if name == "_payload" else 1)
    complete = " Every head is in it." if header.get("complete") else (
        " Heads the view had not fetched are not in it; export with --execute for those.")
    page.header_html = (f'<header class="aw-snap-head"><h1>{ascii_html(title)}</h1><p>Offline copy of a '
                        f"live widget, rebuilt from the notebook's saved widget state.{complete}</p>"
                        "</header>")
    return page.render().decode("ascii")


def widget_source() -> str:
    """The installed widget front end (``attn_widget/static/widget.js``)."""
    path = Path(__file__).parent / "static" / "widget.js"
    if not path.is_file():
        raise RuntimeError(f"attn_widget's front end is not built ({path} is missing). Build it from the "
                           "repository root with: cd js && npm ci && npm run build")
    return path.read_text(encoding="utf-8")
