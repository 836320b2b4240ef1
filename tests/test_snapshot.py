"""Offline HTML snapshots: one file, the widget's own front end, compact, exact, within budget.

The page format is decoded here in Python the way the page's script decodes it in the browser
(``tests/browser/test_snapshot_browser.py`` checks the browser side).
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

import attn_widget as aw
from attn_widget import snapshot, storage
from attn_widget.encoding import decode_payload
from attn_widget.selection import format_head_list
from attn_widget.snapshot.writer import head_priority
from attn_widget.trace import AttentionTrace

LONG_TEXT = Path(__file__).resolve().parent / "data" / "long_text.txt"  # 1,182 SmolLM2 tokens
_BLOB = re.compile(rb'<script type="application/x-attn-widget-blob" id="aw-b(\d+)" '
                    rb'data-enc="(raw|b64)">(.*?)</script>', re.S)


# --------------------------------------------------------------------------- page decoding
class Page:
    """A snapshot page taken apart: manifest, decoded blobs, replies."""

    def __init__(self, data: bytes | str):
        self.data = data.encode("ascii") if isinstance(data, str) else data
        m = re.search(rb'<script type="application/json" id="aw-manifest">(.*?)</script>', self.data, re.S)
        self.manifest = json.loads(m.group(1))
        self.bodies = {}
        for match in _BLOB.finditer(self.data):
            self.bodies[int(match.group(1))] = (match.group(2), match.group(3))

    @property
    def text(self) -> str:
        """The page without its binary blobs (all ASCII)."""
        return _BLOB.sub(b"", self.data).decode("ascii")

    def blob(self, i: int) -> bytes:
        enc, body = self.bodies[i]
        if enc == b"b64":
            packed = base64.b64decode(body)
        else:
            packed = re.sub(rb"=([0-3])", lambda x: bytes([b"\0\r<="[int(x.group(1))]]), body)
        planes = np.frombuffer(zlib.decompress(packed), dtype=np.uint8)
        k = self.manifest["blobs"][i]["shuffle"]
        return planes.reshape(k, -1).T.tobytes() if k > 1 else planes.tobytes()

    def parts(self, parts) -> bytes:
        return b"".join(self.blob(b)[s:e] for b, s, e in parts)

    def payload(self) -> tuple[dict, dict]:
        return decode_payload(self.parts(self.manifest["binary_state"]["_payload"]))

    def reply(self, source: int, key: str) -> tuple[dict, list[bytes]] | None:
        trace_id = self.payload()[0]["trace_id"]
        entry = self.manifest["replies"].get(json.dumps(["fetch", trace_id, source, key],
                                                        separators=(",", ":")))
        if entry is None:
            return None
        return entry["content"], [self.parts(p) for p in entry["buffers"]]

    def section(self, source: int, key: str) -> np.ndarray | None:
        """The array the front end gets for ``key``: from the first payload or a recorded reply."""
        arrays = self.payload()[1]
        if (source, key) in arrays:
            return arrays[(source, key)]
        reply = self.reply(source, key)
        if reply is None:
            return None
        return decode_payload(reply[1][0])[1][(source, key)]


def random_trace(n_layers=3, n_heads=4, t=24, seed=0, **kwargs) -> AttentionTrace:
    """A causal trace with softmax rows of random logits (sharp enough to look like attention)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n_layers, n_heads, t, t))
    logits[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] = -np.inf
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return AttentionTrace.from_dense(a, [f"w{i} " for i in range(t)], **kwargs)


def assert_exact(page: Page, trace: AttentionTrace, pairs, source: int = 0):
    b = trace.block()
    for layer, head in pairs:
        got = page.section(source, f"head/{layer}/{head}")
        assert got is not None, f"head/{layer}/{head} missing"
        want = b.data[b.layer_pos(layer), b.head_pos(head)]
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


