"""The widget's weighting (issue 12): "attention" or value-weighted "norm" (α_ij·‖f_h(x_j)‖,
Kobayashi et al. 2020), a synced trait; every section the front end fetches is keyed by it;
snapshots carry both within their budget. Also `induction_scores(weighting=)` and what
`attn-widget info` says about value norms.

Expected values come from the trace's own views (``trace.head(..., weighting="norm")``), which
tests/test_values.py checks against forward hooks on the value and output projections.
"""

from __future__ import annotations

import numpy as np
import pytest
import traitlets
from test_capture_fast import fast_model
from test_snapshot import Page, random_trace
from test_widget import Recorder

import attn_widget as aw
from attn_widget import analysis, encoding
from attn_widget.cli import main
from attn_widget.widget import MEAN, AttentionWidget

PROMPT = "w5 w7 w9 w11 w13 w2 w4 w6 w8"
F16 = dict(rtol=2**-10, atol=2**-24)  # float16 on the wire


@pytest.fixture(scope="module")
def model():
    return fast_model("llama")  # 2 layers × 4 query heads over 2 key/value groups


@pytest.fixture(scope="module")
def trace(model, word_tokenizer):
    return aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=3, values="norms")


@pytest.fixture(scope="module")
def plain(model, word_tokenizer):
    return aw.capture(model, word_tokenizer, PROMPT, max_new_tokens=3, values=False)


def fetch(widget, key, source=0):
    """The front end's fetch of ``key``: the reply, and the decoded arrays of its buffer."""
    [(reply, buffers)] = Recorder(widget).ask(type="fetch", id="v1-1", trace_id=widget.view_data.trace_id,
                                              source=source, key=key)
    return reply, (encoding.decode_payload(buffers[0])[1] if buffers else {})


def tril(m):
    return m[np.tril_indices(m.shape[0])]


# --------------------------------------------------------------------------- the trait
def test_weighting_is_a_synced_trait_offered_when_the_trace_has_value_norms(trace, plain):
    w = AttentionWidget(trace)
    assert w.weighting == "attention"
    state = w.get_state()
    assert state["weighting"] == "attention" and state["_weightings"] == ["attention", "norm"]
    w.weighting = "norm"  # from Python: the state the front end follows
    assert w.get_state()["weighting"] == "norm"
    assert AttentionWidget(plain).get_state()["_weightings"] == ["attention"]


def test_unknown_weighting_is_one_clear_error(trace):
    with pytest.raises(traitlets.TraitError, match=r"must be 'attention' .* or 'norm' .*; got 'value'"):
        AttentionWidget(trace, weighting="value")
    w = AttentionWidget(trace)
    with pytest.raises(traitlets.TraitError, match="weighting must be"):
        w.weighting = "Norm"
    assert w.weighting == "attention"


def test_norm_without_value_norms_says_how_to_capture_them(plain):
    with pytest.raises(traitlets.TraitError, match=r"needs the norms of the values.*values='norms'"):
        AttentionWidget(plain, weighting="norm")
    w = AttentionWidget(plain)
    with pytest.raises(traitlets.TraitError, match=r"aw\.capture\(\.\.\., values='norms'\)"):
        w.weighting = "norm"


def test_compare_names_the_trace_without_value_norms(trace, plain):
    with pytest.raises(traitlets.TraitError, match="trace B holds none"):
        aw.compare_widget(trace, plain, weighting="norm")
    assert aw.compare_widget(trace, plain).get_state()["_weightings"] == ["attention"]


def test_front_end_norm_without_value_norms_is_refused_with_a_notice(plain):
    w = AttentionWidget(plain)
    rec = Recorder(w)
    w.set_state({"weighting": "norm"})
    assert w.weighting == "attention"
    [notice] = [c for c, _ in rec.sent if c.get("type") == "notice"]
    assert "needs value norms" in notice["message"] and "values='norms'" in notice["message"]


def test_front_end_can_choose_norm(trace):
    w = AttentionWidget(trace)
    rec = Recorder(w)
    w.set_state({"weighting": "norm"})
    assert w.weighting == "norm" and not [c for c, _ in rec.sent if c.get("type") == "notice"]


