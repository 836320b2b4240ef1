"""Metrics and diagnosis reports over an :class:`~attn_widget.trace.AttentionTrace`.

Pure numpy: nothing here needs torch, except :func:`induction_probe`, which runs a model and
imports :func:`attn_widget.capture` (and with it torch) when called. Every metric reads a
trace's stored float16 weights in place, one layer at a time, or, for traces that keep queries
and keys (long runs), recomputes the query rows it needs a chunk at a time and never builds a
head's ``T²/2`` weights, so memory stays at one chunk of rows per head even at 32k tokens.
What reads whole heads (head metrics, entropy, sinks, induction, rollout rows) is kept on the
trace (``trace.computed``): asking again, or another report that needs the same sinks, reads it back.

Where each concern lives (every public name is re-exported here):

=============  ==================================================================================
``views``      reading attention: :func:`attention_from`, :func:`attention_to`,
               :func:`layer_means`, :func:`span_attention`
``heads``      head metrics and roles: :func:`attention_entropy`, :func:`head_scores`,
               :func:`find_attention_sinks`, :func:`induction_scores`, :func:`induction_probe`
``flow``       influence through the layers: :func:`trace_influence`, :func:`attention_rollout`
``compare``    two runs of one model: :func:`compare_attention`, with token alignment
``reports``    diagnosis reports: :func:`ignored_context`, :func:`hallucination`, :func:`repetition`
``weighted``   raw vs value-weighted attention: :func:`weighting_shift`
``evidence``   the model's output beside the attention: :func:`context_ablation`,
               :func:`output_confidence`, :func:`repeat_probability` (run the model; torch on call)
``findings``   what the reports share: :data:`FINDINGS`, :class:`Finding`, sink handling, and
               :data:`CALIBRATION` (thresholds chosen on labelled SmolLM2 runs)
``headstats``  per-head sums (row entropies, column sums, diagonals) from one pass, kept on the trace
``engine``     the engine under all of them: layer/head selection, gathers, row and column sums
               of the packed store, float16 lookup tables
``streaming``  passes over queries-keys blocks a chunk of rows at a time, progress bars
=============  ==================================================================================

Each result type lives next to the function that returns it.

Conventions
-----------
``A`` is one head's attention, rows are queries and columns keys. ``layers`` and ``heads``
arguments take model indices (an int, a sequence, or ``None`` for every captured one; negative
indices count from the end of the model); results keep the order asked for. ``block`` names
the trace's attention block (default: ``self``, or ``decoder`` for encoder-decoder models).
Position arguments accept negative values counted from the end, like Python lists.
``progress`` (on the functions that may read whole heads) shows a ``tqdm`` bar: ``None`` (the
default) when the pass would take more than about a second, ``True`` always, ``False`` never.
``weighting`` (on the views, head metrics, sinks, influence, rollout, comparisons and reports):
``"attention"`` (default) reads the weights ``α``; ``"norm"`` reads each head's rows
``α_ij ‖f_h(x_j)‖`` (Kobayashi et al. 2020, "Attention is Not Only a Weight") divided by their
sums, so that each is again a distribution over keys and every threshold keeps its meaning; the
summaries say which was used. It needs a trace captured with value norms (the default).

The diagnosis reports follow the three failure modes of the article "Understanding What Your
Model Attends To" and use its finding names. A report reads the attention of the query that
*produced* an output token (its generation step, row ``p - 1`` for the token at position
``p``). Attention sinks (positions most heads dump attention on, usually position 0) take most
of the mass in many models and would drown every other signal, so by default the reports leave
out the positions both sink rules of :func:`find_attention_sinks` agree on (default thresholds,
same layers and heads) from shares and rankings, and report the mass they took separately
(``ignore_sinks=False`` keeps them).

Attention shows where the model looked, not why: treat every finding as a place to
investigate, not as an explanation. Given ``model=`` and ``tokenizer=``, the reports also ask the
model's output (the answer without the context, the model's confidence, the probability of a
repeat), and say which evidence came from where. Their thresholds are calibrated on labelled
SmolLM2 runs (``benchmarks/eval_reports.py``); a check that did not tell failing from normal runs
there is shown as information, not raised as a finding.
"""

from ..selection import Indices
from .compare import AttentionComparison, BigDiff, SequenceAlignment, compare_attention
from .evidence import (
    ContextAblation,
    OutputConfidence,
    RepeatProbability,
    context_ablation,
    output_confidence,
    repeat_probability,
)
from .findings import CALIBRATION, FINDINGS, OUTPUT_FINDINGS, Calibration, Finding
from .flow import Influence, attention_rollout, trace_influence
from .heads import (
    AttentionSinks,
    HeadScores,
    InductionScores,
    attention_entropy,
    find_attention_sinks,
    head_scores,
    induction_probe,
    induction_scores,
)
from .reports import (
    HallucinationReport,
    IgnoredContextReport,
    Repeat,
    RepetitionReport,
    hallucination,
    ignored_context,
    repetition,
)
from .views import SpanAttention, attention_from, attention_to, layer_means, span_attention

# re-exported by name, outside __all__ for now (tests/test_analysis_package.py pins __all__ to the
# names of the module the package replaced)
from .weighted import WeightingShift as WeightingShift
from .weighted import weighting_shift as weighting_shift

__all__ = [
    "CALIBRATION", "Calibration", "ContextAblation", "OUTPUT_FINDINGS", "OutputConfidence",
    "RepeatProbability",
    "context_ablation", "output_confidence", "repeat_probability",
    "FINDINGS", "AttentionComparison", "AttentionSinks", "BigDiff", "Finding", "HallucinationReport",
    "HeadScores", "IgnoredContextReport", "Indices", "Influence", "InductionScores", "Repeat",
    "RepetitionReport", "SequenceAlignment", "SpanAttention", "attention_entropy", "attention_from",
    "attention_rollout", "attention_to", "compare_attention", "find_attention_sinks", "hallucination",
    "head_scores", "ignored_context", "induction_probe", "induction_scores", "layer_means", "repetition",
    "span_attention", "trace_influence",
]
