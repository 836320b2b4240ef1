"""attn_widget.analysis on SmolLM2-135M-Instruct with real text.

Every number is checked against the attention the trace holds, recomputed here from the
trace's dense views (``trace.attention``, ``trace.row``, ``trace.step``).
"""

import numpy as np
import pytest

import attn_widget as aw
from attn_widget import analysis as an

pytestmark = pytest.mark.smollm2

TOL = 1e-4
ENGLISH = ("The old lighthouse keeper climbed the stairs every evening to light the lamp. Ships passed "
           "safely through the narrow channel, and the village slept.")


@pytest.fixture(scope="module")
def english(smollm2):
    model, tokenizer = smollm2
    return aw.capture(model, tokenizer, ENGLISH)


@pytest.fixture(scope="module")
def probe(smollm2):
    model, tokenizer = smollm2
    return an.induction_probe(model, tokenizer, n=50, seed=0)


def test_induction_probe_finds_an_induction_head(probe):
    assert probe.induction.shape == (30, 9)
    layer, head, score = probe.top("induction", 1)[0]
    assert score > 0.5
    # the score is the mean of A[i, i - n + 1] over the second copy, as the trace holds it
    a = probe.trace.head(layer, head)
    i = np.arange(probe.offset + probe.n, probe.offset + 2 * probe.n)
    assert score == pytest.approx(a[i, i - probe.n + 1].mean(), abs=TOL)


def test_induction_probe_input_is_random_tokens_repeated_twice(probe):
    ids = probe.trace.tokens.ids[probe.offset:]
    assert len(ids) == 2 * probe.n and len(set(ids[:probe.n].tolist())) == probe.n
    np.testing.assert_array_equal(ids[:probe.n], ids[probe.n:])


def test_duplicate_scores_read_the_previous_occurrence(probe):
    layer, head, score = probe.top("duplicate", 1)[0]
    a = probe.trace.head(layer, head)
    i = np.arange(probe.offset + probe.n, probe.offset + 2 * probe.n)
    assert score == pytest.approx(a[i, i - probe.n].mean(), abs=TOL)


def test_both_sink_rules_find_position_0_on_an_english_prompt(english):
    sinks = an.find_attention_sinks(english)
    assert english.tokens.display[0] == "The"  # an ordinary word, no BOS token
    assert 0 in sinks.received_sinks
    assert 0 in sinks.head_sinks
    assert 0 in sinks.positions


def test_sink_numbers_are_the_attention_the_trace_holds(english):
    sinks = an.find_attention_sinks(english)
    a = english.attention().astype(np.float64)
    t = len(english)
    np.testing.assert_allclose(sinks.received, a.sum(axis=2).mean(axis=(0, 1)) / t, atol=TOL)
    np.testing.assert_allclose(sinks.alpha, a.sum(axis=2) / (t - np.arange(t)), atol=TOL)


def test_head_scores_are_the_attention_the_trace_holds(english):
    scores = an.head_scores(english)
    a = english.attention().astype(np.float64)
    t = len(english)
    assert scores.normalised_entropy.shape == (30, 9)
    np.testing.assert_allclose(scores.previous_token_score,
                               a[:, :, np.arange(1, t), np.arange(t - 1)].mean(axis=-1), atol=TOL)
    np.testing.assert_allclose(scores.sink_score, a[:, :, :, 0].mean(axis=-1), atol=TOL)
    np.testing.assert_allclose(scores.self_score, np.diagonal(a, axis1=2, axis2=3).mean(axis=-1), atol=TOL)


