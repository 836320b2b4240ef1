"""Files and JSON shared by traces, snapshots and caches: atomic writes, the cache folder,
JSON-safe values, sizes in words."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def cache_dir() -> Path:
    """Where converted models and figure skeletons are kept: ``$ATTN_WIDGET_CACHE`` or
    ``~/.cache/attn_widget``."""
    return Path(os.environ.get("ATTN_WIDGET_CACHE") or Path.home() / ".cache" / "attn_widget")


def file_kind(mode: int) -> str:
    """What a ``stat`` mode is, in words: ``"a regular file"``, ``"a folder"``, ``"a FIFO (named
    pipe)"``…"""
    for test, words in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"),
                        (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "not a regular file"


def _write_target(path: Path) -> tuple[Path, os.stat_result | None]:
    """The file a write to ``path`` replaces (links followed), and its ``stat`` (None: a new file).

    Raises ``OSError`` (``IsADirectoryError`` for a folder) with the reason when the target is
    anything but a regular file or a new name.
    """
    target = Path(os.path.realpath(path))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target, None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "it is a folder")
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"it is {file_kind(st.st_mode)}, not a regular file; only regular files are "
                      "replaced, choose a file path")
    return target, st


def write_atomically(path: str | os.PathLike, write, what: str) -> Path:
    """Write a file through ``write(f)`` into a temporary file beside it, then rename it.

    A reader never sees a half-written file, and a failure (in ``write`` too) leaves any old file
    as it was. Only a regular file, or a name where nothing is yet, is replaced: a folder, a
    device, a FIFO or a socket at ``path`` is refused before anything is written. A symbolic link
    is followed: the file it points to is replaced (keeping its permissions) and the link stays.
    An unwritable place raises the ``OSError`` it gives, with one message naming ``what``, the
    path and the reason. Returns ``path``.
    """
    path = target = Path(path)

    def refuse(e: OSError) -> OSError:
        reason = e.strerror or str(e)
        if isinstance(e, FileNotFoundError):
            reason = f"folder {str(target.parent)!r} does not exist"
        return type(e)(f"cannot write {what} to {str(path)!r}: {reason}")

    try:
        target, before = _write_target(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise refuse(e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp's 0600 would make saved files private by surprise; a replaced file keeps its mode
        os.chmod(tmp, 0o644 if before is None else stat.S_IMODE(before.st_mode))
        try:
            _write_target(path)  # checked again just before the rename: it may have changed
        except OSError as e:
            raise refuse(e) from None
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def format_bytes(n: float) -> str:
    """A size in the unit that suits it: ``512 bytes``, ``1.50 KiB``, ``12.3 MiB``, ``142 GiB``."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            break
        n /= 1024
    if unit == "bytes":
        return f"{n:.0f} bytes"
    return f"{n:.2f} {unit}" if abs(n) < 10 else f"{n:.1f} {unit}" if abs(n) < 100 else f"{n:.0f} {unit}"


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
