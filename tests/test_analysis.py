"""attn_widget.analysis on small hand-computed attention (no model needed)."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from attn_widget import analysis as an
from attn_widget.trace import AttentionTrace

TOL = 2e-3  # the trace stores float16


def causal(rows):
    """(T, T) lower-triangular matrix from ragged rows (row i has i + 1 entries)."""
    t = len(rows)
    out = np.zeros((t, t))
    for i, r in enumerate(rows):
        assert len(r) == i + 1 and abs(sum(r) - 1) < 1e-9
        out[i, :i + 1] = r
    return out


def previous_token_head(t):
    """Each query on the token before it (query 0 on itself)."""
    return causal([[1.0]] + [[0.0] * (i - 1) + [1.0, 0.0] for i in range(1, t)])


def uniform_head(t):
    return causal([[1 / (i + 1)] * (i + 1) for i in range(t)])


def sink_head(t):
    """Half of each query's attention on position 0, the rest spread evenly over 1..i."""
    return causal([[1.0]] + [[0.5] + [0.5 / i] * i for i in range(1, t)])


@pytest.fixture
def two_heads():
    """One layer, 4 tokens: head 0 looks at the previous token, head 1 spreads evenly."""
    a = np.stack([previous_token_head(4), uniform_head(4)])[None]
    return AttentionTrace.from_dense(a, ["A", "B", "C", "D"])


# --------------------------------------------------------------------------- views
def test_attention_from_one_head_is_its_row(two_heads):
    row = an.attention_from(two_heads, 2, layers=0, heads=1)
    np.testing.assert_allclose(row, [1 / 3, 1 / 3, 1 / 3, 0], atol=TOL)


def test_attention_from_averages_the_heads(two_heads):
    np.testing.assert_allclose(an.attention_from(two_heads, 2), [1 / 6, 2 / 3, 1 / 6, 0], atol=TOL)


def test_attention_to_is_a_column_per_head(two_heads):
    cols = an.attention_to(two_heads, 1, average=False)
    assert cols.shape == (1, 2, 4)
    np.testing.assert_allclose(cols[0, 0], [0, 0, 1, 0], atol=TOL)
    np.testing.assert_allclose(cols[0, 1], [0, 0.5, 1 / 3, 0.25], atol=TOL)


def test_negative_position_counts_from_the_end(two_heads):
    np.testing.assert_array_equal(an.attention_from(two_heads, -1), an.attention_from(two_heads, 3))


def test_layer_means_stack_the_head_mean_of_every_layer():
    a = np.stack([np.stack([uniform_head(3), previous_token_head(3)]),
                  np.stack([previous_token_head(3), previous_token_head(3)])])
    trace = AttentionTrace.from_dense(a, ["a", "b", "c"])
    means = an.layer_means(trace)
    assert means.shape == (2, 3, 3)
    np.testing.assert_allclose(means[0, 2], [1 / 6, 1 / 6 + 0.5, 1 / 6], atol=TOL)
    np.testing.assert_allclose(means[1], previous_token_head(3), atol=TOL)


# --------------------------------------------------------------------------- entropy
def test_entropy_of_uniform_rows_is_log_of_visible_keys(two_heads):
    h = an.attention_entropy(two_heads)
    np.testing.assert_allclose(h[0, 1], [0, math.log(2), math.log(3), math.log(4)], atol=TOL)


def test_entropy_counts_zero_weights_as_nothing(two_heads):
    np.testing.assert_array_equal(an.attention_entropy(two_heads)[0, 0], [0, 0, 0, 0])


def test_normalised_entropy_is_one_for_uniform_and_zero_for_a_single_key(two_heads):
    h = an.attention_entropy(two_heads, normalised=True)
    np.testing.assert_allclose(h[0, 1], [0, 1, 1, 1], atol=TOL)


