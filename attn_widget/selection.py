"""Selecting layers, heads and positions: one parser, one constant, one way to print them.

Capture, analysis, the widget and snapshots all take ``layers=``/``heads=`` and positions from
users. The rules live here so that every entry point accepts the same input and names a bad
value the same way.

>>> format_ranges([0, 1, 2, 3])
'0..3'
>>> format_ranges([1, 4, 7])
'1,4,7'
>>> check_index(-1, 5, "position")
4
>>> model_indices([0, -1], captured=(0, 1, 2), n_model=3, what="layers")
(0, 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

MEAN = -1
"""The head value that stands for the mean over a layer's captured heads (widget, payload keys)."""

Indices = int | Sequence[int] | None
"""Model layer or head indices: one, several, or None for every captured one."""


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for ``bool`` (``True`` is not layer 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_count(value: Any, what: str, *, minimum: int = 0, hint: str = "") -> int:
    """``value`` as an int; ``ValueError`` naming ``what`` (and ``hint``, why the bound) unless it is
    an integer ≥ ``minimum``."""
    if not is_int(value) or value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer ≥ {minimum}")
        raise ValueError(f"{what} must be {kind}{f' ({hint})' if hint else ''}; got {value!r}")
    return int(value)


def check_positive(value: Any, what: str, *, example: str = "") -> float:
    """``value`` as a float; ``ValueError`` naming ``what`` unless it is a finite number above 0
    (not a bool, a string, NaN or infinity). ``example`` shows an allowed value."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number above 0{f' (e.g. {example})' if example else ''}; "
                         f"got {value!r}")
    return float(value)


def index_list(value: Any, what: str) -> list[int] | None:
    """Layer or head indices as given, read once into a list (a generator or range is consumed
    here, one integer becomes ``[i]``), or None. ``TypeError`` naming ``what`` for anything that
    is not integers (a string, a bool, a float)."""
    if value is None:
        return None
    if is_int(value):
        return [int(value)]
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be an integer, a list of integers or None; got {value!r}")
    items = list(value)
    bad = [x for x in items if not is_int(x)]
    if bad:
        raise TypeError(f"{what} must be integers (model indices); got {bad[0]!r} in {items!r}")
    return [int(x) for x in items]


def check_index(i: Any, n: int, what: str) -> int:
    """Position ``i`` in a sequence of ``n`` (negative counts from the end), as a non-negative int.

    ``TypeError`` for a non-integer, ``IndexError`` naming the allowed range otherwise.
    """
    if not is_int(i):
        raise TypeError(f"{what} must be an integer; got {i!r}")
    j = int(i) + n if i < 0 else int(i)
    if not 0 <= j < n:
        raise IndexError(f"{what} {i} is out of range: allowed 0..{n - 1} (or negative from the end)")
    return j


def position_in(captured: Sequence[int], index: Any, what: str, block: str) -> int:
    """Where model ``what`` index ``index`` sits among the ``captured`` ones of ``block``."""
    if not is_int(index):
        raise TypeError(f"{what} must be an integer; got {index!r}")
    try:
        return tuple(captured).index(int(index))
    except ValueError:
        raise IndexError(f"{what} {index} was not captured in block {block!r}; captured {what}s: "
                         f"{format_ranges(captured)}") from None


def model_indices(wanted: Indices, captured: Sequence[int], n_model: int | None,
                  what: str) -> tuple[int, ...]:
    """Model indices asked for, in the order given (None: every ``captured`` one).

    Negative indices count from ``n_model`` (the model's layer or head count). Whether each one
    was captured is checked where it is looked up (:func:`position_in`).
    """
    if wanted is None:
        return tuple(captured)
    iterable = isinstance(wanted, Iterable) and not isinstance(wanted, (str, bytes))
    items = list(wanted) if iterable else [wanted]  # one index, or a bad value named below
    n = int(n_model) if n_model else max(captured) + 1
    out = []
    for x in items:
        if not is_int(x):
            raise TypeError(f"{what} must be integers (model indices); got {x!r}")
        out.append(int(x) + n if x < 0 else int(x))
    if not out:
        raise ValueError(f"{what} is empty; pass None for every captured one ({format_ranges(captured)})")
    return tuple(out)


def indices_below(wanted: Indices, n: int, what: str, kind: str) -> list[int]:
    """Sorted distinct indices in ``0..n-1`` (negative from the end) to capture; None: all ``n``.

    ``kind`` names the attention they belong to in the error (``self``, ``cross``…).
    """
    if wanted is None:
        return list(range(n))
    if is_int(wanted):
        wanted = [wanted]
    out = []
    for x in wanted:
        if not is_int(x) or not -n <= x < n:
            raise ValueError(f"{what} must be integers in 0..{n - 1} (or -{n}..-1 from the end) for "
                             f"this model's {kind} attention; got {x!r} in {list(wanted)!r}")
        out.append(int(x) % n)
    if not out:
        raise ValueError(f"{what} is empty; pass None for all {n}, or some of 0..{n - 1}")
    return sorted(set(out))


def format_ranges(xs: Sequence[int]) -> str:
    """``0..29`` for a run of consecutive indices, ``1,4,7`` otherwise."""
    xs = list(xs)
    if xs and xs == list(range(xs[0], xs[-1] + 1)):
        return f"{xs[0]}..{xs[-1]}" if len(xs) > 1 else str(xs[0])
    return ",".join(map(str, xs))


def format_head_list(pairs: Sequence[tuple[int, int]]) -> str:
    """``L0 H1, H4–H8; L3 H0–H8``: (layer, head) pairs grouped by layer, runs of heads joined."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in pairs:
        by_layer.setdefault(layer, []).append(head)
    groups = []
    for layer in sorted(by_layer):
        heads = sorted(by_layer[layer])
        runs, start = [], heads[0]
        for prev, cur in zip(heads, heads[1:] + [None]):
            if cur != prev + 1:
                runs.append(f"H{start}" if start == prev else f"H{start}–H{prev}")
                start = cur
        groups.append(f"L{layer} " + ", ".join(runs))
    return "; ".join(groups)
