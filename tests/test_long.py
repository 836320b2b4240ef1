"""Long traces: rows, pooled images and regions computed on demand from queries and keys.

A causal row ``p`` depends only on tokens ``<= p``, so every row of a long trace can be checked
against an eager forward pass over the matching prefix; a pooled image must equal max-pooling
the materialised head; a region must equal the slice of the whole head.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_model

import attn_widget as aw
from attn_widget import trace as trace_module
from attn_widget.querykeys import ROW_CHUNK, QueryKeys
from attn_widget.trace import AttentionBlock


def _qk_block(t: int, *, causal: bool = True, window: int = 0, softcap: float = 0.0,
              seed: int = 0) -> AttentionBlock:
    rng = np.random.default_rng(seed)
    qk = QueryKeys(rng.standard_normal((2, 4, t, 8), np.float32) * 2,
                   rng.standard_normal((2, 2, t, 8), np.float32) * 2,
                   np.array([0, 0, 1, 1]), np.array([0.35, 0.35]), np.array([0, window]),
                   softcap=softcap, causal=causal)
    return AttentionBlock("self", causal, (0, 1), (0, 1, 2, 3), qk=qk)


def _max_pool(a: np.ndarray, side: int) -> np.ndarray:
    r, c = math.ceil(a.shape[0] / side), math.ceil(a.shape[1] / side)
    padded = np.zeros((r * side, c * side), np.float32)
    padded[:a.shape[0], :a.shape[1]] = a
    return padded.reshape(r, side, c, side).max(axis=(1, 3))


@pytest.mark.parametrize("causal, window, softcap", [(True, 0, 0.0), (True, 300, 20.0),
                                                     (False, 0, 0.0)])
@pytest.mark.parametrize("side", [1, 7, 64, 2000])
def test_pooled_image_equals_max_pooling_the_materialised_head(causal, window, softcap, side):
    b = _qk_block(1100, causal=causal, window=window, softcap=softcap)
    for hi in (0, 3, None):
        whole = b.dense(1, slice(None)).mean(axis=0) if hi is None else b.dense(1, hi)
        np.testing.assert_allclose(b.pooled(1, hi, side), _max_pool(whole, side), rtol=0, atol=1e-6)
    # a weights-form block gives the same pooled image from its stored float16
    w = AttentionBlock("self", causal, b.layers, b.heads, data=b.data)
    np.testing.assert_allclose(w.pooled(1, 2, side), _max_pool(w.dense(1, 2), side), atol=1e-6)


def test_region_equals_the_slice_of_the_whole_head_and_rows_stay_normalised():
    b = _qk_block(1300, window=400)
    whole = b.dense(0, 1)
    got = b.region(0, 1, (200, 1250), (37, 900))
    np.testing.assert_allclose(got, whole[200:1250, 37:900], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b.rows(0, 1, 0, 1300).sum(axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="inside 1300 queries"):
        b.region(0, 1, (0, 1301), (0, 10))


def test_rows_asked_in_any_pieces_equal_the_whole_head():
    """Rows come ROW_CHUNK at a time whatever is asked; pieces that straddle chunks agree."""
    b = _qk_block(3 * ROW_CHUNK + 5)
    whole = b.rows(1, 2, 0, b.n_queries)
    pieces = np.concatenate([b.rows(1, 2, s, min(s + 100, b.n_queries))
                             for s in range(0, b.n_queries, 100)])
    np.testing.assert_allclose(whole, pieces, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("causal", [True, False])
def test_a_layer_pooled_in_one_pass_equals_each_head_and_the_mean_pooled_alone(causal):
    side = 7
    one = _qk_block(ROW_CHUNK + 40, causal=causal, window=0)
    alone = [one.pooled(1, h, side) for h in range(4)] + [one.pooled(1, None, side)]
    layer = _qk_block(ROW_CHUNK + 40, causal=causal).pooled_layer(1, side)
    assert len(layer) == 5
    for a, b in zip(alone, layer):
        np.testing.assert_array_equal(a, b)
    whole = one.rows(1, slice(None), 0, one.n_queries).mean(axis=0)
    np.testing.assert_allclose(layer[-1], _max_pool(whole, side), rtol=1e-5, atol=1e-7)


def test_pooled_layer_fills_the_cache_that_pooled_reads_and_holding_keeps_more(monkeypatch):
    monkeypatch.setattr(trace_module, "CACHE_BYTES", 100_000)
    b = _qk_block(300)
    with b.cache_holding(2_000_000):
        made = b.pooled_layer(0, 3) + b.pooled_layer(1, 3)  # ten 100 × 100 float32: 400 kB
        assert all(b.pooled(li, h, 3) is made[li * 5 + (4 if h is None else h)]
                   for li in (0, 1) for h in (0, 1, 2, 3, None))
    assert b.pooled(0, 0, 3) is not made[0]  # back under 100 kB: the oldest went
    assert b.pooled(1, None, 3) is made[-1]


def test_the_block_cache_stays_under_its_budget(monkeypatch):
    monkeypatch.setattr(trace_module, "CACHE_BYTES", 200_000)
    b = _qk_block(300)
    first = b.pooled(0, 0, 3)  # 100 × 100 float32 = 40 kB
    assert b.pooled(0, 0, 3) is first  # served from the cache
    kept = {key: b.pooled(*key, 3) for key in ((0, 1), (0, 2), (0, 3), (1, 0))}
    assert b.pooled(0, 0, 3) is first  # five entries, 200 kB: all kept; (0, 0) now used last
    b.pooled(1, 1, 3)  # one more: the least recently used, (0, 1), goes
    assert b.pooled(0, 1, 3) is not kept[(0, 1)]
    assert b.pooled(0, 0, 3) is first and b.pooled(1, 0, 3) is kept[(1, 0)]
    big = b.pooled(0, 0, 1)  # 360 kB: over a quarter of the budget, returned but not kept
    assert b.pooled(0, 0, 1) is not big
    with pytest.raises(ValueError):
        first[0, 0] = 1  # cached arrays are read-only: a caller cannot change what others get


def test_rows_of_a_long_capture_equal_eager_passes_over_each_prefix(word_tokenizer):
    """1500 tokens on SDPA, stored as queries and keys: row p equals the eager model's last row
    over tokens 0..p (causal rows depend only on the prefix)."""
    model = tiny_model("llama")
    model.set_attn_implementation("sdpa")
    ids = torch.randint(0, 100, (1500,), generator=torch.Generator().manual_seed(1)).tolist()
    trace = aw.capture(model, word_tokenizer, ids, form="queries-keys")
    b = trace.block()
    assert b.form == "queries-keys" and trace.n_tokens == 1500
    model.set_attn_implementation("eager")
    try:
        for p in (0, 511, 512, 1499):
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ids[:p + 1]]), output_attentions=True)
            for li, layer in enumerate(b.layers):
                want = out.attentions[layer][0, :, p].float().numpy()
                got = b.rows(li, np.arange(len(b.heads)), p, p + 1)[:, 0, :p + 1]
                np.testing.assert_allclose(got, want, atol=2e-6)
                assert not b.rows(li, 0, p, p + 1)[0, p + 1:].any()
    finally:
        model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_capture_progress_bar_counts_each_layers_prompt_pass_then_each_decode_step(
        monkeypatch, word_tokenizer, attn):
    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    model = tiny_model("llama")
    model.set_attn_implementation(attn)
    aw.capture(model, word_tokenizer, "w1 w2 w3 w4 w5", max_new_tokens=3, min_new_tokens=3, progress=True)
    assert len(bars) == 1 and bars[0].closed
    assert (bars[0].total, bars[0].n) == (2 + 3, 2 + 3)  # 2 layers' prompt pass, 3 decode steps
    aw.capture(model, word_tokenizer, "w1 w2 w3", max_new_tokens=3)  # short: no bar by default
    assert len(bars) == 1