# --------------------------------------------------------------------------- format
def test_snapshot_holds_every_head_bit_exact(tmp_path):
    trace = random_trace(prompt_len=16)
    info = aw.save_snapshot(trace, tmp_path / "run.html")
    page = Page(info.path.read_bytes())
    assert_exact(page, trace, [(layer, head) for layer in range(3) for head in range(4)])
    assert len(info.heads) == 12 and info.left_out == ()


def test_encoder_attention_is_kept_whole(tmp_path):
    rng = np.random.default_rng(4)
    a = rng.dirichlet(np.ones(10), size=(2, 3, 10))  # bidirectional: every row over every key
    trace = AttentionTrace.from_dense(a, [f"t{i}" for i in range(10)], causal=False)
    page = Page(aw.save_snapshot(trace, tmp_path / "run.html").path.read_bytes())
    got = page.section(0, "head/1/2")
    assert got.shape == (10, 10)
    np.testing.assert_array_equal(got, trace.block().data[1, 2])


def test_layer_means_equal_the_trace_within_float16(tmp_path):
    trace = random_trace()
    page = Page(aw.save_snapshot(trace, tmp_path / "run.html").path.read_bytes())
    for layer in range(3):
        got = page.section(0, f"mean/{layer}").astype(np.float32)
        want = trace.layer_mean(layer)[np.tril_indices(24)]
        np.testing.assert_allclose(got, want, rtol=2**-11, atol=2**-25)


def test_written_page_is_windows_1252_with_raw_blobs_the_html_parser_keeps(tmp_path):
    data = aw.save_snapshot(random_trace(), tmp_path / "run.html").path.read_bytes()
    assert b'<meta charset="windows-1252">' in data[:200]
    page = Page(data)
    assert {enc for enc, _ in page.bodies.values()} == {b"raw"}
    for _, body in page.bodies.values():
        assert not set(body) & {0x00, 0x0D, 0x3C}  # NUL, CR and "<" would be altered or end it
    assert Page(data).text.isascii()


def test_string_form_is_ascii_with_base64_blobs():
    trace = random_trace()
    html = aw.save_snapshot(trace)
    assert isinstance(html, str) and html.isascii()
    page = Page(html)
    assert {enc for enc, _ in page.bodies.values()} == {b"b64"}
    assert_exact(page, trace, [(1, 2)])


def test_page_inlines_bokehjs_and_the_widget_esm_and_loads_nothing(tmp_path):
    import bokeh

    from attn_widget.widget import _ESM
    page = Page(aw.save_snapshot(random_trace(), tmp_path / "run.html").path.read_bytes())
    bokeh_js = (Path(bokeh.__file__).parent / "server/static/js/bokeh.min.js").read_bytes()
    assert page.parts(page.manifest["scripts"][0]) == bokeh_js
    assert page.parts(page.manifest["esm"]) == _ESM.read_bytes()
    assert not re.search(r"(src|href)\s*=|https?:|//cdn", page.text)


def test_token_text_cannot_close_the_script_or_add_markup(tmp_path):
    tokens = ["The", " capital", " </script>", "<img src=x onerror=alert(1)>", " &amp;", " é"]
    trace = AttentionTrace.from_dense(np.tril(np.ones((1, 1, 6, 6))) / np.arange(1, 7)[:, None],
                                      tokens)
    data = aw.save_snapshot(trace, tmp_path / "run.html", title="</script><b>t</b>").path.read_bytes()
    assert data.count(b"</script>") == data.count(b"<script")
    assert b"<img" not in data and b"<b>" not in data
    assert "&lt;/script&gt;&lt;b&gt;t&lt;/b&gt;" in Page(data).text
    header, _ = Page(data).payload()
    assert header["sources"][0]["tokens"]["text"] == tokens