def test_normalised_entropy_of_bidirectional_attention_divides_by_all_keys():
    trace = AttentionTrace.from_dense(np.full((1, 1, 4, 4), 0.25), list("abcd"), causal=False)
    np.testing.assert_allclose(an.attention_entropy(trace, normalised=True)[0, 0], [1, 1, 1, 1], atol=TOL)


# --------------------------------------------------------------------------- head scores
def test_head_scores_mean_normalised_entropy(two_heads):
    np.testing.assert_allclose(an.head_scores(two_heads).normalised_entropy, [[0, 1]], atol=TOL)


def test_head_scores_previous_token_score(two_heads):
    np.testing.assert_allclose(an.head_scores(two_heads).previous_token_score,
                               [[1, (1 / 2 + 1 / 3 + 1 / 4) / 3]], atol=TOL)


def test_head_scores_sink_score_is_alpha_of_position_0(two_heads):
    # head 0: column 0 holds 1 + 1 over 4 queries; head 1: 1 + 1/2 + 1/3 + 1/4
    np.testing.assert_allclose(an.head_scores(two_heads).sink_score, [[0.5, (25 / 12) / 4]], atol=TOL)


def test_head_scores_self_score_is_mean_diagonal(two_heads):
    np.testing.assert_allclose(an.head_scores(two_heads).self_score, [[0.25, (25 / 12) / 4]], atol=TOL)


def test_head_scores_grid_has_one_row_per_layer_and_is_json_ready():
    a = np.stack([np.stack([uniform_head(3)] * 2)] * 3)
    scores = an.head_scores(AttentionTrace.from_dense(a, list("abc")), layers=[2, 0])
    assert scores.layers == (2, 0) and scores.heads == (0, 1)
    for name in an.HeadScores.METRICS:
        assert getattr(scores, name).shape == (2, 2)
    d = json.loads(json.dumps(scores.to_dict()))
    assert set(d) == {"layers", "heads", "block", *an.HeadScores.METRICS}


def test_head_scores_top_ranks_heads(two_heads):
    assert an.head_scores(two_heads).top("previous_token_score", 1) == [(0, 0, 1.0)]


# --------------------------------------------------------------------------- sinks
def test_seed_sink_rule_averages_received_attention_over_all_queries(two_heads):
    sinks = an.find_attention_sinks(two_heads)
    # column sums over the two heads (2, 1, 1, 0) and (25/12, 13/12, 7/12, 1/4), / 2 heads / 4 queries
    np.testing.assert_allclose(sinks.received, [49 / 96, 25 / 96, 19 / 96, 3 / 96], atol=TOL)


def test_seed_sink_rule_finds_a_position_above_mean_plus_two_std():
    # every query puts 0.44 on key 0 and 0.08 on each other key
    a = np.full((1, 1, 8, 8), 0.08)
    a[..., 0] = 0.44
    sinks = an.find_attention_sinks(AttentionTrace.from_dense(a, list("abcdefgh"), causal=False))
    received = np.array([0.44] + [0.08] * 7)
    assert sinks.threshold == pytest.approx(received.mean() + 2 * received.std(ddof=1), abs=TOL)
    assert sinks.received_sinks == [0]


def test_seed_sink_rule_finds_nothing_in_uniform_attention():
    trace = AttentionTrace.from_dense(np.full((1, 1, 8, 8), 1 / 8), list("abcdefgh"), causal=False)
    assert an.find_attention_sinks(trace).received_sinks == []


def test_gu_alpha_averages_over_the_queries_that_see_the_position(two_heads):
    alpha = an.find_attention_sinks(two_heads).alpha
    np.testing.assert_allclose(alpha[0, 0], [2 / 4, 1 / 3, 1 / 2, 0], atol=TOL)
    np.testing.assert_allclose(alpha[0, 1], [(25 / 12) / 4, (13 / 12) / 3, (7 / 12) / 2, 1 / 4], atol=TOL)