def test_entropy_is_computed_from_the_trace_attention(english):
    a = english.attention(layers=[0, 15, 29]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = -np.where(a > 0, a * np.log(a), 0).sum(axis=-1)
    np.testing.assert_allclose(an.attention_entropy(english, layers=[0, 15, 29]), expected, atol=TOL)
    norm = an.attention_entropy(english, normalised=True)
    assert norm.min() >= 0 and norm.max() <= 1 + 1e-3


def test_views_read_rows_and_columns_of_the_trace(english):
    a = english.attention(layers=[3])[0]
    np.testing.assert_allclose(an.attention_from(english, 10, layers=3), a[:, 10].mean(axis=0), atol=TOL)
    np.testing.assert_allclose(an.attention_to(english, 2, layers=3, heads=4), a[4, :, 2], atol=TOL)
    np.testing.assert_allclose(an.layer_means(english, layers=[3])[0], a.mean(axis=0), atol=TOL)


def test_span_attention_to_paris_is_what_the_trace_holds(france_trace):
    q = len(france_trace) - 1
    s = an.span_attention(france_trace, q, "Paris")
    assert [france_trace.tokens.text[p] for p in s.positions] == [" Paris"]
    np.testing.assert_allclose(s.mass, france_trace.row(q)[:, :, s.positions].sum(axis=-1), atol=TOL)


def test_trace_influence_reads_the_last_layer_row(france_trace):
    q = france_trace.step_position(0)
    inf = an.trace_influence(france_trace, q)
    expected = france_trace.row(q)[-1].mean(axis=0)
    np.testing.assert_allclose(inf.attention, expected, atol=TOL)
    assert inf.influential_positions == np.nonzero(expected > 0.1)[0].tolist()
    assert inf.rollout.sum() == pytest.approx(1, abs=1e-4)


def test_rollout_equals_the_product_of_residual_layer_means(english):
    def step(layer):
        a = 0.5 * english.layer_mean(layer).astype(np.float64) + 0.5 * np.eye(len(english))
        return a / a.sum(axis=1, keepdims=True)

    expected = step(2) @ step(1) @ step(0)
    r = an.attention_rollout(english, start_layer=0, end_layer=2)
    np.testing.assert_allclose(r, expected, atol=1e-4)
    np.testing.assert_allclose(an.attention_rollout(english).sum(axis=1), 1, atol=1e-4)


def test_compare_a_generated_run_with_a_forward_pass_of_its_prompt(smollm2, france_trace):
    model, tokenizer = smollm2
    forward = aw.capture(model, tokenizer, france_trace.text[:france_trace.tokens.offsets[
        france_trace.prompt_len - 1, 1]], chat=False)
    c = an.compare_attention(france_trace, forward)
    # the stitched decode steps equal one forward pass up to float16 and kernel noise
    assert c.overall_max < 0.01
    assert c.queries.unaligned_1 == tuple(range(france_trace.prompt_len, len(france_trace)))
    assert c.queries.unaligned_2 == ()


def test_compare_two_prompts_aligns_the_shared_tokens(smollm2, english):
    model, tokenizer = smollm2
    other = aw.capture(model, tokenizer, ENGLISH.replace("lighthouse keeper", "baker"))
    c = an.compare_attention(english, other)
    changed = [english.tokens.text[p] for p in c.queries.unaligned_1]
    assert "".join(changed).strip() == "lighthouse keeper"
    assert [other.tokens.text[p] for p in c.queries.unaligned_2] == [" baker"]
    assert c.overall_max > 0.1 and len(c.big_diffs) == 10


def test_france_session_through_ignored_context(france_trace):
    for t in range(france_trace.n_generated):
        out = france_trace.prompt_len + t
        r = an.ignored_context(france_trace, out, "Paris")
        step = france_trace.step(t).astype(np.float64)  # (layers, heads, keys) that produced token t
        span = r.context_positions
        assert france_trace.tokens.text[span[0]] == " Paris" and r.query_position == out - 1
        np.testing.assert_allclose(r.mass_by_layer, step[:, :, span].sum(axis=-1).mean(axis=1), atol=TOL)
        assert r.strongest_head_by_layer.tolist() == step[:, :, span].sum(axis=-1).argmax(axis=1).tolist()
        np.testing.assert_allclose(r.attention, step.mean(axis=(0, 1))[:out], atol=TOL)
        assert r.mass == pytest.approx(step.mean(axis=(0, 1))[span].sum(), abs=TOL)
        assert r.sink_positions == [0]
        assert set(r.finding_names) <= {"low_attention_to_relevant", "high_attention_to_irrelevant",
                                        "attention_to_wrong_position"}
    assert "' Paris'" in r.summary()


def test_hallucination_report_on_the_france_answer(france_trace):
    positions = list(range(france_trace.prompt_len, len(france_trace)))
    r = an.hallucination(france_trace, positions)
    a = np.stack([france_trace.step(t) for t in range(france_trace.n_generated)], axis=2).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(a > 0, a * np.log(a), 0).sum(axis=-1) / np.log(np.array(positions))
    np.testing.assert_allclose(r.normalised_entropy, h.mean(axis=(0, 1)), atol=TOL)
    # " France" and " capital" occur twice in the prompt: items the model could confuse
    similar = {france_trace.tokens.text[p] for p in r.similar_positions}
    assert {" France", " capital"} <= similar


def test_repetition_finds_a_loop_in_generated_text(smollm2):
    model, tokenizer = smollm2
    trace = aw.capture(model, tokenizer, "I like cats. I like cats. I like cats. I like", max_new_tokens=30)
    r = an.repetition(trace)
    assert r.repeats, trace.text
    first = r.repeats[0]
    ids = trace.tokens.ids
    np.testing.assert_array_equal(ids[first.start:first.start + first.length],
                                  ids[first.start + first.shift:first.start + first.shift + first.length])
    # share of non-sink attention on generated tokens while the second copy was produced
    g0, sinks = trace.prompt_len, r.sink_positions
    rows = np.stack([trace.row(first.start + first.shift + j - 1).mean(axis=(0, 1))
                     for j in range(first.length)])
    rows[:, sinks] = 0
    assert r.self_share[0] == pytest.approx((rows[:, g0:].sum(1) / rows.sum(1)).mean(), abs=TOL)
    assert -1 <= r.pattern_correlation[0] <= 1


def _eval_reports():
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location("eval_reports", bench / "eval_reports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("task", ["context", "hallucination", "repetition"])
def test_the_stored_evaluation_numbers_are_what_the_reports_compute_now(smollm2, task):
    # tests/test_calibration.py calibrates on the stored numbers: they must be the reports' own
    import json

    evaluation = _eval_reports()
    model, tokenizer = smollm2
    stored = {r["id"]: r for r in json.loads((evaluation.DATA / "numbers.json").read_text())[task]}
    runs = [json.loads(line) for line in (evaluation.DATA / f"{task}.jsonl").read_text().splitlines()]
    fail, norm = evaluation.labels.FAILING_NORMAL[task]
    for label in (fail, norm):
        run = next(r for r in runs if r["label"] == label)
        got = evaluation.SCORERS[task](evaluation.forward_trace(model, tokenizer, run), run, model, tokenizer)
        for where, numbers in stored[run["id"]].items():
            if not isinstance(numbers, dict):
                continue
            for key, value in numbers.items():
                if isinstance(value, float):
                    assert got[where][key] == pytest.approx(value, rel=1e-2, abs=2e-3, nan_ok=True), \
                        (run["id"], where, key)
        # what the reports raised is the calibrated rule applied to their numbers (eval_reports --table)
        again = evaluation.refired({task: [got]})[task][0]
        for where, numbers in got.items():
            if isinstance(numbers, dict):
                for key in ("fires", "informs"):
                    assert numbers[key] == again[where][key], (run["id"], where, key)