def test_widget_view_and_compare_trace_are_kept(tmp_path):
    a, b = random_trace(seed=1), random_trace(seed=2)
    w = aw.compare_widget(a, b)
    w.layer, w.head, w.scale = 2, 3, "log"
    page = Page(aw.save_snapshot(w, tmp_path / "run.html").path.read_bytes())
    state = page.manifest["state"]
    assert (state["layer"], state["head"], state["scale"]) == (2, 3, "log")
    assert [s["label"] for s in page.payload()[0]["sources"]] == ["A", "B"]
    assert_exact(page, a, [(0, 1)], source=0)
    assert_exact(page, b, [(0, 1)], source=1)


def test_layers_and_heads_choose_what_is_in_the_file(tmp_path):
    trace = random_trace(n_layers=4, n_heads=4)
    info = aw.save_snapshot(trace, tmp_path / "run.html", layers=[0, 3], heads=[1, 2])
    page = Page(info.path.read_bytes())
    src = page.payload()[0]["sources"][0]
    assert (src["layers"], src["heads"]) == ([0, 3], [1, 2])
    assert sorted(info.heads) == [(0, 1), (0, 2), (3, 1), (3, 2)]
    assert page.section(0, "head/1/1") is None


def test_layer_head_pairs_keep_just_those_heads(tmp_path):
    trace = random_trace(n_layers=4, n_heads=4)
    info = aw.save_snapshot(trace, tmp_path / "run.html", heads=[(2, 3), (0, 1)])
    page = Page(info.path.read_bytes())
    assert info.heads == ((2, 3), (0, 1))
    assert page.section(0, "head/2/2") is None
    assert_exact(page, trace, [(2, 3), (0, 1)])


def test_uncaptured_layer_is_a_clear_error(tmp_path):
    with pytest.raises(IndexError, match="layer 7 was not captured"):
        aw.save_snapshot(random_trace(), tmp_path / "run.html", layers=[7])


# --------------------------------------------------------------------------- budget
def test_budget_keeps_the_most_important_heads_and_says_which_were_left_out(tmp_path):
    trace = random_trace(n_layers=4, n_heads=6, t=200)
    full = aw.save_snapshot(trace, tmp_path / "full.html")
    budget_mb = (full.nbytes - 0.6 * (full.nbytes - 450_000)) / 1e6  # room for about 40% of heads
    info = aw.save_snapshot(trace, tmp_path / "small.html", budget_mb=budget_mb)
    assert info.nbytes <= budget_mb * 1e6
    assert 0 < len(info.heads) < 24 and len(info.heads) + len(info.left_out) == 24
    scores = aw.analysis.head_scores(trace)
    priority = head_priority(scores)
    kept = [priority[layer, head] for layer, head in info.heads[1:]]
    dropped = [priority[layer, head] for layer, head in info.left_out]
    assert min(kept) >= max(dropped)
    page = Page(info.path.read_bytes())
    text = page.text
    assert f"{len(info.left_out)} of 24 heads were left out" in text
    for layer, head in info.left_out:
        assert page.section(0, f"head/{layer}/{head}") is None
    for layer in range(4):
        assert page.section(0, f"mean/{layer}") is not None
    assert page.reply(0, "grid") is not None
    missing = page.manifest["unanswered"]["fetch"]["message"]
    assert "not in this snapshot" in missing and f"{budget_mb:g} MB" in missing


def test_budget_smaller_than_the_means_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"needs .* MB before any head.*budget_mb=0\.1"):
        aw.save_snapshot(random_trace(t=64), tmp_path / "run.html", budget_mb=0.1)
    assert not list(tmp_path.iterdir())


