"""Snapshots of long traces: every head pooled at a stated resolution, the generated tokens' rows
at full resolution, under the budget; the page says what needs the live widget."""

from __future__ import annotations

import numpy as np
import pytest
from test_snapshot import Page

import attn_widget as aw
from attn_widget.querykeys import QueryKeys
from attn_widget.snapshot import long
from attn_widget.tokens import TokenTable
from attn_widget.trace import AttentionBlock, AttentionTrace


def long_trace(t: int = 3000, n_generated: int = 5, seed: int = 0) -> AttentionTrace:
    """2 layers × 3 heads of random queries and keys (one key/value group), a causal trace whose
    last ``n_generated`` tokens were generated."""
    rng = np.random.default_rng(seed)
    qk = QueryKeys(rng.standard_normal((2, 3, t, 8), np.float32) * 2,
                   rng.standard_normal((2, 1, t, 8), np.float32) * 2,
                   np.zeros(3, np.int64), np.array([0.35, 0.35]), np.array([0, 0]))
    block = AttentionBlock("self", True, (0, 1), (0, 1, 2), qk=qk)
    words = [f"w{i % 97} " for i in range(t)]
    tokens = TokenTable(list(range(t)), words, words)
    spans = {"prompt": (0, t - n_generated), "generated": (t - n_generated, t)}
    model = {"name": "random", "architecture": "decoder", "n_layers": 2, "n_heads": 3, "n_kv_heads": 1}
    return AttentionTrace(tokens, {"self": block}, spans, model, {"max_new_tokens": n_generated})


@pytest.fixture(scope="module")
def trace():
    return long_trace()


def test_every_head_is_pooled_at_the_stated_resolution_and_the_step_rows_are_exact(trace, tmp_path):
    snap = aw.save_snapshot(trace, tmp_path / "long.html", budget_mb=8)
    b = trace.block()
    assert snap.pool_side > 1 and snap.nbytes <= 8e6
    assert len(snap.heads) == 6 and not snap.left_out
    page = Page(snap.path.read_bytes())
    assert page.payload()[0]["pool_side"] == snap.pool_side
    side = snap.pool_side
    r = np.arange(-(-b.n_queries // side))
    below = r[None, :] <= r[:, None]  # squares on or below the diagonal hold attention
    for layer, head in [(0, 0), (1, 2), (1, "mean")]:
        got = page.section(0, f"pool/{layer}/{head}/{side}")
        assert got is not None, (layer, head)
        want = b.pooled(layer, None if head == "mean" else head, side)
        np.testing.assert_allclose(got.astype(np.float32)[below], want[below], rtol=1e-3, atol=1e-7)
    # the generation scrubber's rows: the producing query of each step over the whole context
    assert (0, -1) in snap.step_rows and (1, -1) in snap.step_rows
    for layer, head in snap.step_rows:
        name = "mean" if head == -1 else head
        for q in long.step_queries(trace):
            got = page.section(0, f"region/{layer}/{name}/{q}/{q + 1}/0/{q + 1}")
            assert got is not None, (layer, head, q)
            want = b.head_rows(layer, None if head == -1 else head, q, q + 1)[:, :q + 1]
            np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-3, atol=1e-7)
    text = page.text
    assert f"1 px = {side}×{side} tokens" in text.encode("ascii", "ignore").decode() or \
        f"1 px = {side}&#215;{side} tokens" in text
    assert "needs the live widget" in text
    assert "pooled" in str(snap) and str(side) in str(snap)


def test_a_smaller_budget_pools_coarser_and_still_fits(trace, tmp_path):
    big = aw.save_snapshot(trace, tmp_path / "big.html", budget_mb=8)
    small = aw.save_snapshot(trace, tmp_path / "small.html", budget_mb=2.0)
    assert small.pool_side > 2 * big.pool_side and small.nbytes <= 2.0e6
    assert len(small.heads) == 6  # every head, at the coarser resolution


def test_a_budget_below_the_fixed_parts_is_one_clear_error(trace, tmp_path):
    with pytest.raises(ValueError, match="raise budget_mb"):
        aw.save_snapshot(trace, tmp_path / "tiny.html", budget_mb=0.3)
    assert not (tmp_path / "tiny.html").exists()


def test_pool_side_for_fits_the_images_in_their_share():
    side = long.pool_side_for(8192, 8192, 300, 25e6, 3_000_000, 16)
    cells = -(-8192 // side)
    assert 2 * cells * cells * 300 <= long.POOLED_SHARE * (25e6 - 3_000_000)
    assert long.pool_side_for(8192, 8192, 300, 1e9, 3_000_000, 16) == 16  # never finer than the frame
    assert long.pool_side_for(8192, 8192, 300, 2e6, 3_000_000, 16) == 0  # nothing left for images


def test_a_trace_whose_exact_means_cannot_fit_is_pooled_though_the_widget_would_send_it_whole(tmp_path):
    """2048 tokens: a head is 4 MB, under the widget's pool_above, but two layer means alone
    are over twice what a 5 MB budget leaves: the snapshot pools instead of refusing."""
    snap = aw.save_snapshot(long_trace(2048), tmp_path / "mid.html", budget_mb=5)
    assert snap.pool_side >= 4 and snap.nbytes <= 5e6 and len(snap.heads) == 6
