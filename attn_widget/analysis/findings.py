"""What the three diagnosis reports share: the findings they name, and how they read a generation step.

The finding names and meanings are the ``possible_findings`` of the article "Understanding
What Your Model Attends To". A report reads the attention of the query that *produced* an
output token (row ``p - 1`` for the token at position ``p``), and leaves attention sinks out of
the shares it computes, because sinks take most of the mass in many models and would drown
every other signal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from ..selection import check_index
from ..trace import AttentionBlock, AttentionTrace
from ..valuenorms import describe_weighting
from .heads import find_attention_sinks

# The article's possible findings of its three failure modes, with its one-line meaning of each.
FINDINGS = {
    "low_attention_to_relevant": "Context was seen but not attended",
    "high_attention_to_irrelevant": "Distracted by other tokens",
    "attention_to_wrong_position": "Position encoding issue",
    "attention_spread_thin": "No strong signal, guessing",
    "attention_to_similar_context": "Confused similar items",
    "self_attention_loop": "Attending to own generation",
    "high_self_attention": "Model stuck on own output",
    "pattern_in_attention": "Repeating attention pattern",
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding of a diagnosis report that fired.

    Attributes
    ----------
    name : the finding's name in the article "Understanding What Your Model Attends To" (a key
        of :data:`FINDINGS`).
    meaning : the article's one-line meaning of it.
    value : the number that crossed the threshold.
    threshold : the threshold it was compared with.
    detail : what fired, in words, with tokens and positions.
    positions : the positions it concerns (output positions or key positions, per report).
    """

    name: str
    meaning: str
    value: float
    threshold: float
    detail: str
    positions: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"{self.name} ({self.meaning}): {self.detail}"


def finding(name: str, value: float, threshold: float, detail: str, positions: Sequence[int] = ()) -> Finding:
    """The :class:`Finding` ``name`` (a key of :data:`FINDINGS`), with its meaning filled in."""
    return Finding(name, FINDINGS[name], float(value), float(threshold), detail,
                   tuple(int(p) for p in positions))


def threshold_findings(checks: Iterable[tuple[str, np.ndarray, float, str]], labels: Sequence[str],
                       positions: Sequence[int]) -> list[Finding]:
    """A finding for each (name, values, threshold, what) of ``checks`` whose values exceed the threshold.

    ``values[i]`` belongs to item ``i``, described by ``labels[i]`` at ``positions[i]``.
    """
    out = []
    for name, values, threshold, what in checks:
        fired = np.nonzero(values > threshold)[0]
        if len(fired):
            detail = "; ".join(f"{labels[i]}: {what} {values[i]:.2f}" for i in fired)
            out.append(finding(name, values[fired].max(), threshold, f"{detail} > {threshold:g}",
                               [positions[i] for i in fired]))
    return out


class FindingsReport:
    """Base of the three diagnosis reports: their fired findings."""

    findings: list[Finding]
    weighting: str

    @property
    def finding_names(self) -> list[str]:
        """Names of the findings that fired."""
        return [f.name for f in self.findings]

    def _finding_lines(self) -> list[str]:
        return ([f"finding: {f}" for f in self.findings] or ["no finding fired"]) + [
            f"weighting: {describe_weighting(self.weighting)}"]


def require_generation(trace: AttentionTrace, what: str) -> None:
    """``ValueError`` naming ``what`` unless the trace has generated tokens."""
    if trace.n_generated == 0:
        raise ValueError(f"{what} needs generated tokens, but this trace is a forward pass (no generated "
                         "span); capture with max_new_tokens > 0")


def output_positions(trace: AttentionTrace, positions: Sequence[int], what: str,
                     caller: str) -> tuple[list[int], np.ndarray]:
    """Checked output positions and the query rows that produced them (position − 1).

    ``what`` names the argument and ``caller`` the report in errors.
    """
    require_generation(trace, caller)
    lo, hi = trace.spans["generated"]
    outs = []
    for p in positions:
        p = check_index(p, len(trace.tokens), what)
        if not lo <= p < hi or p == 0:
            raise IndexError(f"{what} {p} is not a generated token: generated tokens are at positions "
                             f"{max(lo, 1)}..{hi - 1} (or negative from the end)")
        outs.append(p)
    if not outs:
        raise ValueError(f"{what} is empty; pass at least one generated position")
    return outs, np.array(outs) - 1


def self_attention_block(trace: AttentionTrace, block: str | None, what: str) -> AttentionBlock:
    """Block ``block`` of the trace; ``ValueError`` naming ``what`` unless it is self-attention over
    the main tokens."""
    b = trace.block(block)
    if b.queries != "tokens" or b.keys != "tokens":
        raise ValueError(f"{what} reads self-attention over the generated tokens; block {b.name!r} maps "
                         f"{b.queries} to {b.keys}")
    return b


def report_sinks(trace: AttentionTrace, b: AttentionBlock, lsel: Sequence[int], hsel: Sequence[int],
                 ignore: bool, visible: np.ndarray, keep: Sequence[int], progress: bool | None,
                 weighting: str = "attention") -> list[int]:
    """Sink positions a report leaves out: found by both rules, seen by the query, not in ``keep``.

    Both rules, because Gu et al.'s α of the last few positions averages over a handful of
    queries and flags recent tokens in heads that attend locally. Finding them reads every
    selected head whole, once per trace (:func:`find_attention_sinks` keeps what it read), with
    the report's ``weighting``.
    """
    if not ignore:
        return []
    sinks = find_attention_sinks(trace, layers=lsel, heads=hsel, block=b.name, progress=progress,
                                 weighting=weighting).positions
    return sorted(set(sinks) & set(visible.tolist()) - set(keep))


def shares(attention: np.ndarray, positions: Sequence[int], sinks: Sequence[int]) -> np.ndarray:
    """Share of non-sink attention on ``positions``: attention (…, n_keys) → (…)."""
    mask = np.zeros(attention.shape[-1], bool)
    mask[list(positions)] = True
    mask[list(sinks)] = False
    rest = np.ones_like(mask)
    rest[list(sinks)] = False
    return attention[..., mask].sum(axis=-1) / np.maximum(attention[..., rest].sum(axis=-1), 1e-12)


def comparable_text(text: str) -> str:
    """Token text for spotting the same item twice: stripped and case-folded, "" without a letter or digit."""
    t = text.strip().casefold()
    return t if any(c.isalnum() for c in t) else ""
