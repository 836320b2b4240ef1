"""What a snapshot of a long trace holds: every head pooled at one stated resolution, and the
generated tokens' rows over the whole context at full resolution, under the size budget.

A long trace's widget never sends whole heads (``pool_side`` in its first payload, see
``js/PROTOCOL.md``, "Long traces"): the matrix shown is ``pool/<L>/<H>/<side>`` and the
generation scrubber's bars are the producing query's row, ``region/<L>/<H>/<q>/<q+1>/0/<q+1>``.
A snapshot records those same replies. Its resolution is chosen so that every head and layer
mean of every layer fits in about half the budget (never finer than the heatmap's own pixels);
the rest goes to step rows: the layer means' first, then the heads' in the order of importance.
Zooming in past the pooled resolution needs the live widget; the page says so.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..analysis.streaming import whole_head_pass
from ..selection import MEAN, format_head_list
from .page import ascii_html

POOLED_SHARE = 0.5
"""Part of the budget left after the page's fixed parts that pooled images may take."""


@dataclass(frozen=True)
class LongContent:
    """What went into a long trace's snapshot.

    pool_side : tokens a side of each pooled square (1 px = side × side tokens, the max).
    heads : (layer, head) pairs whose pooled image is in the file; left_out : those that did not fit.
    step_rows : (layer, head) pairs (head -1: the layer mean) whose generated tokens' rows are in
        the file at full resolution, in the order they were added.
    """

    pool_side: int
    heads: tuple[tuple[int, int], ...]
    left_out: tuple[tuple[int, int], ...]
    step_rows: tuple[tuple[int, int], ...]


def pool_side_for(n_queries: int, n_keys: int, n_images: int, budget_bytes: float, fixed_bytes: int,
                  frame_side: int) -> int:
    """The pooled resolution at which ``n_images`` float16 images fit in :data:`POOLED_SHARE` of
    what the budget leaves after ``fixed_bytes``; never finer than ``frame_side``."""
    share = POOLED_SHARE * (budget_bytes - fixed_bytes)
    if share <= 0:
        return 0
    cells = max(1, math.isqrt(int(share / (2 * n_images + 1))))  # squares a side
    return max(frame_side, math.ceil(max(n_queries, n_keys) / cells), 1)


def fixed_bytes(n_layers: int, n_heads: int, n_sources: int, thumb_size: int) -> int:
    """About what a page holds before any layer or head: BokehJS and the widget's code as the
    page stores them (compressed), and the grid."""
    return _code_bytes() + n_sources * n_layers * n_heads * (thumb_size * thumb_size + 40) + 100_000


@functools.lru_cache(maxsize=1)
def _code_bytes() -> int:
    from ..figures import bokeh_source

    widget_js = Path(__file__).resolve().parent.parent / "static" / "widget.js"
    code = [bokeh_source()] + ([widget_js.read_bytes()] if widget_js.exists() else [])
    return sum(len(zlib.compress(c if isinstance(c, bytes) else c.encode(), 6)) for c in code)


def step_queries(trace) -> list[int]:
    """The producing query of every generation step (the scrubber's rows)."""
    g0, g1 = trace.spans.get("generated", (0, 0))
    return [g0 + t - 1 for t in range(g1 - g0) if g0 + t - 1 >= 0]


@dataclass
class Unit:
    """Replies added together: a pooled image of every layer mean, one head's pooled image, or
    the step rows of one layer mean or head (``what``: "means", "head" or "rows")."""

    what: str
    item: tuple[int, int] | None
    added: list[tuple[int, str]]


def fill(trace, *, side: int, n_sources: int, candidates: Sequence[tuple[int, int]],
         in_payload: set[tuple[int, str]], add: Callable[[int, str], int],
         drop: Callable[[int, str], None], size: int, budget: float, too_small: Callable[[int], str],
         ) -> list[Unit]:
    """Record the pooled layer means (required), then the pooled heads in ``candidates`` order,
    then step rows (layer means first, then the included heads), each unit while it fits.

    ``add(source, key)`` records a reply and returns its bytes; ``drop`` takes back the last one.
    Returns the units added, in order (drop them from the end to shrink the page).
    """
    b = trace.block()
    # Every layer's heads and mean pooled in one pass each (the mean alone would recompute its
    # heads), kept in the block's cache until the replies below have read them.
    pixels = math.ceil(b.n_queries / side) * math.ceil(b.n_keys / side)
    cells = b.n_queries * b.n_keys // (2 if b.causal else 1)
    with b.cache_holding(len(b.layers) * (len(b.heads) + 1) * pixels * 4):
        with whole_head_pass(len(b.layers) * len(b.heads) * cells, "snapshot: pooling", None) as advance:
            for li in range(len(b.layers)):
                b.pooled_layer(li, side)
                advance(len(b.heads) * cells)
        return _fill_pooled(trace, b, side, n_sources, candidates, in_payload, add, drop, size, budget,
                            too_small)


