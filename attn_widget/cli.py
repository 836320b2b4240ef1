"""The ``attn-widget`` command: capture a run and write an offline snapshot, or describe a trace.

A thin layer over the public API a notebook uses (:func:`attn_widget.load_model`,
:func:`attn_widget.capture`, :func:`attn_widget.save_snapshot`, :mod:`attn_widget.analysis`)::

    attn-widget snapshot --model smollm2 --prompt "The capital of France is Paris. ..." \\
        --max-new-tokens 20 --chat --out run.html
    attn-widget snapshot --trace run.attn --layers 0,5,29 --out run.html
    attn-widget info run.attn
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .storage import format_bytes


def _int_list(text: str) -> list[int]:
    """``"0,5,29"`` or ranges ``"0-4,29"`` → layer indices."""
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        lo, sep, hi = item.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if sep and lo else [int(item)])
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers or ranges like 0,5,29 or 0-4; got {text!r}") from None
    return out


def _head_list(text: str) -> list[int] | list[tuple[int, int]]:
    """``"0,3"`` (these heads in every layer) or ``"5:3,17:2"`` (layer:head pairs)."""
    if ":" not in text:
        return _int_list(text)
    pairs = []
    for item in text.split(","):
        layer, sep, head = item.strip().partition(":")
        try:
            pairs.append((int(layer), int(head)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected head indices like 0,3 or layer:head pairs like 5:3,17:2; got {text!r}") from None
    return pairs


def _megabytes(text: str) -> float:
    """``"25"`` → 25.0; a finite number above 0 (not ``nan``, ``inf`` or ``0``)."""
    from .selection import check_positive

    try:
        return check_positive(float(text), "--budget-mb")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of megabytes above 0, like 25; got "
                                         f"{text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attn-widget", description="See what a transformer attends to: capture a run and write "
        "a self-contained offline HTML snapshot, or describe a saved trace.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    snap = sub.add_parser("snapshot", help="capture a prompt (or open a saved trace) and write one "
                          "offline HTML file", description="Capture a prompt, or open a saved trace, "
                          "and write one self-contained HTML file that works offline.")
    source = snap.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="'smollm2', 'minilm', a local folder or a hub id")
    source.add_argument("--trace", type=Path, help="a trace saved with trace.save() or --save-trace")
    snap.add_argument("--prompt", help="the text to run (with --model)")
    snap.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    snap.add_argument("--max-new-tokens", type=int, default=0, metavar="N",
                      help="tokens to generate (default 0: one forward pass)")
    snap.add_argument("--layers", type=_int_list, help="layers to keep, e.g. 0,5,29 or 0-4")
    snap.add_argument("--heads", type=_head_list,
                      help="heads to keep: indices in every layer (0,3) or layer:head pairs (5:3,17:2)")
    snap.add_argument("--budget-mb", type=_megabytes, default=25.0,
                      help="largest file to write; past it the heads that matter least are left out "
                      "and the page lists them (default 25)")
    snap.add_argument("--out", type=Path, default=Path("attention.html"),
                      help="HTML file to write (default attention.html)")
    snap.add_argument("--save-trace", type=Path, metavar="FILE", help="also save the trace here")
    snap.add_argument("--title", help="page title (default: the model and the prompt)")

    info = sub.add_parser("info", help="describe a saved trace", description="Describe a trace "
                          "saved with trace.save(): model, tokens, what was captured, sinks, strongest "
                          "heads.")
    info.add_argument("trace", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attn-widget`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "snapshot":
            return _snapshot(parser, args)
        return _info(args)
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"attn-widget: error: {e}", file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that say what was wrong with the input (printed as one line, no traceback): bad
    values, files, missing packages and, once capture is loaded, capture errors."""
    known: tuple[type[BaseException], ...] = (OSError, ValueError, LookupError, ImportError)
    recording = sys.modules.get("attn_widget.recording")  # loaded with torch, only by a capture
    return known + ((recording.CaptureError,) if recording is not None else ())


