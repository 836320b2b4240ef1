"""Analysis of traces that keep queries and keys: the same answers as the weights they stand
for, a chunk of rows at a time (bounded memory, never the T²/2 weights), kept on the trace."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest

from attn_widget import analysis as an
from attn_widget.querykeys import QueryKeys
from attn_widget.tokens import TokenTable
from attn_widget.trace import AttentionBlock, AttentionTrace

TOL = 2e-3  # the weights form stores float16
BOS, COPY = [0], list(range(1, 13))  # 12 distinct ids, twice: induction at offset 1, n = 12
PROMPT_IDS = BOS + COPY + COPY + [40, 41, 3, 42, 43, 5, 44, 45, 46, 47, 48]  # 3 and 5 occur again
GENERATED_IDS = [50, 51, 52, 53, 50, 51, 52, 53, 54, 55, 56, 57]  # one repeat of 4 tokens
IDS = PROMPT_IDS + GENERATED_IDS  # 48 tokens


def table(ids) -> TokenTable:
    words = [f" w{i}" for i in ids]
    return TokenTable(list(ids), words, words)


def query_keys(rng, n_queries: int, n_keys: int | None = None, *, layers: int = 2, groups=(0, 0, 1, 1),
               dim: int = 8, causal: bool = True, window: int = 0, sinks: bool = False,
               sink: float = 3.0) -> QueryKeys:
    """Random queries and keys, with position 0's key along the queries' shared direction so
    that most heads put a lot of weight on it (an attention sink to find, ``sink`` times as
    strong as the queries' shared part)."""
    n_keys = n_queries if n_keys is None else n_keys
    heads, n_groups = len(groups), max(groups) + 1
    shared = rng.normal(size=dim).astype(np.float32)
    queries = rng.normal(size=(layers, heads, n_queries, dim)).astype(np.float32) + shared
    keys = rng.normal(size=(layers, n_groups, n_keys, dim)).astype(np.float32)
    keys[:, :, 0] = sink * shared
    logits = rng.normal(size=(layers, heads)).astype(np.float32) if sinks else None
    return QueryKeys(queries, keys, np.asarray(groups), np.full(layers, dim ** -0.5, np.float32),
                     np.full(layers, window, np.int64), sinks=logits, causal=causal)


def block(name: str, qk: QueryKeys, queries: str = "tokens", keys: str = "tokens") -> AttentionBlock:
    layers, heads = qk.queries.shape[:2]
    return AttentionBlock(name, qk.causal, tuple(range(layers)), tuple(range(heads)), qk=qk, queries=queries,
                          keys=keys)


def decoder_trace(qk: QueryKeys, ids=IDS, n_generated: int = len(GENERATED_IDS)) -> AttentionTrace:
    t = len(ids)
    model = {"name": "random", "architecture": "decoder", "n_layers": qk.queries.shape[0],
             "n_heads": qk.queries.shape[1], "n_kv_heads": qk.keys.shape[1]}
    return AttentionTrace(table(ids), {"self": block("self", qk)},
                          {"prompt": (0, t - n_generated), "generated": (t - n_generated, t)}, model)


def encoder_trace(qk: QueryKeys) -> AttentionTrace:
    model = {"name": "random-encoder", "architecture": "encoder", "n_layers": qk.queries.shape[0],
             "n_heads": qk.queries.shape[1], "n_kv_heads": qk.keys.shape[1]}
    return AttentionTrace(table(IDS), {"self": block("self", qk)}, {"input": (0, len(IDS))}, model)


def seq2seq_trace(rng) -> AttentionTrace:
    """Encoder (20 source tokens), causal decoder (16 target tokens) and cross-attention blocks."""
    src, tgt = list(range(60, 80)), IDS[:16]
    source = ("source_tokens", "source_tokens")
    blocks = {"encoder": block("encoder", query_keys(rng, 20, causal=False), *source),
              "decoder": block("decoder", query_keys(rng, 16)),
              "cross": block("cross", query_keys(rng, 16, 20, causal=False), "tokens", "source_tokens")}
    model = {"name": "random-seq2seq", "architecture": "encoder-decoder", "n_layers": 2, "n_heads": 4,
             "n_kv_heads": 2}
    return AttentionTrace(table(tgt), blocks, {"source": (0, 20), "target": (0, 16)}, model,
                          source_tokens=table(src))


def weights_form(trace: AttentionTrace) -> AttentionTrace:
    """The same trace with every block's weights materialised (from a copy of each block, so the
    queries-keys trace itself stays unmaterialised)."""
    blocks = {}
    for name, b in trace.blocks.items():
        data = AttentionBlock(b.name, b.causal, b.layers, b.heads, qk=b.qk).data
        blocks[name] = AttentionBlock(b.name, b.causal, b.layers, b.heads, data, b.queries, b.keys)
    return AttentionTrace(trace.tokens, blocks, trace.spans, trace.model, trace.options, trace.source_tokens)


def never_materialised(trace: AttentionTrace) -> bool:
    return all(b.nbytes == b.qk.nbytes for b in trace.blocks.values())


CASES = {
    "causal, GQA": lambda rng: decoder_trace(query_keys(rng, len(IDS))),
    "sliding window, sink logits": lambda rng: decoder_trace(query_keys(rng, len(IDS), window=5, sinks=True)),
    "encoder (not causal)": lambda rng: encoder_trace(query_keys(rng, len(IDS), causal=False)),
}


@pytest.fixture(params=list(CASES))
def pair(request):
    """(queries-keys trace, the same trace as float16 weights)."""
    trace = CASES[request.param](np.random.default_rng(0))
    return trace, weights_form(trace)


def close(a, b, atol=TOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=atol)


# --------------------------------------------------------------------------- same answers
def test_head_scores_equal_the_weights_form(pair):
    qk, w = pair
    got, want = an.head_scores(qk), an.head_scores(w)
    for name in an.HeadScores.METRICS:
        close(getattr(got, name), getattr(want, name))
    assert never_materialised(qk)


def test_entropy_and_both_sink_rules_equal_the_weights_form(pair):
    qk, w = pair
    close(an.attention_entropy(qk), an.attention_entropy(w), atol=5e-3)
    close(an.attention_entropy(qk, normalised=True, layers=1),
          an.attention_entropy(w, normalised=True, layers=1), atol=5e-3)
    got, want = an.find_attention_sinks(qk), an.find_attention_sinks(w)
    close(got.received, want.received)
    close(got.alpha, want.alpha)
    assert got.received_sinks == want.received_sinks and got.head_sinks == want.head_sinks
    assert 0 in got.positions or qk.block().qk.windows.any()  # the planted sink, unless out of the window
    assert never_materialised(qk)


def test_cross_attention_blocks_score_like_the_weights_form():
    trace = seq2seq_trace(np.random.default_rng(1))
    w = weights_form(trace)
    for name in ("encoder", "decoder", "cross"):
        got, want = an.head_scores(trace, block=name), an.head_scores(w, block=name)
        for metric in an.HeadScores.METRICS:
            close(getattr(got, metric), getattr(want, metric))
        close(an.find_attention_sinks(trace, block=name).alpha, an.find_attention_sinks(w, block=name).alpha)
    assert np.isnan(an.head_scores(trace, block="cross").self_score).all()
    assert never_materialised(trace)


def test_induction_scores_equal_the_weights_form(pair):
    qk, w = pair
    got, want = an.induction_scores(qk, 12, offset=1), an.induction_scores(w, 12, offset=1)
    close(got.induction, want.induction)
    close(got.duplicate, want.duplicate)


def test_rows_columns_spans_and_layer_means_equal_the_weights_form(pair):
    qk, w = pair
    close(an.attention_from(qk, 30, average=False), an.attention_from(w, 30, average=False))
    close(an.attention_to(qk, 0, average=False), an.attention_to(w, 0, average=False))
    close(an.attention_to(qk, 17, heads=[1, 3]), an.attention_to(w, 17, heads=[1, 3]))
    close(an.span_attention(qk, 40, [3, 5, 7]).mass, an.span_attention(w, 40, [3, 5, 7]).mass)
    close(an.layer_means(qk), an.layer_means(w))
    assert never_materialised(qk)


def test_rollout_rows_and_trace_influence_equal_the_weights_form(pair):
    qk, w = pair
    close(an.attention_rollout(qk, positions=[5, 47, 20]), an.attention_rollout(w, positions=[5, 47, 20]))
    close(an.attention_rollout(qk, start_layer=1, positions=[33]), an.attention_rollout(w, start_layer=1,
                                                                                        positions=[33]))
    got, want = an.trace_influence(qk, 41, threshold=0.05), an.trace_influence(w, 41, threshold=0.05)
    close(got.attention, want.attention)
    close(got.rollout, want.rollout)
    assert got.influential_positions == want.influential_positions
    assert never_materialised(qk)
    # every row at once is asked as one dense matrix, and equals the rows asked one by one
    close(an.attention_rollout(qk)[[5, 47, 20]], an.attention_rollout(qk, positions=[5, 47, 20]), atol=1e-5)


def test_compare_attention_equals_the_weights_form_on_aligned_tokens():
    rng = np.random.default_rng(2)
    qk1 = query_keys(rng, len(IDS))
    # run 2: three tokens inserted after position 20, and every query nudged
    at, extra = 21, 3
    ids2 = IDS[:at] + [90, 91, 92] + IDS[at:]
    q2 = np.insert(qk1.queries, [at] * extra, rng.normal(size=(2, 4, extra, 8)).astype(np.float32), axis=2)
    k2 = np.insert(qk1.keys, [at] * extra, rng.normal(size=(2, 2, extra, 8)).astype(np.float32), axis=2)
    q2 += 0.3 * rng.normal(size=q2.shape).astype(np.float32)
    t1 = decoder_trace(qk1)
    t2 = decoder_trace(dataclasses.replace(qk1, queries=q2, keys=k2), ids2)
    w1, w2 = weights_form(t1), weights_form(t2)
    inserted = range(at, at + extra)
    dense = np.abs(w1.attention() - np.delete(np.delete(w2.attention(), inserted, axis=2), inserted, axis=3))
    # a threshold no difference is near, so float16 rounding cannot move an entry across it
    threshold = next(x for x in (0.1, 0.11, 0.12, 0.13, 0.09) if np.abs(dense - x).min() > 3 * TOL)
    want = an.compare_attention(w1, w2, threshold=threshold)
    for other in (t2, w2):
        got = an.compare_attention(t1, other, threshold=threshold)
        close(got.max_diff, want.max_diff)
        close(got.mean_diff, want.mean_diff, atol=2e-4)
        assert got.n_big == want.n_big >= 5
        assert [(d.layer, d.head, d.query_1, d.key_1, d.query_2, d.key_2) for d in got.big_diffs] == \
            [(d.layer, d.head, d.query_1, d.key_1, d.query_2, d.key_2) for d in want.big_diffs]
        assert got.queries.unaligned_2 == (21, 22, 23)
    assert never_materialised(t1) and never_materialised(t2)


def test_a_trace_compared_with_its_own_weights_differs_by_float16_rounding_only(pair):
    qk, w = pair
    result = an.compare_attention(qk, w)
    assert result.max_diff.max() <= 2.0 ** -11 and result.n_big == 0 and result.queries.identical
    assert result.mean_diff.min() > 0  # the float16 weights are rounded, the recomputed rows not


def test_the_three_reports_equal_the_weights_form():
    # a milder sink: rows of tiny weights would leave the float16 form too coarse to correlate
    qk = decoder_trace(query_keys(np.random.default_rng(3), len(IDS), sink=1.0))
    w = weights_form(qk)
    got, want = an.ignored_context(qk, 40, [3, 4]), an.ignored_context(w, 40, [3, 4])
    close(got.attention, want.attention)
    close(got.mass_by_layer, want.mass_by_layer)
    assert got.sink_positions == want.sink_positions == [0]
    assert (got.rank, got.finding_names) == (want.rank, want.finding_names)
    got, want = an.hallucination(qk, [40, 44, 47]), an.hallucination(w, [40, 44, 47])
    close(got.normalised_entropy, want.normalised_entropy)
    close(got.similar_share, want.similar_share)
    close(got.generated_share, want.generated_share)
    assert got.finding_names == want.finding_names
    got, want = an.repetition(qk), an.repetition(w)
    assert got.repeats == want.repeats and len(got.repeats) == 1
    close(got.self_share, want.self_share)
    close(got.pattern_correlation, want.pattern_correlation)
    assert never_materialised(qk)


# --------------------------------------------------------------------------- kept on the trace
@dataclasses.dataclass(frozen=True)
class CountingQueryKeys(QueryKeys):
    """Queries and keys that count the query rows recomputed from them."""

    recomputed: list = dataclasses.field(default_factory=list)

    def rows(self, li, hi, start=0, stop=None):
        stop = self.n_queries if stop is None else stop
        self.recomputed.append(stop - start)
        return super().rows(li, hi, start, stop)


def test_what_reads_whole_heads_is_computed_once_per_trace():
    qk = query_keys(np.random.default_rng(4), len(IDS))
    counting = CountingQueryKeys(**{f.name: getattr(qk, f.name) for f in dataclasses.fields(QueryKeys)})
    trace = decoder_trace(counting)
    first = an.head_scores(trace)
    rows = sum(counting.recomputed)
    assert rows == 2 * 4 * len(IDS)  # each row of each head once
    again = an.head_scores(trace)
    an.find_attention_sinks(trace)
    an.attention_entropy(trace, layers=1, heads=[0, 2])
    an.head_scores(trace, layers=0)
    assert sum(counting.recomputed) == rows
    np.testing.assert_array_equal(again.normalised_entropy, first.normalised_entropy)
    again.sink_score[:] = 0  # results are the caller's to change
    assert an.head_scores(trace).sink_score.min() > 0
    an.induction_scores(trace, 12, offset=1)
    an.attention_rollout(trace, positions=[47])
    rows = sum(counting.recomputed)
    an.induction_scores(trace, 12, offset=1)
    an.attention_rollout(trace, positions=[47])
    an.ignored_context(trace, 40, [3, 4])  # its sinks are kept; it reads one query row per head
    assert sum(counting.recomputed) == rows + 2 * 4


# --------------------------------------------------------------------------- long traces
def test_a_long_trace_is_analysed_in_bounded_memory():
    t = 4096
    rng = np.random.default_rng(5)
    ids = list(range(t))
    trace = decoder_trace(query_keys(rng, t, groups=(0, 0, 0, 0, 1, 1, 1, 1), dim=16), ids, n_generated=16)
    weights = trace.block().weights_nbytes  # 268 MB as float16; one head in float32 alone is 67 MB
    tracemalloc.start()
    try:
        scores = an.head_scores(trace, progress=False)
        report = an.ignored_context(trace, t - 1, [0, 1, 2], progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < weights / 8
    assert never_materialised(trace)
    assert np.isfinite(scores.normalised_entropy).all() and scores.sink_score.min() > 0
    assert report.query_position == t - 2


def test_a_long_pass_shows_a_progress_bar_unless_told_not_to(capsys, monkeypatch):
    from attn_widget.analysis import streaming

    trace = decoder_trace(query_keys(np.random.default_rng(6), len(IDS)))
    an.head_scores(trace)  # tiny: no bar by default
    assert "head_scores" not in capsys.readouterr().err
    an.find_attention_sinks(decoder_trace(trace.block().qk), progress=True)
    assert "find_attention_sinks" in capsys.readouterr().err
    monkeypatch.setattr(streaming, "PROGRESS_CELLS", 1)  # as if the trace were long
    an.attention_entropy(decoder_trace(trace.block().qk))
    assert "attention_entropy" in capsys.readouterr().err
    an.attention_entropy(decoder_trace(trace.block().qk), progress=False)
    assert capsys.readouterr().err == ""
    an.head_scores(weights_form(trace))  # weights are read in place, a layer at a time, with a bar too
    assert "head_scores" in capsys.readouterr().err
