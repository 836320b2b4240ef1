"""Evidence from the model's output, beside the attention a trace holds.

Attention shows where a query looked, not what the model would have said otherwise. With the
model at hand, three questions of the diagnosis reports can be asked of its output directly:

:func:`context_ablation`
    ignored context: run the same text without the context (dropped, or each of its tokens
    replaced by a neutral filler token, which keeps every position) and compare the output
    token's log-probability and the greedy continuation with and without it.
:func:`output_confidence`
    hallucination: per generated token, the log-probability the model gave it, the entropy of
    the next-token distribution and the margin between its two most likely tokens.
:func:`repeat_probability`
    repetition: the probability the model gave each token of a repeated stretch's second copy.

Each runs the model forward over the trace's own token ids (one pass per variant, gradients
off), so it works for any trace of a decoder-only model captured from that model. torch is
imported when one of them is called, never on import.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence

import numpy as np

from ..selection import check_count
from ..trace import AttentionTrace
from .engine import span_positions
from .findings import output_positions

ABLATIONS = ("drop", "replace")


# ===================================================================== result types
@dataclasses.dataclass(eq=False)
class ContextAblation:
    """The output with and without the context (:func:`context_ablation`). Model output, not attention.

    Attributes
    ----------
    output_position : position of the output token in the trace; ``output_token`` its text.
    context_positions : the context span's positions in the trace.
    ablation : ``"drop"`` (the span removed) or ``"replace"`` (each span token replaced by
        ``filler``, positions kept).
    filler : the replacement text (one token), ``""`` for ``"drop"``.
    logprob_with, logprob_without : natural-log probability of the output token given the text
        before it, with the context and ablated.
    logprob_change : ``logprob_with - logprob_without``: how much the context raised it (≤ 0:
        the model gives the output at least as readily without the context).
    top_without : the most likely token at that step without the context; ``same_output``
        whether it is the output token (the model would have said the same without the context).
    continuation : the trace's text from the output token on (``n_tokens`` tokens at most);
        ``continuation_without``: the greedy continuation of the ablated text, as many tokens.
    continuation_logprob_with, continuation_logprob_without : summed log-probability of
        ``continuation``'s tokens, with and without the context.
    """

    output_position: int
    output_token: str
    context_positions: list[int]
    ablation: str
    filler: str
    logprob_with: float
    logprob_without: float
    top_without: str
    same_output: bool
    continuation: str
    continuation_without: str
    continuation_logprob_with: float
    continuation_logprob_without: float

    @property
    def logprob_change(self) -> float:
        return self.logprob_with - self.logprob_without

    def summary(self) -> str:
        how = "dropped" if self.ablation == "drop" else f"replaced by {self.filler!r} per token"
        return "\n".join([
            f"model output, context {how}: log P({self.output_token!r}) {self.logprob_with:.2f} with the "
            f"context, {self.logprob_without:.2f} without (change {self.logprob_change:+.2f}); top token "
            f"without it {self.top_without!r}",
            f"continuation with the context {self.continuation!r} (log P {self.continuation_logprob_with:.2f}"
            f", without {self.continuation_logprob_without:.2f}); greedy without it "
            f"{self.continuation_without!r}",
        ])


@dataclasses.dataclass(eq=False)
class OutputConfidence:
    """How sure the model was of each output token (:func:`output_confidence`). Model output, not attention.

    Attributes
    ----------
    positions : output positions; ``tokens`` their text.
    logprob : ndarray of shape (n,), log-probability the model gave each token.
    entropy : ndarray of shape (n,), entropy in nats of the next-token distribution it came from.
    margin : ndarray of shape (n,), probability of the most likely token minus the second's.
    top : the most likely token at each step.
    """

    positions: list[int]
    tokens: list[str]
    logprob: np.ndarray
    entropy: np.ndarray
    margin: np.ndarray
    top: list[str]

    def summary(self) -> str:
        lines = [f"model output: mean log-prob {self.logprob.mean():.2f}, mean entropy "
                 f"{self.entropy.mean():.2f} nats, mean top-1/top-2 margin {self.margin.mean():.2f} over "
                 f"{len(self.positions)} tokens"]
        low = np.argsort(self.logprob, kind="stable")[:3]
        lines.append("least likely: " + ", ".join(
            f"{self.positions[i]} {self.tokens[i]!r} log P {self.logprob[i]:.2f} (entropy "
            f"{self.entropy[i]:.2f}, top {self.top[i]!r})" for i in low))
        return "\n".join(lines)


@dataclasses.dataclass(eq=False)
class RepeatProbability:
    """The probability the model gave each repeat's second copy (:func:`repeat_probability`).
    Model output, not attention.

    Attributes
    ----------
    starts : trace position of each repeat's second copy; ``lengths`` its length in tokens.
    probability : ndarray of shape (n_repeats,), mean probability of the second copy's tokens.
    first_probability : ndarray of shape (n_repeats,), the same for the first copy (what the
        text was worth before it repeated).
    """

    starts: list[int]
    lengths: list[int]
    probability: np.ndarray
    first_probability: np.ndarray

    def summary(self) -> str:
        if not self.starts:
            return "model output: no repeat to score"
        return "; ".join(f"model output: repeat at {s} ({n} tokens) mean probability {p:.2f} (first copy "
                         f"{f:.2f})" for s, n, p, f in zip(self.starts, self.lengths, self.probability,
                                                           self.first_probability))


# ===================================================================== running the model
def next_token_logprobs(model, ids: Sequence[int], keep: int | None = None) -> np.ndarray:
    """float32 (n, vocab) log-probabilities of the next token after each of the last ``keep``
    positions of ``ids`` (default every position), from one forward pass of a causal LM."""
    import torch

    ids = [int(i) for i in ids]
    keep = len(ids) if keep is None else keep
    device = next(model.parameters()).device
    kwargs = {}
    # a long text's full logits (T × vocab) would take gigabytes: ask only for the rows used
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = keep
    with torch.inference_mode():
        x = torch.tensor([ids], device=device)
        logits = model(input_ids=x, attention_mask=torch.ones_like(x), **kwargs).logits
    return torch.log_softmax(logits[0, -keep:].float(), dim=-1).cpu().numpy()


def greedy(model, ids: Sequence[int], n: int, pad_token_id: int | None) -> list[int]:
    """``n`` greedy tokens after ``ids`` (fewer if the model stops)."""
    import torch

    device = next(model.parameters()).device
    x = torch.tensor([[int(i) for i in ids]], device=device)
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                             pad_token_id=pad_token_id)
    return out[0, x.shape[1]:].tolist()


def check_decoder(trace: AttentionTrace, what: str) -> None:
    if trace.architecture != "decoder":
        raise ValueError(f"{what} runs a causal language model over the trace's tokens; this trace is of a "
                         f"{trace.architecture} model")


def filler_id(tokenizer, filler: str) -> int:
    """The one token id of ``filler``; ``ValueError`` if it is not one token."""
    ids = tokenizer(filler, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"filler must be one token of the tokenizer, so the ablated text keeps every "
                         f"position; {filler!r} is {len(ids)} tokens")
    return int(ids[0])


# ===================================================================== evidence
def context_ablation(model, tokenizer, trace: AttentionTrace, output_position: int,
                     context: str | Sequence[int], *, occurrence: int = 0, ablation: str = "drop",
                     filler: str = " the", n_tokens: int = 8) -> ContextAblation:
    """The output token's log-probability and the greedy continuation with and without the context.

    Parameters
    ----------
    model, tokenizer : the causal language model the trace was captured from, and its tokenizer.
    output_position : position of a generated token (negative counts from the end).
    context : a substring of the text, a span name or token positions, before the output.
    ablation : ``"drop"`` removes the context's tokens; ``"replace"`` puts the one token of
        ``filler`` (default ``" the"``) at each of them, so every other token keeps its position.
    n_tokens : how many tokens of continuation to score and generate (default 8).

    Returns
    -------
    ContextAblation
    """
    check_decoder(trace, "context_ablation")
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}; got {ablation!r}")
    n_tokens = check_count(n_tokens, "n_tokens", minimum=1)
    (out,), _ = output_positions(trace, [output_position], "output_position", "context_ablation")
    span = span_positions(trace, trace.block(), context, occurrence, "context")
    if max(span) >= out:
        raise ValueError(f"context {context!r} covers positions {span}, not all before the output at {out}")
    ids = trace.tokens.ids.tolist()
    stop = min(out + n_tokens, len(ids))
    dropped = set(span)
    if ablation == "drop":
        ablated = [t for i, t in enumerate(ids) if i not in dropped]
    else:
        f = filler_id(tokenizer, filler)
        ablated = [f if i in dropped else t for i, t in enumerate(ids)]
    shift = len(ids) - len(ablated)
    kept = stop - out
    with_ctx = next_token_logprobs(model, ids[:stop - 1], keep=kept)
    without = next_token_logprobs(model, ablated[:stop - shift - 1], keep=kept)
    target = np.asarray(ids[out:stop])
    lp_with, lp_without = with_ctx[np.arange(kept), target], without[np.arange(kept), target]
    generated = greedy(model, ablated[:out - shift], kept, getattr(tokenizer, "eos_token_id", None))
    text = trace.tokens.text
    top = int(without[0].argmax())
    return ContextAblation(
        out, text[out], span, ablation, "" if ablation == "drop" else filler, float(lp_with[0]),
        float(lp_without[0]), tokenizer.decode([top]), top == ids[out], "".join(text[out:stop]),
        tokenizer.decode(generated), float(lp_with.sum()), float(lp_without.sum()))


def output_confidence(model, tokenizer, trace: AttentionTrace,
                      positions: int | Sequence[int]) -> OutputConfidence:
    """Log-probability, entropy and top-1/top-2 margin of the model's output at each generated position.

    Returns
    -------
    OutputConfidence
    """
    check_decoder(trace, "output_confidence")
    outs, _ = output_positions(trace, np.atleast_1d(positions).tolist(), "positions", "output_confidence")
    ids = trace.tokens.ids
    first = min(outs)
    logp = next_token_logprobs(model, ids[:max(outs)].tolist(), keep=max(outs) - first + 1)
    rows = logp[np.array(outs) - first]
    p = np.exp(rows)
    top2 = np.sort(p, axis=-1)[:, -2:]
    return OutputConfidence(
        outs, [trace.tokens.text[o] for o in outs], rows[np.arange(len(outs)), ids[outs]].astype(np.float64),
        -(p * rows).sum(axis=-1).astype(np.float64), (top2[:, 1] - top2[:, 0]).astype(np.float64),
        [tokenizer.decode([int(i)]) for i in rows.argmax(axis=-1)])


def repeat_probability(model, trace: AttentionTrace, repeats: Sequence) -> RepeatProbability:
    """Mean probability the model gave each repeat's copies.

    ``repeats`` : objects with ``start``, ``shift`` and ``length`` (the ``repeats`` of a
    :class:`~attn_widget.analysis.RepetitionReport`): the first copy at ``start``, the second at
    ``start + shift``.

    Returns
    -------
    RepeatProbability
    """
    check_decoder(trace, "repeat_probability")
    if not repeats:
        return RepeatProbability([], [], np.zeros(0), np.zeros(0))
    ids = trace.tokens.ids
    first = min(r.start for r in repeats)
    last = max(r.start + r.shift + r.length for r in repeats)
    p = np.exp(next_token_logprobs(model, ids[:last - 1].tolist(), keep=last - first))
    got = p[np.arange(last - first), ids[first:last]]

    def mean(start: int, length: int) -> float:
        return float(got[start - first:start - first + length].mean())

    return RepeatProbability([r.start + r.shift for r in repeats], [r.length for r in repeats],
                             np.array([mean(r.start + r.shift, r.length) for r in repeats]),
                             np.array([mean(r.start, r.length) for r in repeats]))