def test_gu_rule_reports_share_of_heads_over_epsilon(two_heads):
    sinks = an.find_attention_sinks(two_heads, epsilon=0.3)
    np.testing.assert_allclose(sinks.head_share, [1, 1, 0.5, 0])
    assert sinks.head_sinks == [0, 1, 2]
    assert an.find_attention_sinks(two_heads, min_share=1.0).head_sinks == [0, 1]


# --------------------------------------------------------------------------- span attention
@pytest.fixture
def paris():
    tokens = ["The", " capital", " is", " Paris", "."]
    return AttentionTrace.from_dense(uniform_head(5)[None, None], tokens)


def test_span_attention_maps_a_substring_to_its_tokens(paris):
    s = an.span_attention(paris, 4, "Paris")
    assert s.positions == [3] and s.tokens == [" Paris"]
    np.testing.assert_allclose(s.mass, [[0.2]], atol=TOL)


def test_span_attention_sums_a_span_given_as_positions(paris):
    np.testing.assert_allclose(an.span_attention(paris, 4, [1, 2, 3]).mass, [[0.6]], atol=TOL)


def test_span_attention_to_a_later_span_is_zero(paris):
    assert an.span_attention(paris, 1, "Paris").total == 0


# --------------------------------------------------------------------------- influence and rollout
def test_trace_influence_lists_positions_above_threshold(two_heads):
    inf = an.trace_influence(two_heads, 2, threshold=0.2)
    assert inf.influential_positions == [1]
    assert inf.attention_values == pytest.approx([2 / 3], abs=TOL)


def test_trace_influence_rollout_adds_the_residual(two_heads):
    inf = an.trace_influence(two_heads, 2, threshold=0.2)
    # one layer: 0.5 · head mean [1/6, 2/3, 1/6, 0] + 0.5 on itself
    np.testing.assert_allclose(inf.rollout, [1 / 12, 1 / 3, 1 / 12 + 0.5, 0], atol=TOL)
    assert inf.rollout_positions == [1, 2]


def test_trace_influence_defaults_to_the_last_layer():
    a = np.stack([uniform_head(3)[None], previous_token_head(3)[None]])
    inf = an.trace_influence(AttentionTrace.from_dense(a, list("abc")), 2, rollout=False)
    assert inf.layers == (1,) and inf.influential_positions == [1] and inf.rollout is None


def test_rollout_of_one_layer_is_half_attention_plus_half_identity():
    a = uniform_head(4)
    trace = AttentionTrace.from_dense(a[None, None], list("abcd"))
    np.testing.assert_allclose(an.attention_rollout(trace), 0.5 * a + 0.5 * np.eye(4), atol=TOL)


def test_rollout_multiplies_layers_from_the_top():
    a = np.stack([causal([[1], [0.5, 0.5]])[None], causal([[1], [1, 0]])[None]])
    r = an.attention_rollout(AttentionTrace.from_dense(a, ["a", "b"]))
    # Â1 = [[1, 0], [.25, .75]], Â2 = [[1, 0], [.5, .5]]; R = Â2 · Â1
    np.testing.assert_allclose(r, [[1, 0], [0.625, 0.375]], atol=TOL)


def test_rollout_rows_sum_to_one():
    a = np.stack([np.stack([uniform_head(6), sink_head(6)]), np.stack([previous_token_head(6)] * 2)] * 2)
    r = an.attention_rollout(AttentionTrace.from_dense(a, list("abcdef")))
    np.testing.assert_allclose(r.sum(axis=1), 1, atol=1e-5)


def test_rollout_rows_for_some_positions_match_the_full_matrix():
    a = np.stack([np.stack([uniform_head(6), sink_head(6)]), np.stack([previous_token_head(6)] * 2)])
    trace = AttentionTrace.from_dense(a, list("abcdef"))
    np.testing.assert_allclose(an.attention_rollout(trace, positions=[5, 2]),
                               an.attention_rollout(trace)[[5, 2]], atol=1e-6)


