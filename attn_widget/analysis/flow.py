"""Where attention comes from: one query's influential positions, and attention rollout
(Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers") through the layers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..selection import Indices, check_index, format_ranges, model_indices
from ..trace import AttentionBlock, AttentionTrace
from ..valuenorms import describe_weighting
from .engine import query_row, select_layers_heads
from .streaming import fill_mean, mean_chunks, row_cells, whole_head_pass


@dataclasses.dataclass(eq=False)
class Influence:
    """Which positions an output position attended to (:func:`trace_influence`).

    Attributes
    ----------
    position : the query position read.
    token : its display text.
    layers, heads : model indices averaged over.
    threshold : positions whose value exceeds it are listed.
    attention : ndarray of shape (n_keys,), the query's attention averaged over ``layers`` and
        ``heads``.
    influential_positions, attention_values : positions with ``attention > threshold`` and
        their values (the two lists that ``trace_influence`` returns in the article
        "Understanding What Your Model Attends To").
    rollout : ndarray of shape (n_keys,) or None; the query's row of the attention rollout from
        the first captured layer through ``max(layers)`` over all captured heads.
    rollout_positions, rollout_values : the same threshold applied to ``rollout``.
    tokens : display text of every key position.
    weighting : ``"attention"``, or ``"norm"``: the rows ``α_ij ‖f_h(x_j)‖`` renormalised, in the
        average and in the rollout.
    """

    position: int
    token: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    threshold: float
    attention: np.ndarray
    influential_positions: list[int]
    attention_values: list[float]
    rollout: np.ndarray | None
    rollout_positions: list[int]
    rollout_values: list[float]
    tokens: list[str]
    weighting: str = "attention"

    def summary(self) -> str:
        def listing(positions, values):
            return ", ".join(f"{p} {self.tokens[p]!r} {v:.3f}" for p, v in zip(positions, values)) or "none"

        lines = [f"query {self.position} {self.token!r}, layers {format_ranges(self.layers)}: attention > "
                 f"{self.threshold:g}: {listing(self.influential_positions, self.attention_values)}"]
        lines.append(f"weighting: {describe_weighting(self.weighting)}")
        if self.rollout is not None:
            lines.append(f"rollout > {self.threshold:g}: "
                         f"{listing(self.rollout_positions, self.rollout_values)}")
        return "\n".join(lines)


def attention_rollout(trace: AttentionTrace, *, start_layer: int | None = None, end_layer: int | None = None,
                      positions: Sequence[int] | None = None, block: str | None = None,
                      progress: bool | None = None, weighting: str = "attention") -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) from ``start_layer`` through ``end_layer``.

    Each layer becomes ``Â_l = 0.5 · mean_heads(A_l) + 0.5 · I`` with rows renormalised, and
    ``R = Â_end · … · Â_start``: row ``i`` of ``R`` is how much each input position flows into
    position ``i`` through the residual stream. The head mean is over the captured heads.

    Parameters
    ----------
    start_layer, end_layer : model layers (default: the first and last captured); every layer
        between them must have been captured.
    positions : query positions whose rows to return (default: all). Asking for a few rows
        costs O(n_layers · T²) instead of O(n_layers · T³); on a ``"queries-keys"`` block they
        are computed a chunk of ``Â``'s rows at a time (only the rows up to the last position
        when causal) and kept on the trace.
    weighting : ``"attention"``, or ``"norm"``: each head's rows ``α_ij ‖f_h(x_j)‖`` renormalised
        before the head mean (how much of what the heads moved came from each position).

    Returns
    -------
    ndarray of float32, shape (n_queries, n_keys), or (len(positions), n_keys).
    """
    b = trace.check_weighting(weighting, block)
    if b.queries != b.keys:
        raise ValueError(f"attention rollout needs self-attention; block {b.name!r} maps {b.queries} to "
                         f"{b.keys}")
    layers = _rollout_layers(trace, b, start_layer, end_layer)
    t = b.n_queries
    if positions is None:
        out = np.eye(t, dtype=np.float32)
        for layer in layers:
            out = _rollout_factor(trace, b, layer, progress, weighting) @ out
        return out
    rows = [check_index(p, t, "positions") for p in np.atleast_1d(positions).tolist()]
    if b.qk is not None or weighting != "attention":
        key = ("rollout", b.name, layers[0], layers[-1], tuple(rows), weighting)
        if key not in trace.computed:
            trace.computed[key] = _streamed_rollout(b, layers, rows, progress, weighting)
        return trace.computed[key].copy()
    out = np.eye(t, dtype=np.float32)[rows]
    for layer in reversed(layers):
        out = out @ _rollout_factor(trace, b, layer)
    return out


