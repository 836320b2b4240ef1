"""Reliability of files: saving never destroys what is at the path, and every file that is not a
trace written here is refused with one TraceFormatError naming the problem.

Every file-system case runs in a temporary folder (FIFOs made with os.mkfifo, links there),
never on real device files.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib

import numpy as np
import pytest

import attn_widget as aw
from attn_widget.cli import main
from attn_widget.querykeys import QueryKeys
from attn_widget.storage import format_bytes
from attn_widget.tokens import TokenTable
from attn_widget.trace import AttentionBlock
from attn_widget.tracefile import TraceFormatError


def make_trace(t=6, layers=2, heads=3, seed=0):
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((layers, heads, t, t)).astype(np.float32)) + np.eye(t, dtype=np.float32)
    a /= a.sum(-1, keepdims=True)
    return aw.AttentionTrace.from_dense(a, ["The", " cat", " sat", " on", " the", " mat"][:t] +
                                        [f" w{i}" for i in range(max(0, t - 6))], prompt_len=min(4, t))


def qk_trace(seed=0):
    """A 1-layer, 2-head trace held as queries and keys (one key group, causal)."""
    rng = np.random.default_rng(seed)
    t, d = 5, 4
    qk = QueryKeys(rng.normal(size=(1, 2, t, d)).astype(np.float32), rng.normal(size=(1, 1, t, d)).astype(
        np.float32), np.zeros(2, np.int64), np.array([0.5]), np.zeros(1, np.int64))
    block = AttentionBlock("self", True, (0,), (0, 1), qk=qk)
    tokens = TokenTable(list(range(t)), list("abcde"), list("abcde"))
    return aw.AttentionTrace(tokens, {"self": block}, {"prompt": (0, 3), "generated": (3, t)},
                             {"name": "qk-toy", "architecture": "decoder", "n_layers": 1, "n_heads": 2})


# --------------------------------------------------------------------------- saving
def test_saving_onto_a_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=r"cannot write trace to .*pipe.*: it is a FIFO \(named pipe\), not a "
                                      r"regular file"):
        make_trace().save(fifo)  # opening it to write would block until a reader came
    assert os.path.exists(fifo) and not os.path.isfile(fifo)  # still a FIFO, not replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary file left


def test_saving_onto_a_folder_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        make_trace().save(tmp_path)


def test_saving_through_a_link_replaces_the_file_it_points_to_and_keeps_the_link(tmp_path):
    real = make_trace(seed=1).save(tmp_path / "real.attn")
    link = tmp_path / "link.attn"
    link.symlink_to(real)
    os.chmod(real, 0o600)
    make_trace(seed=2).save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert aw.load_trace(real).head(0, 0).tolist() == make_trace(seed=2).head(0, 0).tolist()
    assert os.stat(real).st_mode & 0o777 == 0o600  # the replaced file keeps its permissions


def test_saving_through_a_dangling_link_creates_the_file_it_names(tmp_path):
    link = tmp_path / "link.attn"
    link.symlink_to(tmp_path / "new.attn")
    make_trace().save(link)
    assert link.is_symlink() and (tmp_path / "new.attn").is_file()


def test_saving_through_a_link_to_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link").symlink_to(tmp_path / "pipe")
    with pytest.raises(OSError, match="FIFO"):
        make_trace().save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink()


def test_snapshots_and_the_command_line_share_the_refusal(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.html")
    trace = make_trace()
    with pytest.raises(OSError, match="cannot write snapshot .*FIFO"):
        aw.save_snapshot(trace, tmp_path / "pipe.html")
    saved = trace.save(tmp_path / "run.attn")
    assert main(["snapshot", "--trace", str(saved), "--out", str(tmp_path / "pipe.html")]) == 1
    assert "FIFO (named pipe), not a regular file" in capsys.readouterr().err


def _break_shape(trace):
    trace.blocks["self"] = AttentionBlock("self", True, (0, 1), (0, 1, 2), np.zeros((2, 3, 5), np.float16))


def _break_values(trace):
    trace.block().data[0, 0, 3] = np.nan


def _break_tokens(trace):
    trace.tokens = TokenTable([1, 2, 3], ["a", "b", "c"], ["a", "b", "c"])


def _break_spans(trace):
    trace.spans["prompt"] = (0, 99)


def _break_block(trace):
    trace.blocks["self"] = "not a block"


@pytest.mark.parametrize("damage, problem", [
    (_break_shape, r"array 'data' has shape \[2, 3, 5\], expected \[2, 3, 21\]"),
    (_break_values, "weights that are NaN or infinite"),
    (_break_tokens, r"span 'prompt' \[0, 4\] is outside its 3 tokens"),
    (_break_spans, r"span 'prompt' \[0, 99\] is outside its 6 tokens"),
    (_break_block, "blocks are not a dict of AttentionBlock"),
])
def test_a_trace_broken_in_memory_never_replaces_a_good_file(tmp_path, damage, problem):
    path = make_trace().save(tmp_path / "good.attn")
    before = path.read_bytes()
    broken = make_trace()
    damage(broken)
    with pytest.raises(ValueError, match=f"cannot save this trace to .*good.attn.*: .*{problem}.*nothing was "
                                         "written"):
        broken.save(path)
    assert path.read_bytes() == before and aw.load_trace(path).n_tokens == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.attn"]


def test_a_queries_keys_trace_with_nan_queries_is_not_saved(tmp_path):
    trace = qk_trace()
    back = aw.load_trace(trace.save(tmp_path / "qk.attn"))
    np.testing.assert_array_equal(back.attention(), trace.attention())
    trace.block().qk.queries[0, 1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="block 'self' has queries that are NaN or infinite"):
        trace.save(tmp_path / "qk.attn")
    assert aw.load_trace(tmp_path / "qk.attn").block().form == "queries-keys"


# --------------------------------------------------------------------------- loading
def test_loading_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.attn"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error_of(aw.load_trace, fifo)), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # it is blocked opening the FIFO: release it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_trace waited on a FIFO")
    assert isinstance(outcome[0], TraceFormatError)
    assert "is a FIFO (named pipe), not a trace file" in str(outcome[0])


def test_info_on_a_fifo_is_one_clear_error(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.attn")
    assert main(["info", str(tmp_path / "pipe.attn")]) == 1
    assert "not a trace file" in capsys.readouterr().err


def test_a_folder_and_a_missing_file_are_named(tmp_path):
    with pytest.raises(TraceFormatError, match="is a folder, not a trace file"):
        aw.load_trace(tmp_path)
    with pytest.raises(FileNotFoundError, match="no trace file at"):
        aw.load_trace(tmp_path / "missing.attn")


def _error_of(fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - the test looks at which type it was
        return e
    return None


def _parts(path):
    """(header dict, data region bytes) of a version 3 file."""
    raw = path.read_bytes()
    n_json = struct.unpack("<Q", raw[14:22])[0]
    data_start = (26 + n_json + 63) // 64 * 64
    return json.loads(raw[26:26 + n_json]), raw[data_start:]


def _write(path, meta, data, version=3, n_json=None, sign=True):
    """A file with header ``meta`` (any JSON value) over ``data``, its header checksum correct."""
    blob = json.dumps(meta).encode()
    fixed = b"ATTNTRACE\x00" + struct.pack("<IQ", version, len(blob) if n_json is None else n_json)
    crc = struct.pack("<I", zlib.crc32(fixed + blob) if sign else 0) if version >= 3 else b""
    start = len(fixed) + len(crc) + len(blob)
    path.write_bytes(fixed + crc + blob + b"\0" * ((start + 63) // 64 * 64 - start) + data)
    return path


def _edit(key_path, value):
    def apply(meta):
        d = meta
        for k in key_path[:-1]:
            d = d[k]
        if value is KeyError:
            del d[key_path[-1]]
        else:
            d[key_path[-1]] = value
        return meta
    return apply


DATA = ("blocks", 0, "arrays", "data")


@pytest.mark.parametrize("edit, problem", [
    (lambda m: [], "not an attn_widget trace"),
    (_edit(("tokens",), KeyError), "its tokens are NoneType, expected an object"),
    (_edit(("blocks", 0, "layers"), KeyError), "block 'self' has no 'layers'"),
    (_edit(DATA + ("nbytes",), -8), "says -8 bytes"),
    (_edit(DATA + ("offset",), 2**62), "truncated"),
    (_edit(DATA + ("shape",), [2, 3, 2**39]), "says .* bytes for shape"),
    (_edit(DATA + ("shape",), [3, 2, 21]), r"array 'data' has shape \[3, 2, 21\], expected \[2, 3, 21\]"),
    (_edit(DATA + ("dtype",), "object"), "dtype 'object', expected float16"),
    (_edit(("blocks", 0, "layers"), [0, "1"]), "layers .* are not distinct non-negative integers"),
    (_edit(("blocks", 0, "heads"), [0, 0, 1]), "heads .* are not distinct non-negative integers"),
    (_edit(("spans", "prompt"), [4, 2]), r"span 'prompt' \[4, 2\] is outside"),
    (_edit(("tokens", "text"), ["a"]), "tokens have 6 ids but 1 text entries"),
    (_edit(("tokens", "ids"), [0, 1, 2, 3, 4, 2**70]), "ids are not all integers"),
    (_edit(("blocks",), []), "holds no attention block"),
    (_edit(("blocks", 0, "form"), "sparse"), "unknown form 'sparse'"),
    (_edit(("blocks", 0, "queries"), "source_tokens"), "which the file does not hold"),
    (_edit(("blocks", 0, "arrays", "extra"), {}), "unknown ones"),
    (_edit(("model", "n_layers"), "two"), "its model n_layers is 'two', not a positive integer"),
])
def test_crafted_headers_are_refused_with_the_problem_named(tmp_path, edit, problem):
    meta, data = _parts(make_trace().save(tmp_path / "ok.attn"))
    path = _write(tmp_path / "crafted.attn", edit(meta), data)
    with pytest.raises(TraceFormatError, match=problem):
        aw.load_trace(path)


def test_a_header_length_past_the_file_is_truncation_not_memory(tmp_path):
    meta, data = _parts(make_trace().save(tmp_path / "ok.attn"))
    path = _write(tmp_path / "huge.attn", meta, data, n_json=2**62)
    with pytest.raises(TraceFormatError, match="is truncated .*header says 4611686018427387904 bytes"):
        aw.load_trace(path)


def test_deeply_nested_json_is_a_corrupted_header(tmp_path):
    path = tmp_path / "deep.attn"
    blob = b"[" * 100_000 + b"]" * 100_000
    fixed = b"ATTNTRACE\x00" + struct.pack("<IQ", 3, len(blob))
    path.write_bytes(fixed + struct.pack("<I", zlib.crc32(fixed + blob)) + blob)
    with pytest.raises(TraceFormatError, match="corrupted header"):
        aw.load_trace(path)


def test_weights_outside_zero_to_one_are_refused_even_with_good_checksums(tmp_path):
    meta, data = _parts(make_trace().save(tmp_path / "ok.attn"))
    data = bytearray(data)
    data[0:2] = np.float16(7.0).tobytes()
    meta["blocks"][0]["arrays"]["data"]["crc32"] = zlib.crc32(bytes(data[:meta["blocks"][0]["arrays"]["data"]
                                                                        ["nbytes"]]))
    with pytest.raises(TraceFormatError, match="weights outside"):
        aw.load_trace(_write(tmp_path / "seven.attn", meta, bytes(data)))


def test_a_queries_keys_file_with_a_head_reading_a_missing_group_is_refused(tmp_path):
    meta, data = _parts(qk_trace().save(tmp_path / "qk.attn"))
    groups = meta["blocks"][0]["arrays"]["groups"]
    data = bytearray(data)
    data[groups["offset"]:groups["offset"] + 16] = np.array([0, 5], np.int64).tobytes()
    groups["crc32"] = zlib.crc32(bytes(data[groups["offset"]:groups["offset"] + 16]))
    with pytest.raises(TraceFormatError, match=r"heads reading key groups outside 0\.\.0"):
        aw.load_trace(_write(tmp_path / "bad.attn", meta, bytes(data)))


@pytest.mark.parametrize("old, new", [(b'"layers": [0, 1]', b'"layers": [1, 0]'),
                                      (b'"prompt": [0, 4]', b'"prompt": [0, 5]'),
                                      (b'" cat"', b'" dog"')])
def test_header_edits_fail_the_header_checksum(tmp_path, old, new):
    path = make_trace().save(tmp_path / "run.attn")
    raw = path.read_bytes()
    assert old in raw
    path.write_bytes(raw.replace(old, new, 1))
    with pytest.raises(TraceFormatError, match="its header fails its checksum"):
        aw.load_trace(path)


def test_files_of_format_version_2_without_a_header_checksum_still_load(tmp_path):
    trace = make_trace()
    meta, data = _parts(trace.save(tmp_path / "v3.attn"))
    meta["version"] = 2
    back = aw.load_trace(_write(tmp_path / "v2.attn", meta, data, version=2))
    np.testing.assert_array_equal(back.block().data, trace.block().data)
    assert back.spans == trace.spans


def _checksummed(raw: bytes) -> tuple[set[int], int]:
    """Offsets of a version 3 file that a checksum covers, and where its last array ends."""
    n_json = struct.unpack("<Q", raw[14:22])[0]
    data_start = (26 + n_json + 63) // 64 * 64
    covered = set(range(26 + n_json))  # the fixed header, its checksum and the JSON header
    for b in json.loads(raw[26:26 + n_json])["blocks"]:
        for a in b["arrays"].values():
            covered |= set(range(data_start + a["offset"], data_start + a["offset"] + a["nbytes"]))
    return covered, max(covered) + 1


def test_random_and_truncated_bytes_raise_only_trace_format_errors(tmp_path):
    """Seeded property test: random files, every kind of cut of a real one, and byte flips in
    it; each load either gives a trace or one TraceFormatError, and a flip inside checksummed
    bytes is always caught."""
    rng = np.random.default_rng(13)
    good = make_trace().save(tmp_path / "good.attn").read_bytes()
    qk_good = qk_trace().save(tmp_path / "qk.attn").read_bytes()
    cases = []
    for n in rng.integers(0, 400, 80):
        cases.append((rng.bytes(int(n)), False))
        cases.append((b"ATTNTRACE\x00" + rng.bytes(int(n)), False))
    for source in (good, qk_good):
        covered, end = _checksummed(source)
        for cut in sorted(set(rng.integers(0, len(source), 60).tolist())):
            cases.append((source[:cut], cut < end))  # a cut in the last padding loses nothing
        for i in rng.integers(0, len(source), 75):
            flipped = bytearray(source)
            flipped[int(i)] ^= 1 << int(rng.integers(0, 8))
            cases.append((bytes(flipped), int(i) in covered))
    assert len(cases) >= 300
    path = tmp_path / "case.attn"
    for raw, must_fail in cases:
        path.write_bytes(raw)
        error = _error_of(aw.load_trace, path)
        assert error is None or isinstance(error, TraceFormatError), (raw[:40], repr(error))
        if must_fail:
            assert isinstance(error, TraceFormatError), raw[:40]


# --------------------------------------------------------------------------- sizes in words
@pytest.mark.parametrize("n, text", [(0, "0 bytes"), (1000, "1000 bytes"), (1536, "1.50 KiB"),
                                     (50 * 2**20, "50.0 MiB"), (700 * 2**20, "700 MiB"),
                                     (3 * 2**30, "3.00 GiB")])
def test_sizes_are_given_in_the_unit_that_suits_them(n, text):
    assert format_bytes(n) == text
