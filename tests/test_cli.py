"""The ``attn-widget`` command: snapshot (from a model or a saved trace) and info."""

from __future__ import annotations

import re

import numpy as np
import pytest

import attn_widget as aw
from attn_widget.cli import main
from attn_widget.trace import AttentionTrace

FRANCE = "The capital of France is Paris. What is the capital of France?"


@pytest.fixture
def saved(tmp_path):
    """A saved 3-layer × 4-head causal trace with a sink at position 0."""
    rng = np.random.default_rng(0)
    t = 20
    logits = rng.normal(0, 2, (3, 4, t, t))
    logits[..., 0] += 4  # most heads dump attention on the first token
    logits[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] = -np.inf
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    trace = AttentionTrace.from_dense(a, [f"w{i} " for i in range(t)], prompt_len=15, model_name="toy")
    return trace.save(tmp_path / "run.attn")


def test_info_describes_a_saved_trace(saved, capsys):
    assert main(["info", str(saved)]) == 0
    out = capsys.readouterr().out
    assert f"{saved}: attn_widget trace" in out
    assert "model: toy (decoder, 3 layers × 4 heads)" in out
    assert "tokens: 20 (15 prompt + 5 generated)" in out
    assert "captured: layers 0..2, heads 0..3 ('self' block, causal, stored as weights)" in out
    assert re.search(r"sinks: 0 'w0 ' \(α > 0.3 in \d+% of heads\)", out)
    assert re.search(r"strongest previous-token heads: (L\dH\d \d\.\d\d(, )?){3}", out)


def test_snapshot_from_a_saved_trace_prints_path_size_and_summary(saved, tmp_path, capsys):
    out_file = tmp_path / "run.html"
    assert main(["snapshot", "--trace", str(saved), "--layers", "0,2", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    size = out_file.stat().st_size
    assert f"wrote {out_file} ({size / 1e6:.2f} MB): 8 of 8 heads in full" in out
    assert "bytes per attention cell" in out and "tokens: 20 (15 prompt + 5 generated)" in out
    assert out_file.read_bytes().startswith(b"<!DOCTYPE html>")


def test_snapshot_budget_and_layer_head_pairs(saved, tmp_path, capsys):
    out_file = tmp_path / "pairs.html"
    assert main(["snapshot", "--trace", str(saved), "--heads", "2:1,0:3", "--out", str(out_file)]) == 0
    assert "2 of 2 heads in full" in capsys.readouterr().out


def test_unwritable_output_is_one_clear_error(saved, tmp_path, capsys):
    target = tmp_path / "missing" / "run.html"
    assert main(["snapshot", "--trace", str(saved), "--out", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (f"attn-widget: error: cannot write snapshot to {str(target)!r}: folder "
                           f"{str(target.parent)!r} does not exist")


def test_not_a_trace_is_one_clear_error(tmp_path, capsys):
    bogus = tmp_path / "bogus.attn"
    bogus.write_text("hello")
    assert main(["info", str(bogus)]) == 1
    assert "is not an attn_widget trace file" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["snapshot", "--model", "smollm2"], "--model needs --prompt"),
    (["snapshot", "--trace", "x.attn", "--prompt", "hi"], "--prompt goes with --model"),
    (["snapshot", "--trace", "x.attn", "--layers", "a,b"], "expected comma-separated integers"),
    (["snapshot"], "one of the arguments --model --trace is required"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.smollm2
def test_snapshot_captures_the_bundled_model(smollm2, tmp_path, capsys):
    out_file, trace_file = tmp_path / "france.html", tmp_path / "france.attn"
    assert main(["snapshot", "--model", "smollm2", "--prompt", FRANCE, "--chat", "--max-new-tokens", "6",
                 "--layers", "0,5,29", "--out", str(out_file), "--save-trace", str(trace_file)]) == 0
    out = capsys.readouterr().out
    trace = aw.load_trace(trace_file)
    assert trace.layers == (0, 5, 29) and trace.n_generated == 6
    assert "27 of 27 heads in full" in out
    assert f"tokens: {len(trace.tokens)} ({trace.prompt_len} prompt + 6 generated)" in out
    assert "sinks: 0 '<|im_start|>'" in out
    assert b"<h1>smollm2: &#8220;The capital of France is Paris." in out_file.read_bytes()[:5000]


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"attn-widget {aw.__version__}\n"