# --------------------------------------------------------------------------- what is fetched
def test_value_weighted_heads_and_means_are_their_own_keys_equal_to_the_trace(trace):
    w = AttentionWidget(trace, send_all_below=0)
    reply, arrays = fetch(w, "head/1/2/norm")
    assert reply["type"] == "data" and reply["key"] == "head/1/2/norm"
    norm = arrays[(0, "head/1/2/norm")].astype(np.float32)
    np.testing.assert_allclose(norm, tril(trace.head(1, 2, weighting="norm")), **F16)
    _, raw = fetch(w, "head/1/2")
    raw = raw[(0, "head/1/2")].astype(np.float32)
    np.testing.assert_allclose(raw, tril(trace.head(1, 2)), **F16)
    assert not np.allclose(norm, raw, rtol=0.05)  # cached raw sections can never pass for these
    _, arrays = fetch(w, "mean/0/norm")
    np.testing.assert_allclose(arrays[(0, "mean/0/norm")].astype(np.float32),
                               tril(trace.layer_mean(0, weighting="norm")), **F16)


def test_pooled_and_region_keys_take_the_suffix_too(trace):
    w = AttentionWidget(trace, send_all_below=0)
    norm = trace.head(0, 1, weighting="norm")
    _, arrays = fetch(w, "region/0/1/4/8/0/5/norm")
    got = arrays[(0, "region/0/1/4/8/0/5/norm")].astype(np.float32)
    want = norm[4:8, 0:5]
    seen = np.arange(5)[None, :] <= np.arange(4, 8)[:, None]
    np.testing.assert_allclose(got[seen], want[seen], **F16)
    assert np.all(np.signbit(got[~seen]))  # -0.0: no attention cell above the diagonal
    _, arrays = fetch(w, "pool/0/1/4/norm")
    pooled = arrays[(0, "pool/0/1/4/norm")].astype(np.float32)
    assert pooled[0, 0] == pytest.approx(norm[:4, :4].max(), rel=2**-10)
    _, arrays = fetch(w, "pool/0/mean/4/norm")
    assert arrays[(0, "pool/0/mean/4/norm")][2, 1] == pytest.approx(
        trace.layer_mean(0, weighting="norm")[8:12, 4:8].max(), rel=2**-10)


def test_the_grid_has_value_weighted_thumbnails_and_badges(trace):
    w = AttentionWidget(trace, send_all_below=0)
    reply, arrays = fetch(w, "grid/norm")
    assert reply["type"] == "data" and reply["key"] == "grid/norm"
    scores = analysis.head_scores(trace, weighting="norm")
    np.testing.assert_allclose(arrays[(0, "metric/sink_score/norm")], scores.sink_score, rtol=1e-5)
    thumbs = arrays[(0, "thumbs/norm")]
    np.testing.assert_array_equal(thumbs, encoding.thumbnails(trace, weighting="norm"))
    assert not np.array_equal(thumbs, encoding.thumbnails(trace))
    assert not any(key in arrays for key in [(0, "thumbs"), (0, "metric/sink_score")])


def test_a_value_weighted_key_of_a_trace_without_norms_is_answered_with_a_message(plain):
    w = AttentionWidget(plain, send_all_below=0)
    for key in ("head/0/0/norm", "grid/norm"):
        reply, arrays = fetch(w, key)
        assert reply["type"] == "error" and arrays == {}
        assert "values='norms'" in reply["message"], reply["message"]


def test_a_complete_payload_covers_the_weights_and_the_first_value_weighted_paint(trace):
    w = AttentionWidget(trace, layer=1, head=3, weighting="norm")
    header, arrays = encoding.decode_payload(w.view_data.payload)
    assert header["complete"]
    assert (0, "head/0/0") in arrays and (0, "thumbs") in arrays
    np.testing.assert_allclose(arrays[(0, "head/1/3/norm")].astype(np.float32),
                               tril(trace.head(1, 3, weighting="norm")), **F16)
    assert {k for _, k in arrays if k.endswith("/norm")} == {"head/1/3/norm", "mean/1/norm"}
    partial = AttentionWidget(trace, layer=1, head=MEAN, weighting="norm", send_all_below=0)
    assert {k for _, k in encoding.decode_payload(partial.view_data.payload)[1]} == {"mean/1/norm"}


def test_a_new_trace_without_norms_falls_back_to_attention(trace, plain):
    w = AttentionWidget(trace, weighting="norm")
    w.set_trace(plain)
    assert w.weighting == "attention" and w.get_state()["_weightings"] == ["attention"]
    w.set_trace(trace)
    assert w.get_state()["_weightings"] == ["attention", "norm"]