def _fill_pooled(trace, b, side, n_sources, candidates, in_payload, add, drop, size, budget,
                 too_small) -> list[Unit]:
    pool = lambda layer, head: f"pool/{layer}/{'mean' if head == MEAN else head}/{side}"  # noqa: E731
    units: list[Unit] = []

    def put(what: str, item, keys: list[str]) -> bool:
        nonlocal size
        done, cost = [], 0
        for key in keys:
            for s in range(n_sources):
                if (s, key) not in in_payload:
                    cost += add(s, key)
                    done.append((s, key))
        if size + cost > budget:
            for s, key in reversed(done):
                drop(s, key)
            return False
        size += cost
        units.append(Unit(what, item, done))
        return True

    if not put("means", None, [pool(layer, MEAN) for layer in b.layers]):
        raise ValueError(too_small(size))
    heads = []
    for layer, head in candidates:
        if not put("head", (layer, head), [pool(layer, head)]):
            break
        heads.append((layer, head))
    queries = step_queries(trace)
    for layer, head in [(layer, MEAN) for layer in b.layers] + heads:
        h = "mean" if head == MEAN else head
        keys = [f"region/{layer}/{h}/{q}/{q + 1}/0/{q + 1 if b.causal else b.n_keys}" for q in queries]
        if not keys or not put("rows", (layer, head), keys):
            break
    return units


def content_of(units: Sequence[Unit], side: int, candidates: Sequence[tuple[int, int]]) -> LongContent:
    heads = tuple(u.item for u in units if u.what == "head")
    return LongContent(side, heads, tuple(c for c in candidates if c not in heads),
                       tuple(u.item for u in units if u.what == "rows"))


def unanswered_message(side: int, budget_mb: float) -> str:
    return (f"{{key}} is not in this snapshot: it holds every head pooled at 1 px = {side}×{side} tokens "
            f"and the generated tokens' rows at full resolution where they fit under {budget_mb:g} MB; "
            "zooming in to full resolution needs the live widget")


def header_lines(content: LongContent, trace, budget_mb: float) -> list[str]:
    """What the page says about the resolution of each view and what needs the live widget."""
    b = trace.block()
    side = content.pool_side
    n = len(content.heads) + len(content.left_out)
    lines = [f'<p class="aw-snap-resolution"><b>Long trace ({b.n_queries:,} tokens): heads are pooled, '
             f"1 px = {side}&#215;{side} tokens</b> (each pixel the strongest weight of its square, so "
             f"single strong weights stay visible); {len(content.heads)} of {n} heads and every layer "
             "mean are here at that resolution. Zooming in to full resolution needs the live widget.</p>"]
    means = [lay for lay, h in content.step_rows if h == MEAN]
    heads = [(lay, h) for lay, h in content.step_rows if h != MEAN]
    if step_queries(trace):
        where = (f"the layer means of {len(means)} of {len(b.layers)} layers"
                 + (f" and {len(heads)} heads ({ascii_html(format_head_list(heads))})" if heads else ""))
        lines.append('<p class="aw-snap-resolution">The generation scrubber\'s bars (each generated '
                     f"token's row over the whole context) are at full resolution for {where}; "
                     "other rows need the live widget.</p>" if means else
                     '<p class="aw-snap-left-out">The generated tokens\' rows did not fit under '
                     f"{budget_mb:g} MB: the scrubber's bars need the live widget (raise budget_mb).</p>")
    if content.left_out:
        lines.append(f'<p class="aw-snap-left-out">Left out to stay under {budget_mb:g} MB: '
                     f"{ascii_html(format_head_list(content.left_out))}.</p>")
    return lines
