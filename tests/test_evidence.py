"""Evidence from the model's output (attn_widget.analysis.evidence) and the reports' findings
from it: every number against a direct computation with a tiny random model, and the findings on
toy models whose dependence on the context is known."""

import numpy as np
import pytest
import torch
from conftest import tiny_model

import attn_widget as aw
from attn_widget import analysis as an
from attn_widget.analysis import evidence as ev
from attn_widget.analysis.findings import CALIBRATION
from attn_widget.trace import AttentionTrace

PROMPT = "w5 w7 w9 w11 w13 w2 w4 w6 w8"
TOL = 1e-5


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def trace(llama, word_tokenizer):
    return aw.capture(llama, word_tokenizer, PROMPT, max_new_tokens=8, min_new_tokens=8)


def next_logp(model, ids) -> np.ndarray:
    """log-softmax of the logits after the last of ``ids``: the direct computation."""
    with torch.no_grad():
        logits = model(torch.tensor([list(ids)])).logits[0, -1].double()
    return torch.log_softmax(logits, -1).numpy()


# --------------------------------------------------------------------------- context ablation
@pytest.mark.parametrize("ablation", ["drop", "replace"])
def test_context_ablation_equals_log_probs_computed_with_and_without_the_context(llama, word_tokenizer,
                                                                               trace, ablation):
    ids = trace.tokens.ids.tolist()
    out, span = trace.prompt_len + 2, [2, 3]
    r = ev.context_ablation(llama, word_tokenizer, trace, out, span, ablation=ablation, filler="w1",
                            n_tokens=4)
    filler = word_tokenizer("w1", add_special_tokens=False)["input_ids"][0]
    ablated = ([t for i, t in enumerate(ids) if i not in span] if ablation == "drop"
               else [filler if i in span else t for i, t in enumerate(ids)])
    shift = len(ids) - len(ablated)
    assert r.logprob_with == pytest.approx(next_logp(llama, ids[:out])[ids[out]], abs=TOL)
    assert r.logprob_without == pytest.approx(next_logp(llama, ablated[:out - shift])[ids[out]], abs=TOL)
    assert r.logprob_change == pytest.approx(r.logprob_with - r.logprob_without)
    with_sum = sum(next_logp(llama, ids[:p])[ids[p]] for p in range(out, out + 4))
    without_sum = sum(next_logp(llama, ablated[:p - shift])[ids[p]] for p in range(out, out + 4))
    assert r.continuation_logprob_with == pytest.approx(with_sum, abs=TOL)
    assert r.continuation_logprob_without == pytest.approx(without_sum, abs=TOL)
    # greedy without the context, one argmax at a time
    x = ablated[:out - shift]
    for _ in range(4):
        x = x + [int(np.argmax(next_logp(llama, x)))]
    assert r.continuation_without == word_tokenizer.decode(x[out - shift:])
    top = int(np.argmax(next_logp(llama, ablated[:out - shift])))
    assert r.same_output == (top == ids[out])
    assert r.continuation == "".join(trace.tokens.text[out:out + 4])


def test_context_ablation_refuses_a_context_after_the_output(llama, word_tokenizer, trace):
    out = trace.prompt_len + 1
    with pytest.raises(ValueError, match=r"not all before the output"):
        ev.context_ablation(llama, word_tokenizer, trace, out, [out + 1])


def test_replacing_needs_a_filler_of_one_token(llama, word_tokenizer, trace):
    with pytest.raises(ValueError, match=r"filler must be one token.*'w1 w2' is 2 tokens"):
        ev.context_ablation(llama, word_tokenizer, trace, trace.prompt_len + 1, [2], ablation="replace",
                            filler="w1 w2")


def test_an_unknown_ablation_is_refused(llama, word_tokenizer, trace):
    with pytest.raises(ValueError, match=r"ablation must be one of \('drop', 'replace'\); got 'mask'"):
        ev.context_ablation(llama, word_tokenizer, trace, trace.prompt_len + 1, [2], ablation="mask")