def trace_influence(trace: AttentionTrace, output_position: int, *, layers: Indices = None,
                    heads: Indices = None, threshold: float = 0.1, rollout: bool = True,
                    block: str | None = None, progress: bool | None = None,
                    weighting: str = "attention") -> Influence:
    """Which positions query ``output_position`` attended to, as ``trace_influence`` does in the
    article "Understanding What Your Model Attends To".

    The attention row of ``output_position`` averaged over ``heads`` and ``layers`` (default:
    the last captured layer, the one the article's debugging session reads), the positions above
    ``threshold``, and the same through attention rollout. To see the attention that *produced*
    generated token ``t``, pass ``trace.step_position(t)``.

    Parameters
    ----------
    threshold : list positions whose averaged attention exceeds it (default 0.1, the article's).
    rollout : also compute the rollout row (needs every layer up to ``max(layers)`` captured;
        it reads every head of those layers up to ``output_position``).
    weighting : ``"attention"``, or ``"norm"``: each head's row ``α_ij ‖f_h(x_j)‖`` renormalised
        (in the rollout too), so the threshold still applies to shares.

    Returns
    -------
    Influence
    """
    b = trace.check_weighting(weighting, block)
    if layers is None:
        layers = b.layers[-1]
    li, hi, lsel, hsel = select_layers_heads(trace, b, layers, heads)
    q = check_index(output_position, b.n_queries, "output_position")
    attention = query_row(b, li, hi, q, weighting=weighting).mean(axis=(0, 1))
    hits = np.flatnonzero(attention > threshold).tolist()
    roll, roll_hits = None, []
    if rollout:
        roll = attention_rollout(trace, end_layer=max(lsel), positions=[q], block=b.name,
                                 progress=progress, weighting=weighting)[0]
        roll_hits = np.flatnonzero(roll > threshold).tolist()
    return Influence(q, trace.sequence(b.queries).display[q], lsel, hsel, float(threshold), attention,
                     hits, [float(attention[p]) for p in hits], roll, roll_hits,
                     [float(roll[p]) for p in roll_hits] if roll is not None else [],
                     trace.sequence(b.keys).display, weighting)


def _rollout_layers(trace: AttentionTrace, b: AttentionBlock, start: int | None,
                    end: int | None) -> list[int]:
    """Every model layer from ``start`` through ``end``; each must have been captured."""
    n = trace.model.get("n_layers")
    start = b.layers[0] if start is None else model_indices(start, b.layers, n, "start_layer")[0]
    end = b.layers[-1] if end is None else model_indices(end, b.layers, n, "end_layer")[0]
    if end < start:
        raise ValueError(f"end_layer {end} is before start_layer {start}")
    missing = [x for x in range(start, end + 1) if x not in b.layers]
    if missing:
        raise ValueError(f"attention rollout through layers {start}..{end} needs every one of them, but "
                         f"layers {format_ranges(missing)} were not captured (captured: "
                         f"{format_ranges(b.layers)}); pick start_layer/end_layer inside a captured run or "
                         "capture all layers")
    return list(range(start, end + 1))


def _rollout_factor(trace: AttentionTrace, b: AttentionBlock, layer: int,
                    progress: bool | None = None, weighting: str = "attention") -> np.ndarray:
    """``Â = 0.5 · mean_heads(A) + 0.5 · I``, rows renormalised, dense (T, T) float32."""
    if b.qk is None and weighting == "attention":
        a = 0.5 * trace.layer_mean(layer, b.name)
    else:  # filled a chunk of rows at a time, in float32 like the rows asked for one by one
        cells = len(b.heads) * row_cells(b, 0, b.n_queries)
        with whole_head_pass(cells, f"attention_rollout, layer {layer}", progress) as advance:
            a = fill_mean(b, b.layer_pos(layer), np.zeros((b.n_queries, b.n_keys), np.float32), 0.5, advance,
                          weighting)
    a[np.diag_indices_from(a)] += 0.5
    a /= a.sum(axis=1, keepdims=True)
    return a


def _streamed_rollout(b: AttentionBlock, layers: list[int], rows: list[int],
                      progress: bool | None, weighting: str) -> np.ndarray:
    """Rows ``rows`` of the rollout, ``out @ Â`` summed over chunks of ``Â``'s rows: only rows up
    to the last position when causal (``out`` never reaches later keys)."""
    t = b.n_queries
    reach = max(rows) + 1 if b.causal else t
    out = np.eye(t, dtype=np.float32)[rows]
    cells = len(layers) * len(b.heads) * row_cells(b, 0, reach)
    with whole_head_pass(cells, "attention_rollout", progress) as advance:
        for layer in reversed(layers):
            rolled = np.zeros_like(out)
            for s, e, mean in mean_chunks(b, b.layer_pos(layer), 0, reach, weighting):
                mean *= 0.5
                i = np.arange(s, e)
                mean[i - s, i] += 0.5
                mean /= mean.sum(axis=1, keepdims=True)
                rolled[:, :mean.shape[1]] += out[:, s:e] @ mean
                advance(len(b.heads) * row_cells(b, s, e))
            out = rolled
    return out