def _snapshot(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import attn_widget as aw

    pairs = args.heads if args.heads and isinstance(args.heads[0], tuple) else None
    if args.trace is not None:
        if args.prompt is not None:
            parser.error("--prompt goes with --model; a saved --trace already has its text")
        trace = aw.load_trace(args.trace)
    else:
        if not args.prompt:
            parser.error("--model needs --prompt")
        model, tokenizer = aw.load_model(args.model)
        # layer:head pairs need every head captured: the layer means and the grid cover them all
        trace = aw.capture(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                           chat=args.chat, layers=args.layers, heads=None if pairs else args.heads)
    if args.save_trace is not None:
        trace.save(args.save_trace)
        print(f"saved trace {args.save_trace} ({format_bytes(args.save_trace.stat().st_size)})")
    title = args.title or (f"{trace.model_name}: \u201c{args.prompt}\u201d" if args.prompt else None)
    snapshot = aw.save_snapshot(trace, args.out, layers=args.layers, heads=args.heads,
                                budget_mb=args.budget_mb, title=title)
    print(snapshot)
    print(_summary(trace))
    return 0


def _info(args: argparse.Namespace) -> int:
    import attn_widget as aw

    trace = aw.load_trace(args.trace)
    print(f"{args.trace}: attn_widget trace, {format_bytes(args.trace.stat().st_size)}")
    print(_summary(trace))
    return 0


def _value_norms_line(trace) -> str:
    """Whether the trace keeps the norms that value-weighted views (weighting='norm') need."""
    if trace.has_value_norms:
        layer = all(b.norms.gram is not None for b in trace.blocks.values())
        return ("value norms: yes (weighting='norm' views, Kobayashi et al. 2020; the widget's Weights "
                "menu offers value-weighted" + (", and trace.layer_contribution works)" if layer else ")"))
    why = trace.options.get("values_unavailable") or (
        "captured with values=False, saved by an older version, or built from weights alone")
    return (f"value norms: no ({why}); value-weighted views need aw.capture(..., values='norms') "
            "(the default where the model allows it)")


def _summary(trace) -> str:
    """What a user checks first: the run, where attention pools (sinks), the strongest heads."""
    from . import analysis
    from .selection import format_ranges

    b = trace.block()
    model = trace.model
    counts = f"{len(trace.tokens)}"
    if "generated" in trace.spans:
        counts += f" ({trace.prompt_len} prompt + {trace.n_generated} generated)"
    text = " ".join(trace.text.split())
    lines = [f"model: {trace.model_name} ({trace.architecture}, {model.get('n_layers', '?')} layers × "
             f"{model.get('n_heads', '?')} heads)",
             f"tokens: {counts}",
             f"captured: layers {format_ranges(b.layers)}, heads {format_ranges(b.heads)} ({b.name!r} block, "
             f"{'causal' if b.causal else 'bidirectional'}, stored as {b.form.replace('-', ' and ')})",
             _value_norms_line(trace),
             f"text: {text[:100]!r}{'…' if len(text) > 100 else ''}"]
    if trace.n_generated:
        start = trace.spans["generated"][0]
        lines.append(f"generated: {''.join(trace.tokens.text[start:])!r}")
    sinks = analysis.find_attention_sinks(trace)
    if sinks.positions:
        shown = ", ".join(f"{p} {sinks.tokens[p]!r} (α > {sinks.epsilon:g} in {sinks.head_share[p]:.0%} "
                          "of heads)" for p in sinks.positions)
    else:
        shown = "none found by both rules"
    lines.append(f"sinks: {shown}")
    scores = analysis.head_scores(trace)
    for metric, label in (("previous_token_score", "previous-token"), ("self_score", "self"),
                          ("sink_score", "sink")):
        top = scores.top(metric, 3)
        if top and not all(np.isnan(v) for _, _, v in top):
            lines.append(f"strongest {label} heads: " + ", ".join(
                f"L{layer}H{head} {v:.2f}" for layer, head, v in top))
    return "\n".join(lines)