def test_rollout_start_and_end_layer_select_the_product():
    a = np.stack([causal([[1], [0.5, 0.5]])[None], causal([[1], [1, 0]])[None]])
    trace = AttentionTrace.from_dense(a, ["a", "b"])
    np.testing.assert_allclose(an.attention_rollout(trace, start_layer=1), [[1, 0], [0.5, 0.5]], atol=TOL)


def test_rollout_refuses_a_gap_in_the_captured_layers():
    a = np.stack([uniform_head(3)[None]] * 2)
    trace = AttentionTrace.from_dense(a, list("abc"), layers=[0, 2])
    with pytest.raises(ValueError, match=r"layers 1 were not captured"):
        an.attention_rollout(trace)


# --------------------------------------------------------------------------- comparing runs
def test_compare_reports_max_mean_and_first_big_differences():
    t1 = AttentionTrace.from_dense(uniform_head(3)[None, None], list("abc"))
    t2 = AttentionTrace.from_dense(previous_token_head(3)[None, None], list("abc"))
    c = an.compare_attention(t1, t2)
    np.testing.assert_allclose(c.max_diff, [[2 / 3]], atol=TOL)
    # |diff| over the 6 visible entries: 0, .5, .5, 1/3, 2/3, 1/3
    np.testing.assert_allclose(c.mean_diff, [[(1 + 4 / 3) / 6]], atol=TOL)
    assert [(d.query_1, d.key_1) for d in c.big_diffs] == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert c.queries.identical


def test_compare_limits_the_listed_positions():
    t1 = AttentionTrace.from_dense(uniform_head(3)[None, None], list("abc"))
    t2 = AttentionTrace.from_dense(previous_token_head(3)[None, None], list("abc"))
    c = an.compare_attention(t1, t2, max_positions=2)
    assert len(c.big_diffs) == 2 and c.n_big == 5


def test_compare_aligns_different_token_sequences():
    t1 = AttentionTrace.from_dense(uniform_head(3)[None, None], ["a", "b", "c"], token_ids=[1, 2, 3])
    a2 = causal([[1], [0.5, 0.5], [0.5, 0, 0.5], [1 / 3, 0, 1 / 3, 1 / 3]])
    t2 = AttentionTrace.from_dense(a2[None, None], ["a", "x", "b", "c"], token_ids=[1, 9, 2, 3])
    c = an.compare_attention(t1, t2)
    assert c.queries.pairs.tolist() == [[0, 0], [1, 2], [2, 3]]
    assert c.queries.unaligned_1 == () and c.queries.unaligned_2 == (1,)
    assert c.overall_max < TOL


def test_compare_takes_one_layer_as_an_int():
    a = np.stack([uniform_head(3)[None], previous_token_head(3)[None]])
    t1 = AttentionTrace.from_dense(a, list("abc"))
    t2 = AttentionTrace.from_dense(a[::-1], list("abc"))
    c = an.compare_attention(t1, t2, layers=0)
    assert c.layers == (0,)
    np.testing.assert_allclose(c.max_diff, [[2 / 3]], atol=TOL)


def test_compare_refuses_traces_of_different_models():
    t1 = AttentionTrace.from_dense(uniform_head(3)[None, None], list("abc"), model_name="smollm2")
    t2 = AttentionTrace.from_dense(uniform_head(3)[None, None], list("abc"), model_name="gpt2")
    with pytest.raises(ValueError, match=r"different models: trace_1 is 'smollm2'.*trace_2 is 'gpt2'"):
        an.compare_attention(t1, t2)


# --------------------------------------------------------------------------- head roles
def repeated_trace(heads):
    """BOS then x y z twice: positions 1..3 and 4..6."""
    return AttentionTrace.from_dense(np.stack(heads)[None], ["<s>", "x", "y", "z", "x", "y", "z"],
                                     token_ids=[0, 7, 8, 9, 7, 8, 9])


def head_from(targets, t=7):
    """Query i puts all its weight on key targets.get(i, 0)."""
    return causal([[0.0] * targets.get(i, 0) + [1.0] + [0.0] * (i - targets.get(i, 0)) for i in range(t)])


