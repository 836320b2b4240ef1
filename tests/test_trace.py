"""AttentionTrace: access, tokens, save/load and the clear errors for bad files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import attn_widget as aw
from attn_widget.geometry import pack_causal
from attn_widget.tracefile import TraceFormatError


def random_attention(layers=2, heads=3, t=6, seed=0, causal=True):
    rng = np.random.default_rng(seed)
    x = rng.random((layers, heads, t, t)).astype(np.float32)
    if causal:
        x = np.tril(x)
    return x / x.sum(-1, keepdims=True)


def make_trace(causal=True):
    a = random_attention(causal=causal)
    return a, aw.AttentionTrace.from_dense(a, ["The", " cat", " sat", " on", " the", " mat"],
                                           prompt_len=4 if causal else None, causal=causal)


def test_head_and_layer_mean_match_the_dense_input_within_float16():
    a, trace = make_trace()
    np.testing.assert_allclose(trace.head(1, 2), a[1, 2], atol=1e-3)
    np.testing.assert_allclose(trace.layer_mean(0), a[0].mean(0), atol=1e-3)
    assert trace.head(0, 0)[0, 1:].max() == 0  # packed: nothing stored above the diagonal


def test_row_returns_every_head_for_one_query():
    a, trace = make_trace()
    np.testing.assert_allclose(trace.row(3), a[:, :, 3, :], atol=1e-3)
    np.testing.assert_allclose(trace.row(-1), a[:, :, 5, :], atol=1e-3)


def test_packed_rows_are_laid_end_to_end():
    a = random_attention(1, 1, 4)
    packed = pack_causal(a)[0, 0]
    assert packed.shape == (10,)
    np.testing.assert_allclose(packed[3:6], a[0, 0, 2, :3], atol=1e-3)


def test_span_by_substring_maps_through_offsets():
    _, trace = make_trace()
    assert trace.span("cat sat") == [1, 2]
    assert trace.span("prompt") == [0, 1, 2, 3]
    assert trace.span("the", occurrence=0) == [4]
    with pytest.raises(ValueError, match="span 'dog' not found"):
        trace.span("dog")


def test_out_of_range_access_names_the_allowed_range():
    _, trace = make_trace()
    with pytest.raises(IndexError, match=r"position 6 is out of range: allowed 0\.\.5"):
        trace.row(6)
    with pytest.raises(IndexError, match="head 3 was not captured"):
        trace.head(0, 3)
    with pytest.raises(KeyError, match="block must be one of"):
        trace.head(0, 0, block="cross")


def test_save_load_round_trip_is_exact(tmp_path):
    _, trace = make_trace()
    path = trace.save(tmp_path / "run.attn")
    back = aw.load_trace(path)
    np.testing.assert_array_equal(back.block().data, trace.block().data)
    assert back.tokens.text == trace.tokens.text and back.spans == trace.spans
    assert back.model == trace.model and repr(back) == repr(trace)


def test_bidirectional_trace_round_trips(tmp_path):
    a, trace = make_trace(causal=False)
    back = aw.load_trace(trace.save(tmp_path / "enc.attn"))
    np.testing.assert_allclose(back.head(0, 1), a[0, 1], atol=1e-3)
    assert back.spans == {"input": (0, 6)}


def test_truncated_file_is_a_clear_error(tmp_path):
    _, trace = make_trace()
    path = trace.save(tmp_path / "run.attn")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(TraceFormatError, match="is truncated"):
        aw.load_trace(path)


def test_corrupted_data_fails_its_checksum(tmp_path):
    _, trace = make_trace()
    path = trace.save(tmp_path / "run.attn")
    data = bytearray(path.read_bytes())
    data[-70] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TraceFormatError, match="fails its checksum"):
        aw.load_trace(path)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "notes.attn"
    path.write_text("hello")
    with pytest.raises(TraceFormatError, match="is not an attn_widget trace file"):
        aw.load_trace(path)


def test_future_version_asks_for_an_upgrade(tmp_path):
    _, trace = make_trace()
    path = trace.save(tmp_path / "run.attn")
    data = bytearray(path.read_bytes())
    data[10:14] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(TraceFormatError, match="version 99, newer than .*upgrade attn_widget"):
        aw.load_trace(path)


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    _, trace = make_trace()
    path = trace.save(tmp_path / "run.attn")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        trace.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.attn"]


def test_save_into_missing_folder_is_a_clear_error(tmp_path):
    _, trace = make_trace()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trace.save(tmp_path / "nope" / "run.attn")


def test_repr_reads_like_a_summary():
    _, trace = make_trace()
    text = repr(trace)
    assert "tokens=6" in text and "prompt=4, generated=2" in text and "layers=0..1/2" in text


def test_importing_the_package_and_loading_a_trace_does_not_import_torch(tmp_path):
    _, trace = make_trace()
    path = trace.save(tmp_path / "run.attn")
    code = (f"import sys, attn_widget as aw; aw.load_trace({str(path)!r}).head(0, 0); "
            "aw.AttentionTrace; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_saved_trace_is_readable_by_others(tmp_path):
    _, trace = make_trace()
    path = trace.save(tmp_path / "run.attn")
    assert path.stat().st_mode & 0o777 == 0o644