# --------------------------------------------------------------------------- confidence, repeats
def test_output_confidence_is_log_prob_entropy_and_margin_of_each_step(llama, word_tokenizer, trace):
    ids = trace.tokens.ids.tolist()
    positions = [trace.prompt_len, trace.prompt_len + 3, len(ids) - 1]
    r = ev.output_confidence(llama, word_tokenizer, trace, positions)
    for j, p in enumerate(positions):
        logp = next_logp(llama, ids[:p])
        prob = np.exp(logp)
        assert r.logprob[j] == pytest.approx(logp[ids[p]], abs=TOL)
        assert r.entropy[j] == pytest.approx(-(prob * logp).sum(), abs=TOL)
        top2 = np.sort(prob)[-2:]
        assert r.margin[j] == pytest.approx(top2[1] - top2[0], abs=TOL)
        assert r.top[j] == word_tokenizer.decode([int(np.argmax(logp))])
    assert "mean entropy" in r.summary()


def test_repeat_probability_is_the_mean_probability_of_each_copy(llama, trace):
    ids = trace.tokens.ids.tolist()
    g0 = trace.prompt_len
    repeat = an.Repeat(g0, 3, 2, "")  # scores tokens g0, g0+1 and g0+3, g0+4 whatever they are
    r = ev.repeat_probability(llama, trace, [repeat])
    prob = {p: np.exp(next_logp(llama, ids[:p])[ids[p]]) for p in range(g0, g0 + 5)}
    assert r.probability[0] == pytest.approx((prob[g0 + 3] + prob[g0 + 4]) / 2, abs=TOL)
    assert r.first_probability[0] == pytest.approx((prob[g0] + prob[g0 + 1]) / 2, abs=TOL)
    assert r.starts == [g0 + 3] and r.lengths == [2]


def test_evidence_needs_a_decoder_only_trace(word_tokenizer):
    model = tiny_model("t5")
    trace = aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=3)
    with pytest.raises(ValueError, match=r"runs a causal language model .* encoder-decoder"):
        ev.output_confidence(model, word_tokenizer, trace, [-1])


# --------------------------------------------------------------------------- findings on toy models
class ToyLM(torch.nn.Module):
    """A causal LM over ``vocab`` ids whose next-token logits are ``scores`` everywhere, plus
    ``effect`` on token ``answer`` once token ``cue`` has been seen."""

    def __init__(self, vocab, answer, cue, effect, scores=None):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.vocab, self.answer, self.cue, self.effect = vocab, answer, cue, effect
        self.scores = torch.zeros(vocab) if scores is None else torch.as_tensor(scores, dtype=torch.float)

    def forward(self, input_ids, attention_mask=None):
        seen = (input_ids == self.cue).long().cummax(dim=1).values.float()
        logits = self.scores.expand(*input_ids.shape, self.vocab).clone()
        logits[..., self.answer] += self.effect * seen
        return type("Out", (), {"logits": logits})

    def generate(self, input_ids, attention_mask=None, max_new_tokens=1, do_sample=False, pad_token_id=None):
        x = input_ids
        for _ in range(max_new_tokens):
            x = torch.cat([x, self.forward(x).logits[:, -1:].argmax(-1)], dim=1)
        return x


class ToyTokenizer:
    eos_token_id = None

    def decode(self, ids):
        return "".join(f" t{i}" for i in ids)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(w[1:]) for w in text.split()]}


IDS = [0, 11, 12, 13, 14, 15, 16, 17, 20]  # the cue (13) in the prompt, the answer (20) generated


def toy_trace():
    a = np.tril(np.ones((len(IDS), len(IDS))))
    a /= a.sum(axis=1, keepdims=True)
    return AttentionTrace.from_dense(a[None, None], [f" t{i}" for i in IDS], prompt_len=8, token_ids=IDS)


def raised_or_shown(report, name):
    """Where a check that fired must be: findings if it separated the evaluation's runs, else information."""
    names = report.finding_names if CALIBRATION[name].discriminates else [f.name for f in report.information]
    return name in names


def fired_at_all(report, name):
    return name in report.finding_names + [f.name for f in report.information]


