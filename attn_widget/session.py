"""AttentionSession: the kernel-side object that captures a prompt and keeps its widget live.

``session.run(prompt)`` captures and returns an :class:`~attn_widget.widget.AttentionWidget`
with a prompt box; editing the prompt there and pressing Run re-captures in the kernel (with
the same options) and updates that widget in place.
"""

from __future__ import annotations

from typing import Any

from . import analysis
from .trace import AttentionTrace
from .widget import AttentionWidget


class AttentionSession:
    """A model and tokenizer ready to capture prompts into live widgets.

    Parameters
    ----------
    model, tokenizer : a Hugging Face model and its tokenizer (see :func:`attn_widget.load_model`).
    **capture_defaults : options for every :func:`attn_widget.capture` call
        (``max_new_tokens``, ``layers``, ``heads``, ``chat``, generate kwargs…), checked here;
        ``run`` may override them.

    Attributes
    ----------
    trace : the most recent capture (None before the first run).
    """

    def __init__(self, model, tokenizer, **capture_defaults: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.capture_defaults = _checked(capture_defaults)  # a bad default fails here, not at a run
        self.trace: AttentionTrace | None = None

    def capture(self, prompt: str, **capture_kwargs: Any) -> AttentionTrace:
        """Capture ``prompt`` with the session's defaults updated by ``capture_kwargs``."""
        from .capturing import capture  # imports torch: only when a prompt actually runs

        self.trace = capture(self.model, self.tokenizer, prompt,
                             **{**self.capture_defaults, **capture_kwargs})
        return self.trace

    def run(self, prompt: str, *, widget_options: dict[str, Any] | None = None,
            **capture_kwargs: Any) -> AttentionWidget:
        """Capture ``prompt`` and return a live widget whose prompt box re-runs with the same options.

        widget_options : passed to :class:`AttentionWidget` (``layer``, ``head``, ``scale``…).
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string; got {type(prompt).__name__}")
        capture_kwargs = _checked(capture_kwargs)  # the prompt box reuses them for every run
        trace = self.capture(prompt, **capture_kwargs)
        return AttentionWidget(trace, run=lambda text: self.capture(text, **capture_kwargs),
                               prompt=prompt, **(widget_options or {}))

    def ignored_context(self, output_position: int, context, **kwargs: Any) -> analysis.IgnoredContextReport:
        """:func:`attn_widget.analysis.ignored_context` on the latest capture, with the session's model
        (so the report also runs the text without the context)."""
        return analysis.ignored_context(self._latest("ignored_context"), output_position, context,
                                        model=self.model, tokenizer=self.tokenizer, **kwargs)

    def hallucination(self, positions, **kwargs: Any) -> analysis.HallucinationReport:
        """:func:`attn_widget.analysis.hallucination` on the latest capture, with the session's model
        (so the report also reads the model's confidence in each token)."""
        return analysis.hallucination(self._latest("hallucination"), positions, model=self.model,
                                      tokenizer=self.tokenizer, **kwargs)

    def repetition(self, **kwargs: Any) -> analysis.RepetitionReport:
        """:func:`attn_widget.analysis.repetition` on the latest capture, with the session's model
        (so the report also scores the probability of each repeat)."""
        return analysis.repetition(self._latest("repetition"), model=self.model, tokenizer=self.tokenizer,
                                   **kwargs)

    def _latest(self, what: str) -> AttentionTrace:
        if self.trace is None:
            raise ValueError(f"{what} reads the session's latest capture, and there is none yet; call "
                             "session.run(prompt) or session.capture(prompt) first")
        return self.trace

    def __repr__(self) -> str:
        name = getattr(getattr(self.model, "config", None), "_name_or_path", type(self.model).__name__)
        return f"AttentionSession(model={name!r}, capture_defaults={self.capture_defaults!r})"


def _checked(capture_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Capture options checked now, with layers and heads read once into lists (a generator
    would be empty at the next run)."""
    from .capturing import capture_options  # imports torch: a session has a model anyway

    checked = capture_options(**capture_kwargs)
    return {k: checked[k] if k in ("layers", "heads") else v for k, v in capture_kwargs.items()}