def test_induction_score_reads_the_token_after_the_previous_occurrence():
    induction = head_from({4: 2, 5: 3, 6: 4})
    duplicate = head_from({4: 1, 5: 2, 6: 3})
    s = an.induction_scores(repeated_trace([induction, duplicate]), 3, offset=1)
    np.testing.assert_allclose(s.induction, [[1, 0]], atol=TOL)
    np.testing.assert_allclose(s.duplicate, [[0, 1]], atol=TOL)


def test_induction_score_averages_over_the_second_copy():
    half = head_from({4: 2})  # only the first of three queries of the second copy
    s = an.induction_scores(repeated_trace([half]), 3, offset=1)
    np.testing.assert_allclose(s.induction, [[1 / 3]], atol=TOL)


def test_induction_scores_refuse_a_sequence_that_is_not_repeated():
    with pytest.raises(ValueError, match=r"not one sequence repeated twice"):
        an.induction_scores(repeated_trace([uniform_head(7)]), 3, offset=0)


# --------------------------------------------------------------------------- ignored context
# The mechanism tests below pass the article's thresholds (1, 1, any position; 0.7, 0.5, 0.5; 0.5,
# 0.5): the defaults are calibrated on SmolLM2 runs (tests/test_calibration.py). A check that did
# not separate failing from normal runs there fires into ``information``, not ``findings``.
def fired(report) -> list[str]:
    """Names of everything that fired: findings, and checks shown as information."""
    return report.finding_names + [f.name for f in report.information]


CONTEXT_TOKENS = ["<s>", "The", " capital", " is", " Paris", ".", " Answer", ":", " London"]


def context_trace(*rows_of_query_7):
    """9 tokens, the last one generated; query 7 (which produced it) gets the given rows, one per
    head; every other query puts half its attention on position 0 (the sink)."""
    heads = []
    for row in rows_of_query_7:
        a = sink_head(9)
        a[7, :8] = row
        heads.append(a)
    return AttentionTrace.from_dense(np.stack(heads)[None], CONTEXT_TOKENS, prompt_len=8)


DISTRACTED = ([0.5, 0.03, 0.3, 0.05, 0.02, 0.05, 0.03, 0.02],
              [0.5, 0.04, 0.25, 0.05, 0.06, 0.05, 0.03, 0.02])


def test_ignored_context_mass_is_per_layer_head_mean_and_strongest_head():
    r = an.ignored_context(context_trace(*DISTRACTED), -1, "Paris")
    assert r.query_position == 7 and r.context_positions == [4]
    np.testing.assert_allclose(r.mass_by_layer, [0.04], atol=TOL)
    assert r.strongest_head_by_layer.tolist() == [1]
    np.testing.assert_allclose(r.strongest_head_mass_by_layer, [0.06], atol=TOL)


def test_ignored_context_leaves_the_sink_out_of_shares_and_rank():
    r = an.ignored_context(context_trace(*DISTRACTED), 8, "Paris")
    assert r.sink_positions == [0] and r.sink_mass == pytest.approx(0.5, abs=TOL)
    assert r.share == pytest.approx(0.04 / 0.5, abs=TOL)
    assert r.uniform_share == pytest.approx(1 / 7)
    assert r.rank == 4  # behind " capital", " is" and "."


def test_ignored_context_finds_low_attention_to_relevant():
    r = an.ignored_context(context_trace(*DISTRACTED), 8, "Paris", low_ratio=1.0)
    assert "low_attention_to_relevant" in fired(r)


def test_ignored_context_lists_the_distracting_positions():
    r = an.ignored_context(context_trace(*DISTRACTED), 8, "Paris", top_k=2, irrelevant_ratio=1.0)
    assert [(p, t) for p, t, _ in r.top_outside] == [(2, " capital"), (3, " is")]
    found = {f.name: f for f in r.findings + r.information}["high_attention_to_irrelevant"]
    assert found.positions == (2, 3)


