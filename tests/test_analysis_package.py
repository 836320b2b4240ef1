"""attn_widget.analysis as a package: the same public names as the single module it replaced,
public seams between its submodules, and no torch on import."""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import attn_widget.analysis as an

# The public names of attn_widget/analysis.py before it became a package (every module-level
# name without an underscore that it defined), and those added since: the reports' calibration
# and the evidence from the model's output (issue 15).
PUBLIC_NAMES = {
    "CALIBRATION", "Calibration", "ContextAblation", "OUTPUT_FINDINGS", "OutputConfidence",
    "RepeatProbability",
    "context_ablation", "output_confidence", "repeat_probability",
    "AttentionComparison", "AttentionSinks", "BigDiff", "FINDINGS", "Finding", "HallucinationReport",
    "HeadScores", "IgnoredContextReport", "Indices", "InductionScores", "Influence", "Repeat",
    "RepetitionReport", "SequenceAlignment", "SpanAttention", "attention_entropy", "attention_from",
    "attention_rollout", "attention_to", "compare_attention", "find_attention_sinks", "hallucination",
    "head_scores", "ignored_context", "induction_probe", "induction_scores", "layer_means", "repetition",
    "span_attention", "trace_influence",
}

PACKAGE_DIR = Path(an.__file__).parent


def test_all_lists_exactly_the_public_names():
    assert set(an.__all__) == PUBLIC_NAMES
    assert len(an.__all__) == len(PUBLIC_NAMES)


def test_every_name_in_all_resolves():
    missing = [name for name in an.__all__ if not hasattr(an, name)]
    assert missing == []


def test_results_are_defined_in_the_package_not_copied():
    # one class per result type: the re-export is the submodule's own object
    for name in ("HeadScores", "Finding", "SpanAttention", "AttentionComparison", "RepetitionReport"):
        cls = getattr(an, name)
        assert cls.__module__.startswith("attn_widget.analysis.")
        assert getattr(importlib.import_module(cls.__module__), name) is cls


def _imported_names(path: Path):
    """(module, name) for every ``from module import name`` in a file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                yield ("." * node.level) + (node.module or ""), alias.name


def test_no_submodule_imports_an_underscore_name_from_another_module():
    offending = [(path.name, module, name) for path in sorted(PACKAGE_DIR.glob("*.py"))
                 for module, name in _imported_names(path)
                 if name.startswith("_") and module != "__future__"]
    assert offending == []


def test_submodules_import_each_other_in_one_direction():
    deps = {path.stem: {module.lstrip(".") for module, _ in _imported_names(path)
                        if module.startswith(".") and not module.startswith("..")}
            for path in PACKAGE_DIR.glob("*.py")}
    seen: set[str] = set()
    while len(seen) < len(deps):
        ready = {m for m in deps if m not in seen and deps[m] <= seen}
        assert ready, f"import cycle among {sorted(set(deps) - seen)}"
        seen |= ready


def test_every_submodule_imports_on_its_own():
    for info in pkgutil.iter_modules([str(PACKAGE_DIR)]):
        importlib.import_module(f"attn_widget.analysis.{info.name}")


def test_importing_the_package_does_not_import_torch():
    code = "import attn_widget.analysis, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
