"""Files and JSON shared by traces, snapshots and caches: atomic writes, the cache folder,
JSON-safe values."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def cache_dir() -> Path:
    """Where converted models and figure skeletons are kept: ``$ATTN_WIDGET_CACHE`` or
    ``~/.cache/attn_widget``."""
    return Path(os.environ.get("ATTN_WIDGET_CACHE") or Path.home() / ".cache" / "attn_widget")


def write_atomically(path: str | os.PathLike, write, what: str) -> Path:
    """Write a file through ``write(f)`` into a temporary file beside it, then rename it.

    A reader never sees a half-written file, and a failure leaves any old file as it was.
    An unwritable place raises the ``OSError`` it gives, with one message naming ``what``,
    the path and the reason.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        reason = e.strerror or str(e)
        if isinstance(e, FileNotFoundError):
            reason = f"folder {str(directory)!r} does not exist"
        raise type(e)(f"cannot write {what} to {str(path)!r}: {reason}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make saved files private by surprise
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def jsonable(x: Any) -> Any:
    """``x`` with tuples as lists, numpy scalars as numbers and anything else not JSON as its repr."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, np.generic):
        return x.item()
    return repr(x)