def test_ignored_context_finds_attention_next_to_the_context():
    r = an.ignored_context(context_trace([0.5, 0.02, 0.02, 0.02, 0.1, 0.3, 0.02, 0.02]), 8, "Paris",
                           position_window=1, wrong_count=0)
    assert [(p, t) for p, t, _ in r.wrong_positions] == [(5, ".")]
    assert "attention_to_wrong_position" in fired(r)


def test_ignored_context_finds_nothing_when_the_context_is_attended():
    r = an.ignored_context(context_trace([0.5, 0, 0, 0, 0.45, 0.05, 0, 0]), 8, "Paris")
    assert fired(r) == [] and r.rank == 1
    assert "no finding fired" in r.summary()


def test_ignored_context_refuses_a_prompt_position():
    with pytest.raises(IndexError, match=r"output_position 4 is not a generated token: .* 8\.\.8"):
        an.ignored_context(context_trace(*DISTRACTED), 4, "Paris")


def test_ignored_context_refuses_a_position_out_of_range():
    with pytest.raises(IndexError, match=r"output_position 9 is out of range: allowed 0\.\.8"):
        an.ignored_context(context_trace(*DISTRACTED), 9, "Paris")


def test_ignored_context_refuses_a_context_not_in_the_text():
    with pytest.raises(ValueError, match=r"context='Berlin': span 'Berlin' not found in the text"):
        an.ignored_context(context_trace(*DISTRACTED), 8, "Berlin")


def test_ignored_context_needs_generation():
    trace = AttentionTrace.from_dense(sink_head(9)[None, None], CONTEXT_TOKENS)
    with pytest.raises(ValueError, match=r"ignored_context needs generated tokens.*max_new_tokens > 0"):
        an.ignored_context(trace, 8, "Paris")


# --------------------------------------------------------------------------- hallucination
HALLUCINATION_TOKENS = ["<s>", " cat", " and", " cat", ".", " A", " dog", " dog", " dog", " dog"]


def hallucination_trace(row_of_query_8):
    a = sink_head(10)
    a[8, :9] = row_of_query_8
    return AttentionTrace.from_dense(a[None, None], HALLUCINATION_TOKENS, prompt_len=6)


def test_hallucination_finds_attention_spread_thin():
    r = an.hallucination(hallucination_trace([1 / 9] * 9), 9, ignore_sinks=False, spread_threshold=0.7,
                         similar_threshold=0.5, loop_threshold=0.5)
    np.testing.assert_allclose(r.normalised_entropy, [1], atol=TOL)
    assert fired(r) == ["attention_spread_thin"]


def test_hallucination_finds_attention_to_similar_context():
    r = an.hallucination(hallucination_trace([0.5, 0.2, 0.02, 0.2, 0.02, 0.02, 0.02, 0.01, 0.01]), 9,
                         similar_threshold=0.5)
    assert r.similar_positions == [1, 3]  # " cat" twice
    np.testing.assert_allclose(r.similar_share, [0.4 / 0.5], atol=TOL)
    assert "attention_to_similar_context" in fired(r)


def test_hallucination_finds_a_self_attention_loop():
    r = an.hallucination(hallucination_trace([0.5, 0.02, 0.02, 0.02, 0.02, 0.02, 0.2, 0.1, 0.1]), 9,
                         loop_threshold=0.5)
    np.testing.assert_allclose(r.generated_share, [0.4 / 0.5], atol=TOL)
    assert "self_attention_loop" in fired(r)


def test_hallucination_reports_one_row_per_position():
    r = an.hallucination(hallucination_trace([1 / 9] * 9), [7, 9])
    assert r.positions == [7, 9] and r.query_positions == [6, 8]
    assert r.normalised_entropy.shape == (2,)


# --------------------------------------------------------------------------- repetition
REPEAT_TOKENS = ["<s>", " Say", " it", " now", ":", " a", " b", " c", " a", " b", " c"]
REPEAT_IDS = [0, 1, 2, 3, 4, 10, 11, 12, 10, 11, 12]