def test_means_are_rounded_only_when_they_would_crowd_out_every_head(tmp_path):
    trace = random_trace(n_layers=6, n_heads=2, t=300, seed=3)
    exact = aw.save_snapshot(trace, tmp_path / "exact.html")
    assert exact.mean_bits == 10
    one_head = aw.save_snapshot(trace, tmp_path / "one.html", heads=[(0, 0)])  # means + one head
    budget = one_head.nbytes * 1.02
    tight = aw.save_snapshot(trace, tmp_path / "tight.html", budget_mb=budget / 1e6)
    assert tight.mean_bits < 10 and tight.nbytes <= budget
    page = Page(tight.path.read_bytes())
    assert f"keep {tight.mean_bits} of the 10 float16 mantissa bits" in page.text
    for layer in range(6):
        got = page.section(0, f"mean/{layer}").astype(np.float32)
        want = trace.layer_mean(layer)[np.tril_indices(300)]
        # relative for normal float16 values, absolute for subnormals (below 2**-14)
        np.testing.assert_allclose(got, want, rtol=2.0 ** -(tight.mean_bits + 1) + 2**-11,
                                   atol=2.0 ** (10 - tight.mean_bits - 25) + 2**-25)
    assert_exact(page, trace, tight.heads)


# --------------------------------------------------------------------------- writing
def test_missing_folder_is_one_clear_error(tmp_path):
    target = tmp_path / "nope" / "run.html"
    with pytest.raises(FileNotFoundError, match=r"cannot write snapshot to .*run\.html.*does not exist"):
        aw.save_snapshot(random_trace(), target)


def test_folder_as_path_is_one_clear_error(tmp_path):
    with pytest.raises(IsADirectoryError, match="cannot write snapshot to"):
        aw.save_snapshot(random_trace(), tmp_path)


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "run.html"
    target.write_text("old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        aw.save_snapshot(random_trace(), target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.html"]


def test_snapshot_reports_its_size_and_contents(tmp_path):
    info = aw.save_snapshot(random_trace(), tmp_path / "run.html")
    assert info.nbytes == info.path.stat().st_size
    assert info.bytes_per_cell == pytest.approx(info.nbytes / (12 * 24 * 24))
    assert open(info, "rb").read(15) == b"<!DOCTYPE html>"
    assert "12 of 12 heads in full" in str(info)


def test_static_is_a_sandboxed_iframe_holding_the_page():
    import html

    trace = random_trace()
    view = snapshot.static(trace, height=500)
    m = re.match(r'<iframe id="aw-static-\w+" srcdoc="([^"]*)" sandbox="allow-scripts allow-downloads" '
                 r'style="[^"]*height: 500px;[^"]*" title="attention snapshot"></iframe>', view._repr_html_())
    assert m
    assert html.unescape(m.group(1)) == view.page
    assert_exact(Page(view.page), trace, [(2, 3)])


# --------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def text_256(smollm2):
    """SmolLM2 over the first 256 tokens of tests/data/long_text.txt: one forward pass, all heads."""
    model, tokenizer = smollm2
    ids = tokenizer(LONG_TEXT.read_text()).input_ids[:256]
    trace = aw.capture(model, tokenizer, ids)
    assert len(trace.tokens) == 256
    return trace


@pytest.mark.smollm2
def test_smollm2_256_tokens_all_heads_is_at_most_one_byte_per_cell(text_256, tmp_path):
    info = aw.save_snapshot(text_256, tmp_path / "run.html")
    assert len(info.heads) == 270 and info.left_out == ()
    assert info.bytes_per_cell <= 1.0
    page = Page(info.path.read_bytes())
    assert_exact(page, text_256, info.heads)


@pytest.mark.smollm2
def test_smollm2_1024_tokens_all_heads_stays_under_budget_and_lists_left_out(smollm2, tmp_path):
    model, tokenizer = smollm2
    ids = tokenizer(LONG_TEXT.read_text()).input_ids[:1024]
    trace = aw.capture(model, tokenizer, ids)
    info = aw.save_snapshot(trace, tmp_path / "run.html", budget_mb=25)
    assert info.nbytes <= 25_000_000
    assert info.left_out and len(info.heads) + len(info.left_out) == 270
    page = Page(info.path.read_bytes())
    text = page.text
    assert f"{len(info.left_out)} of 270 heads were left out" in text
    assert format_head_list(info.left_out) in text.replace("&#8211;", "–")
    assert_exact(page, trace, info.heads)
    assert all(page.section(0, f"mean/{layer}") is not None for layer in range(30))
