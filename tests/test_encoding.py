"""Trace → payload bytes (PROTOCOL.md "Payload"), and back, in Python and in the browser's decoder."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from attn_widget import encoding
from attn_widget.trace import AttentionTrace

ROOT = Path(__file__).resolve().parents[1]


def random_attention(n_layers, n_heads, t, *, causal=True, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random((n_layers, n_heads, t, t)) ** 6
    if causal:
        a = np.tril(a)
    return (a / a.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def dense():
    return random_attention(3, 4, 21)


@pytest.fixture
def trace(dense):
    return AttentionTrace.from_dense(dense, [f"tok{i}" for i in range(21)], prompt_len=15)


def unpack(values, t):
    out = np.full((t, t), np.nan, dtype=np.float32)
    out[np.tril_indices(t)] = values
    return out


def test_head_round_trips_within_float16_precision(trace, dense):
    payload = encoding.encode_payload({}, [encoding.head_section(trace, 2, 3)])
    _, arrays = encoding.decode_payload(payload)
    got = unpack(arrays[(0, "head/2/3")].astype(np.float32), 21)
    want = np.tril(dense[2, 3])
    lower = np.tril_indices(21)
    assert np.allclose(got[lower], want[lower], rtol=2**-11, atol=2**-24)


def test_small_weights_survive_the_encoding(trace, dense):
    _, arrays = encoding.decode_payload(encoding.encode_payload({}, [encoding.head_section(trace, 0, 0)]))
    got = unpack(arrays[(0, "head/0/0")].astype(np.float32), 21)
    small = (dense[0, 0] > 1e-5) & (dense[0, 0] < 1e-3)
    assert small.any()
    assert np.all(got[small] > 0)
    assert np.allclose(got[small], dense[0, 0][small], rtol=2**-11, atol=2**-25)


def test_layer_mean_is_the_mean_of_its_heads(trace, dense):
    _, arrays = encoding.decode_payload(encoding.encode_payload({}, [encoding.mean_section(trace, 1)]))
    got = unpack(arrays[(0, "mean/1")].astype(np.float32), 21)
    lower = np.tril_indices(21)
    assert np.allclose(got[lower], dense[1].mean(0)[lower], rtol=2**-10, atol=1e-6)


def test_encoder_attention_is_sent_dense():
    dense = random_attention(2, 2, 9, causal=False)
    trace = AttentionTrace.from_dense(dense, list("abcdefghi"), causal=False)
    section = encoding.head_section(trace, 1, 0)
    assert (section.layout, section.shape) == ("dense", (9, 9))
    _, arrays = encoding.decode_payload(encoding.encode_payload({}, [section]))
    assert np.allclose(arrays[(0, "head/1/0")].astype(np.float32), dense[1, 0], rtol=2**-11, atol=2**-25)


def test_sections_start_on_8_byte_boundaries(trace):
    payload = encoding.encode_payload({"x": "é"}, [encoding.head_section(trace, 0, h) for h in range(3)])
    header, _ = encoding.decode_payload(payload)
    n = int.from_bytes(payload[4:8], "little")
    assert (8 + n + 7) // 8 * 8 % 8 == 0
    assert [s["offset"] % 8 for s in header["sections"]] == [0, 0, 0]


def test_thumbnails_are_the_block_max_scaled_by_the_head_max():
    t = 70
    dense = random_attention(2, 3, t)
    trace = AttentionTrace.from_dense(dense, [str(i) for i in range(t)])
    thumbs = encoding.thumbnails(trace, size=32)
    block = 3  # ceil(70 / 32)
    s = 24  # ceil(70 / 3)
    assert thumbs.shape == (2, 3, s, s)
    padded = np.zeros((2, 3, s * block, s * block), np.float32)
    padded[..., :t, :t] = dense.astype(np.float16)
    pooled = padded.reshape(2, 3, s, block, s, block).max(axis=(3, 5))
    want = np.rint(255 * np.sqrt(pooled / pooled.max(axis=(2, 3), keepdims=True)))
    assert np.array_equal(thumbs, want.astype(np.uint8))


def test_small_trace_payload_is_complete_with_every_head_mean_and_the_grid(trace):
    metrics = {"sink_score": np.arange(12, dtype=np.float32).reshape(3, 4)}
    payload, header = encoding.trace_payload([trace], layer=0, head=0, metrics=[metrics])
    assert header["complete"] is True
    _, arrays = encoding.decode_payload(payload)
    keys = {k for _, k in arrays}
    assert {f"head/{layer}/{h}" for layer in range(3) for h in range(4)} <= keys
    assert {"mean/0", "mean/1", "mean/2", "thumbs", "metric/sink_score"} <= keys
    assert arrays[(0, "metric/sink_score")][2, 3] == 11


def test_long_trace_payload_holds_only_the_shown_head_and_its_layer_mean(trace):
    payload, header = encoding.trace_payload([trace], layer=1, head=2, send_all_below=1000)
    assert header["complete"] is False
    _, arrays = encoding.decode_payload(payload)
    assert sorted(k for _, k in arrays) == ["head/1/2", "mean/1"]


def test_mean_view_sends_no_single_head(trace):
    _, arrays = encoding.decode_payload(
        encoding.trace_payload([trace], layer=1, head=-1, send_all_below=0)[0])
    assert sorted(k for _, k in arrays) == ["mean/1"]


def test_header_describes_tokens_spans_and_captured_heads(trace):
    _, header = encoding.trace_payload([trace], layer=0, head=0, trace_id="abc")
    src = header["sources"][0]
    assert header["trace_id"] == "abc"
    assert src["tokens"]["text"][3] == "tok3"
    assert src["spans"] == {"prompt": [0, 15], "generated": [15, 21]}
    assert (src["layers"], src["heads"], src["causal"]) == ([0, 1, 2], [0, 1, 2, 3], True)


def test_compare_payload_has_one_source_per_trace(trace, dense):
    other = AttentionTrace.from_dense(dense[:, :, :18, :18], [f"u{i}" for i in range(18)])
    payload, header = encoding.trace_payload([trace, other], layer=0, head=1, send_all_below=0)
    assert header["mode"] == "compare"
    _, arrays = encoding.decode_payload(payload)
    assert {(0, "head/0/1"), (1, "head/0/1")} <= set(arrays)
    assert arrays[(1, "head/0/1")].size == 18 * 19 // 2


def test_fetch_of_a_head_that_was_not_captured_names_the_captured_ones(dense):
    trace = AttentionTrace.from_dense(dense, [str(i) for i in range(21)], heads=[0, 2, 5, 7])
    with pytest.raises(encoding.FetchError, match=r"head 3 was not captured.*0,2,5,7"):
        encoding.fetch_payload(trace, "head/0/3", source=0, trace_id="t")


@pytest.mark.parametrize("key", ["head/x/1", "everything", "mean", "head/1"])
def test_fetch_of_a_malformed_key_says_what_keys_look_like(trace, key):
    with pytest.raises(encoding.FetchError, match="cannot send"):
        encoding.fetch_payload(trace, key, source=0, trace_id="t")


def test_grid_fetch_holds_thumbnails_and_metrics(trace):
    metrics = {"sink_score": np.ones((3, 4))}
    header, arrays = encoding.decode_payload(encoding.fetch_payload(
        trace, "grid", source=1, trace_id="t", metrics=metrics, metric_descriptions={"sink_score": "d"}))
    assert header["metrics"] == {"sink_score": "d"}
    assert arrays[(1, "thumbs")].shape[:2] == (3, 4)
    assert arrays[(1, "metric/sink_score")].dtype == np.float32


def test_metric_of_the_wrong_shape_is_refused(trace):
    with pytest.raises(ValueError, match=r"metric 'bad' must have shape \(3, 4\)"):
        encoding.grid_sections(trace, {"bad": np.zeros((4, 3))})


def test_bad_magic_and_truncation_are_clear_errors(trace):
    payload = encoding.encode_payload({}, [encoding.head_section(trace, 0, 0)])
    with pytest.raises(ValueError, match="must start with b'AWP1'"):
        encoding.decode_payload(b"XXXX" + payload[4:])
    with pytest.raises(ValueError, match="truncated: section 'head/0/0'"):
        encoding.decode_payload(payload[:-16])


def test_model_summary_with_non_finite_numbers_stays_valid_json(dense):
    trace = AttentionTrace.from_dense(dense, [str(i) for i in range(21)])
    trace.model["rope_theta"] = float("inf")
    payload, _ = encoding.trace_payload([trace], layer=0, head=0)
    n = int.from_bytes(payload[4:8], "little")
    assert json.loads(payload[8:8 + n])["sources"][0]["model"]["rope_theta"] is None


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_the_browser_decoder_reads_python_payloads(tmp_path, trace, dense):
    payload, _ = encoding.trace_payload([trace], layer=2, head=1, send_all_below=0)
    path = tmp_path / "payload.bin"
    path.write_bytes(b"\x00" + payload)  # one leading byte: the decoder must cope with misalignment
    script = f"""
    import {{ readFileSync }} from "node:fs";
    import {{ decodePayload, valueAt }} from {json.dumps((ROOT / "js/src/payload.js").as_uri())};
    const bytes = readFileSync({json.dumps(str(path))});
    const {{ header, sections }} = decodePayload(new DataView(bytes.buffer, bytes.byteOffset + 1));
    const head = sections.get("0:head/2/1");
    const out = [];
    for (let q = 0; q < 21; q++) for (let k = 0; k <= q; k++) out.push(valueAt(head, q, k));
    console.log(JSON.stringify({{ trace_id: header.trace_id, keys: [...sections.keys()], values: out }}));
    """
    result = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True,
                            text=True, timeout=60, check=True)
    got = json.loads(result.stdout)
    assert got["keys"] == ["0:mean/2", "0:head/2/1"]
    lower = np.tril_indices(21)
    assert np.allclose(got["values"], dense[2, 1][lower], rtol=2**-11, atol=2**-24)


# --------------------------------------------------------------------- long traces: pool/ and region/
def qk_trace(t=300, n_layers=2, n_heads=3, seed=0, causal=True) -> AttentionTrace:
    """A trace holding random queries and keys (weights recomputed on demand)."""
    from attn_widget.querykeys import QueryKeys
    from attn_widget.tokens import TokenTable
    from attn_widget.trace import AttentionBlock

    rng = np.random.default_rng(seed)
    qk = QueryKeys(rng.standard_normal((n_layers, n_heads, t, 16), np.float32) * 1.5,
                   rng.standard_normal((n_layers, 1, t, 16), np.float32), np.zeros(n_heads, np.int64),
                   np.full(n_layers, 0.25), np.zeros(n_layers, np.int64), causal=causal)
    block = AttentionBlock("self", causal, tuple(range(n_layers)), tuple(range(n_heads)), qk=qk)
    words = [f" w{i}" for i in range(t)]
    spans = {"prompt": (0, t - 4), "generated": (t - 4, t)} if causal else {"input": (0, t)}
    model = {"name": "qk", "architecture": "decoder" if causal else "encoder", "n_layers": n_layers,
             "n_heads": n_heads, "n_kv_heads": 1}
    return AttentionTrace(TokenTable(list(range(t)), words, words), {"self": block}, spans, model)


def max_pool(a: np.ndarray, side: int) -> np.ndarray:
    r, c = -(-a.shape[0] // side), -(-a.shape[1] // side)
    padded = np.zeros((r * side, c * side), np.float32)
    padded[:a.shape[0], :a.shape[1]] = a
    return padded.reshape(r, side, c, side).max(axis=(1, 3))


@pytest.mark.parametrize("head", [2, "mean"])
def test_a_pooled_section_is_the_max_pooled_head_with_no_cell_above_the_diagonal(head):
    tr = qk_trace()
    key = f"pool/1/{head}/7"
    header, arrays = encoding.decode_payload(encoding.fetch_payload(tr, key, source=0, trace_id="t"))
    got = arrays[(0, key)]
    whole = tr.layer_mean(1) if head == "mean" else tr.head(1, 2)
    want = max_pool(whole, 7)
    assert got.shape == (43, 43) and header["sections"][0]["side"] == 7
    below = np.tril(np.ones_like(want, bool))
    np.testing.assert_allclose(got[below].astype(np.float32), want[below], rtol=2**-10, atol=2**-24)
    assert np.all(np.signbit(got[~below])) and np.all(got[~below] == 0)  # -0.0: no attention there


def test_a_region_is_the_slice_of_the_whole_head_at_full_resolution():
    tr = qk_trace()
    key = "region/0/1/100/180/60/200"
    header, arrays = encoding.decode_payload(encoding.fetch_payload(tr, key, source=0, trace_id="t"))
    entry = header["sections"][0]
    assert (entry["rows"], entry["cols"], entry["shape"]) == ([100, 180], [60, 200], [80, 140])
    got = arrays[(0, key)].astype(np.float32)
    want = tr.head(0, 1)[100:180, 60:200]
    seen = np.arange(60, 200)[None, :] <= np.arange(100, 180)[:, None]
    np.testing.assert_allclose(got[seen], want[seen], rtol=2**-10, atol=2**-24)
    assert np.all(np.signbit(arrays[(0, key)][~seen]))


def test_an_encoder_region_and_pool_hold_every_cell():
    tr = qk_trace(t=50, causal=False)
    _, arrays = encoding.decode_payload(encoding.fetch_payload(tr, "pool/0/0/8", source=0, trace_id="t"))
    np.testing.assert_allclose(arrays[(0, "pool/0/0/8")].astype(np.float32), max_pool(tr.head(0, 0), 8),
                               rtol=2**-10)
    assert not np.any(np.signbit(arrays[(0, "pool/0/0/8")]))


@pytest.mark.parametrize("key, message", [
    ("pool/0/1/0", "side must be a positive number of tokens; got 0"),
    ("pool/0/-1/4", "head must be a captured head index or 'mean'; got '-1'"),
    ("pool/0/9/4", "head 9 was not captured"),
    ("region/0/1/0/400/0/10", r"region rows 0:400 and columns 0:10 must be non-empty and inside 300"),
    ("region/0/1/5/5/0/10", "must be non-empty"),
    ("region/0/1", "key must be 'head/<layer>/<head>'"),
])
def test_pool_and_region_keys_that_cannot_be_answered_say_why(key, message):
    with pytest.raises(encoding.FetchError, match=message):
        encoding.fetch_payload(qk_trace(), key, source=0, trace_id="t")


def test_a_region_too_large_to_send_asks_for_a_smaller_one(monkeypatch):
    monkeypatch.setattr(encoding, "REGION_MAX_CELLS", 1000)
    with pytest.raises(encoding.FetchError, match="at most 1000 cells; rows 0:100 × keys 0:100 is 10000"):
        encoding.fetch_payload(qk_trace(), "region/0/0/0/100/0/100", source=0, trace_id="t")


def test_thumbnails_of_queries_and_keys_match_those_of_the_weights_without_building_them(monkeypatch):
    from attn_widget.trace import AttentionBlock

    tr = qk_trace(t=100)
    b = tr.block()
    weights = AttentionTrace(tr.tokens, {"self": AttentionBlock("self", True, b.layers, b.heads, b.data)},
                             tr.spans, tr.model)
    want = encoding.thumbnails(weights, size=16)
    qk_only = qk_trace(t=100)
    monkeypatch.setattr(AttentionBlock, "data", property(lambda self: pytest.fail("built every weight")))
    got = encoding.thumbnails(qk_only, size=16)
    assert got.shape == want.shape == (2, 3, 15, 15)
    assert np.abs(got.astype(int) - want).max() <= 1  # float32 recomputed vs stored float16
    np.testing.assert_array_equal(encoding.thumbnails(qk_only, size=16, layers=[1])[0], got[1])


def test_a_long_trace_payload_holds_the_shown_head_pooled_and_names_its_side():
    tr = qk_trace()
    payload, header = encoding.trace_payload([tr], layer=1, head=2, send_all_below=0, pool_side=5)
    assert header["pool_side"] == 5 and header["complete"] is False
    _, arrays = encoding.decode_payload(payload)
    assert list(arrays) == [(0, "pool/1/2/5")] and arrays[(0, "pool/1/2/5")].shape == (60, 60)
    _, mean_view = encoding.decode_payload(
        encoding.trace_payload([tr], layer=1, head=-1, send_all_below=0, pool_side=5)[0])
    assert mean_view == {}  # the layer mean is fetched after the first paint