def test_repetition_finds_the_repeated_ngram():
    trace = AttentionTrace.from_dense(sink_head(11)[None, None], REPEAT_TOKENS, prompt_len=5,
                                      token_ids=REPEAT_IDS)
    assert an.repetition(trace).repeats == [an.Repeat(5, 3, 3, " a b c")]


def test_repetition_reports_a_periodic_stretch_once_at_its_period():
    trace = AttentionTrace.from_dense(sink_head(8)[None, None], ["<s>", ":"] + [" a", " b"] * 3,
                                      prompt_len=2, token_ids=[0, 1] + [5, 6] * 3)
    assert an.repetition(trace).repeats == [an.Repeat(2, 2, 4, " a b a b")]


def test_repetition_measures_self_attention_during_the_second_copy():
    a = np.stack([previous_token_head(11), sink_head(11)])[None]
    r = an.repetition(AttentionTrace.from_dense(a, REPEAT_TOKENS, prompt_len=5, token_ids=REPEAT_IDS),
                      self_threshold=0.5)
    assert r.sink_positions == [0]
    # queries 7, 8, 9: head mean 0.25 on the sink, 0.25 / q on 1..q and 0.5 on q − 1; generated = 5..
    expected = np.mean([((q - 4) * 0.25 / q + 0.5) / 0.75 for q in (7, 8, 9)])
    assert r.self_share[0] == pytest.approx(expected, abs=TOL)
    assert "high_self_attention" in fired(r)


def test_repetition_finds_the_pattern_repeating_in_attention():
    a = np.stack([previous_token_head(11), sink_head(11)])[None]
    r = an.repetition(AttentionTrace.from_dense(a, REPEAT_TOKENS, prompt_len=5, token_ids=REPEAT_IDS),
                      pattern_threshold=0.5)
    # the previous-token head repeats exactly; the other head's rows are flat (no pattern)
    assert r.pattern_correlation[0] == pytest.approx(1.0, abs=1e-6)
    assert "pattern_in_attention" in fired(r)


def test_repetition_without_a_repeat_reports_nothing():
    trace = AttentionTrace.from_dense(sink_head(6)[None, None], list("abcdef"), prompt_len=2)
    r = an.repetition(trace)
    assert r.repeats == [] and fired(r) == []
    assert "no repeated n-gram" in r.summary()


def test_repetition_needs_generation():
    trace = AttentionTrace.from_dense(sink_head(6)[None, None], list("abcdef"))
    with pytest.raises(ValueError, match=r"repetition needs generated tokens"):
        an.repetition(trace)


# --------------------------------------------------------------------------- summaries and errors
def test_every_report_has_a_plain_text_summary(two_heads):
    trace = context_trace(*DISTRACTED)
    texts = [an.head_scores(two_heads).summary(), an.find_attention_sinks(two_heads).summary(),
             an.trace_influence(two_heads, 3).summary(), an.span_attention(two_heads, 3, [1]).summary(),
             an.compare_attention(two_heads, two_heads).summary(),
             an.ignored_context(trace, 8, "Paris", low_ratio=1.0).summary(),
             an.hallucination(trace, 8).summary()]
    assert all(isinstance(t, str) and t for t in texts)
    assert "' Paris'" in texts[5] and "low_attention_to_relevant" in texts[5]


def test_position_out_of_range_names_the_argument_and_range(two_heads):
    with pytest.raises(IndexError, match=r"position 4 is out of range: allowed 0\.\.3"):
        an.attention_from(two_heads, 4)


def test_uncaptured_layer_is_refused(two_heads):
    with pytest.raises(IndexError, match=r"layer 3 was not captured"):
        an.head_scores(two_heads, layers=3)


def test_span_not_found_names_the_span(paris):
    with pytest.raises(ValueError, match=r"span='Berlin': span 'Berlin' not found"):
        an.span_attention(paris, 4, "Berlin")


def test_analysis_imports_without_torch():
    code = "import sys, attn_widget.analysis; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