# --------------------------------------------------------------------------- snapshots
def test_snapshot_carries_the_value_weighted_views_and_opens_on_the_widgets_weighting(trace, tmp_path):
    w = AttentionWidget(trace, layer=1, head=2, weighting="norm")
    snap = aw.save_snapshot(w, tmp_path / "run.html")
    assert snap.weightings == ("attention", "norm") and snap.weighted_heads == snap.heads
    assert f"the grid and {len(snap.heads)} of the {len(snap.heads)} heads" in str(snap)
    page = Page((tmp_path / "run.html").read_bytes())
    state = page.manifest["state"]
    assert state["weighting"] == "norm" and state["_weightings"] == ["attention", "norm"]
    for layer, head in snap.heads:
        np.testing.assert_allclose(page.section(0, f"head/{layer}/{head}/norm").astype(np.float32),
                                   tril(trace.head(layer, head, weighting="norm")), **F16)
    np.testing.assert_allclose(page.section(0, "mean/0/norm").astype(np.float32),
                               tril(trace.layer_mean(0, weighting="norm")), **F16)
    assert page.reply(0, "grid/norm") is not None
    assert "Value-weighted views" not in page.text


def test_snapshot_budget_fills_the_weights_first_and_says_which_value_weighted_views_are_missing(
        trace, tmp_path):
    full = aw.save_snapshot(trace, tmp_path / "full.html")
    assert full.weighted_heads == full.heads and not full.left_out
    some = none = None
    for cut in range(200, 30_000, 200):  # smaller and smaller budgets
        snap = aw.save_snapshot(AttentionWidget(trace, weighting="norm"), tmp_path / "cut.html",
                                budget_mb=(full.nbytes - cut) / 1e6)
        assert snap.nbytes <= full.nbytes - cut
        if sorted(snap.heads) != sorted(full.heads):
            break  # from here on the weights themselves lose heads (the widget's head comes first)
        text = Page((tmp_path / "cut.html").read_bytes()).text
        if some is None and "norm" in snap.weightings and len(snap.weighted_heads) < len(snap.heads):
            some = snap
            assert snap.weighted_heads == snap.heads[:len(snap.weighted_heads)]
            missing = len(snap.heads) - len(snap.weighted_heads)
            assert f"Value-weighted views of {missing} of the {len(snap.heads)} heads here were left" in text
        if none is None and snap.weightings == ("attention",):
            none = cut
            assert "Value-weighted views are not in this file" in text
            page = Page((tmp_path / "cut.html").read_bytes())
            assert page.manifest["state"]["_weightings"] == ["attention"]
            assert page.manifest["state"]["weighting"] == "attention"  # the widget's is not in the file
            assert not [k for k in page.manifest["replies"] if "/norm" in k]
            break
    assert some is not None, "no budget kept the weights of every head and some value-weighted heads"
    assert none is not None, "no budget kept the weights of every head and no value-weighted view"


def test_snapshot_of_a_trace_without_norms_says_nothing_about_them(tmp_path):
    aw.save_snapshot(random_trace(), tmp_path / "plain.html")
    page = Page((tmp_path / "plain.html").read_bytes())
    assert "Value-weighted" not in page.text and page.manifest["state"]["_weightings"] == ["attention"]


# --------------------------------------------------------------------------- analysis and info
def test_induction_scores_take_weighting_like_the_other_analyses(model, word_tokenizer):
    words = "w3 w8 w1 w6 w9 w4"
    t = aw.capture(model, word_tokenizer, f"{words} {words}", values="norms")
    n = 6
    got = analysis.induction_scores(t, n, weighting="norm")
    a = t.attention(weighting="norm")
    a = a / a.sum(-1, keepdims=True)  # rows renormalised, as the other analyses read them
    i = np.arange(n, 2 * n)
    np.testing.assert_allclose(got.induction, a[:, :, i, i - n + 1].mean(-1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.duplicate, a[:, :, i, i - n].mean(-1), rtol=1e-5, atol=1e-7)
    raw = analysis.induction_scores(t, n)
    assert not np.allclose(raw.induction, got.induction)
    assert "weighting: value-weighted" in got.summary() and "weighting: attention" in raw.summary()
    plain = aw.capture(model, word_tokenizer, f"{words} {words}", values=False)
    with pytest.raises(ValueError, match="values='norms'"):
        analysis.induction_scores(plain, n, weighting="norm")


def test_info_says_whether_a_trace_file_has_value_norms(trace, plain, tmp_path, capsys):
    assert main(["info", str(trace.save(tmp_path / "norms.attn"))]) == 0
    assert "value norms: yes" in capsys.readouterr().out
    assert main(["info", str(plain.save(tmp_path / "plain.attn"))]) == 0
    out = capsys.readouterr().out
    assert "value norms: no" in out and "values='norms'" in out
