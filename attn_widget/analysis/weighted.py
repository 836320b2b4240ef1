"""Where the attention weights and value-weighted attention disagree.

A head's weight ``α_ij`` says where it looked; ``α_ij ‖f_h(x_j)‖`` (Kobayashi et al. 2020,
:mod:`attn_widget.valuenorms`), renormalised over each row, says how much of what it moved came
from each token. They part where a token takes weight but contributes a short vector (an
attention sink, a delimiter) or the reverse. :func:`weighting_shift` lists the heads and tokens
where they part most.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..selection import Indices, check_index, format_ranges
from ..trace import AttentionTrace
from .engine import query_row, select_layers_heads
from .headstats import head_stats


@dataclasses.dataclass(eq=False)
class WeightingShift:
    """Each key's share of attention, raw and value-weighted (:func:`weighting_shift`).

    Attributes
    ----------
    position : the query read, or None for the mean over every query (queries that cannot see a
        key count as 0, so each head's shares sum to 1 over keys).
    raw : ndarray of shape (n_layers, n_heads, n_keys), the share of each key under ``α``.
    weighted : the same under ``α_ij ‖f_h(x_j)‖``, each row renormalised.
    head_shift : ndarray of shape (n_layers, n_heads), ``½ Σ_j |weighted − raw|``: how much of a
        head's attention moves between keys (0: none, 1: all of it).
    token_shift : ndarray of shape (n_keys,), ``weighted − raw`` averaged over heads and layers:
        what each key gains (> 0) or loses (< 0).
    layers, heads : model indices of the heads read.
    tokens : display text of every key position.
    """

    position: int | None
    raw: np.ndarray
    weighted: np.ndarray
    head_shift: np.ndarray
    token_shift: np.ndarray
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    tokens: list[str]

    def top_heads(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads whose attention moves most, as (layer, head, head_shift)."""
        order = np.argsort(-self.head_shift, axis=None, kind="stable")[:k]
        n = self.head_shift.shape[1]
        return [(self.layers[i // n], self.heads[i % n], float(self.head_shift.flat[i])) for i in order]

    def losses(self, k: int = 5) -> list[tuple[int, str, float, float]]:
        """The ``k`` keys that lose most, as (position, token, raw share, value-weighted share),
        shares averaged over heads and layers."""
        return self._keys(np.argsort(self.token_shift, kind="stable")[:k], lambda s: s < 0)

    def gains(self, k: int = 5) -> list[tuple[int, str, float, float]]:
        """The ``k`` keys that gain most, as (position, token, raw share, value-weighted share)."""
        return self._keys(np.argsort(-self.token_shift, kind="stable")[:k], lambda s: s > 0)

    def _keys(self, order: np.ndarray, keep) -> list[tuple[int, str, float, float]]:
        raw, weighted = self.raw.mean(axis=(0, 1)), self.weighted.mean(axis=(0, 1))
        return [(int(p), self.tokens[p], float(raw[p]), float(weighted[p])) for p in order
                if keep(self.token_shift[p])]

    def summary(self) -> str:
        def listing(rows):
            return ", ".join(f"{p} {t!r} {r:.3f} → {w:.3f}" for p, t, r, w in rows) or "none"

        where = "all queries" if self.position is None else f"query {self.position}"
        heads = ", ".join(f"L{layer}H{head} {s:.2f}" for layer, head, s in self.top_heads(3))
        return "\n".join([
            f"attention weights α vs value-weighted α·‖f(x)‖ (Kobayashi et al. 2020, rows renormalised), "
            f"{where}, layers {format_ranges(self.layers)} × heads {format_ranges(self.heads)}",
            f"share moved between keys: mean {self.head_shift.mean():.2f}; most {heads}",
            f"keys losing share (raw → weighted): {listing(self.losses(3))}",
            f"keys gaining share: {listing(self.gains(3))}"])


def weighting_shift(trace: AttentionTrace, position: int | None = None, *, layers: Indices = None,
                    heads: Indices = None, block: str | None = None,
                    progress: bool | None = None) -> WeightingShift:
    """The heads and tokens whose raw and value-weighted shares of attention differ most.

    Parameters
    ----------
    position : a query position to read (negative counts from the end), or None (default) for
        every query: then each head's shares are its column sums over queries, read in one pass
        per weighting and kept on the trace like :func:`find_attention_sinks`'s.
    layers, heads : what to read (default: every captured one).

    Returns
    -------
    WeightingShift
    """
    b = trace.check_weighting("norm", block)
    li, hi, lsel, hsel = select_layers_heads(trace, b, layers, heads)
    if position is None:
        raw, weighted = (head_stats(trace, b, li, hi, ["received"], progress=progress, weighting=w,
                                    desc="weighting_shift")["received"] / b.n_queries
                         for w in ("attention", "norm"))
    else:
        position = check_index(position, b.n_queries, "position")
        raw, weighted = (query_row(b, li, hi, position, weighting=w) for w in ("attention", "norm"))
    diff = weighted - raw
    return WeightingShift(position, raw, weighted, 0.5 * np.abs(diff).sum(axis=-1), diff.mean(axis=(0, 1)),
                          lsel, hsel, trace.sequence(b.keys).display)