def test_output_that_the_context_lowers_is_flagged_as_unchanged_without_it():
    # the context makes the answer less likely: the model answered despite it
    r = an.ignored_context(toy_trace(), -1, [3], model=ToyLM(30, 20, 13, -8.0, scores=np.eye(30)[20] * 6),
                           tokenizer=ToyTokenizer())
    assert r.evidence.logprob_change < -3 and r.evidence.same_output
    assert raised_or_shown(r, "output_unchanged_without_context")
    assert "from the model output" in r.summary() and "model output, context dropped" in r.summary()


def test_output_copied_from_the_context_is_not_flagged():
    r = an.ignored_context(toy_trace(), -1, [3], model=ToyLM(3000, 20, 13, 14.0), tokenizer=ToyTokenizer())
    assert r.evidence.logprob_change > 7 and not r.evidence.same_output
    assert not fired_at_all(r, "output_unchanged_without_context")


def test_uniform_output_is_flagged_as_unsure_and_a_sure_one_is_not():
    unsure = an.hallucination(toy_trace(), -1, model=ToyLM(5000, 20, 13, 0.0), tokenizer=ToyTokenizer())
    assert unsure.evidence.entropy[0] == pytest.approx(np.log(5000), abs=1e-4)
    assert raised_or_shown(unsure, "low_output_confidence")
    sure = an.hallucination(toy_trace(), -1, model=ToyLM(5000, 20, 13, 30.0), tokenizer=ToyTokenizer())
    assert sure.evidence.entropy[0] < 1e-6
    assert not fired_at_all(sure, "low_output_confidence")


def repeat_trace():
    ids = [0, 1, 2, 3, 10, 11, 12, 10, 11, 12]
    a = np.tril(np.ones((len(ids), len(ids))))
    a /= a.sum(axis=1, keepdims=True)
    return AttentionTrace.from_dense(a[None, None], [f" t{i}" for i in ids], prompt_len=4, token_ids=ids)


class OracleLM(ToyLM):
    """Puts all its probability on the token that follows in ``ids``."""

    def __init__(self, ids):
        super().__init__(20, 0, 0, 0.0)
        self.ids = ids

    def forward(self, input_ids, attention_mask=None):
        t = input_ids.shape[1]
        logits = torch.full((1, t, self.vocab), -50.0)
        n = min(t, len(self.ids) - 1)  # the last position of the whole text has nothing to predict
        logits[0, torch.arange(n), torch.tensor(self.ids[1:n + 1])] = 50.0
        return type("Out", (), {"logits": logits})


def test_a_repeat_the_model_expected_is_flagged_and_an_unlikely_one_is_not():
    trace = repeat_trace()
    sure = an.repetition(trace, model=OracleLM(trace.tokens.ids.tolist()))
    assert sure.evidence.probability[0] == pytest.approx(1.0, abs=1e-6)
    assert raised_or_shown(sure, "confident_repeat")
    unsure = an.repetition(trace, model=ToyLM(20, 0, 0, 0.0))
    assert unsure.evidence.probability[0] == pytest.approx(1 / 20, abs=1e-6)
    assert not fired_at_all(unsure, "confident_repeat")


def test_a_report_given_a_model_needs_its_tokenizer():
    with pytest.raises(ValueError, match=r"ignored_context was given model= without tokenizer="):
        an.ignored_context(toy_trace(), -1, [3], model=ToyLM(30, 20, 13, 1.0))


def test_a_session_gives_the_reports_its_model(llama, word_tokenizer):
    session = aw.AttentionSession(llama, word_tokenizer, max_new_tokens=4, min_new_tokens=4)
    with pytest.raises(ValueError, match=r"there is none yet"):
        session.hallucination(-1)
    trace = session.capture(PROMPT)
    r = session.ignored_context(-1, [2, 3])
    direct = ev.context_ablation(llama, word_tokenizer, trace, -1, [2, 3])
    assert r.evidence.logprob_with == direct.logprob_with
    assert session.hallucination([-2, -1]).evidence.positions == [len(trace) - 2, len(trace) - 1]
    assert session.repetition().evidence is not None
