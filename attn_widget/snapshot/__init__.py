"""Offline HTML snapshots: one self-contained file running the widget's own front end.

:func:`save_snapshot` writes one (or returns the page), :func:`static` shows one in an
iframe that survives a notebook's HTML export. :mod:`.writer` chooses what goes in under the
size budget; :mod:`.page` lays the page out.
"""

from .writer import MB, Snapshot, StaticSnapshot, save_snapshot, static

__all__ = ["MB", "Snapshot", "StaticSnapshot", "save_snapshot", "static"]
