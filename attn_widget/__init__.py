"""attn_widget: see and debug what a transformer attends to, from inside Jupyter.

Attention is a debugging signal, not an explanation: it shows where the model looked, not why.

The public API is re-exported here lazily, so ``import attn_widget`` stays light: torch is
imported only when a model is loaded or captured, and the widget only when one is shown.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "AttentionTrace": "trace",
    "AttentionBlock": "trace",
    "Token": "tokens",
    "TokenTable": "tokens",
    "TraceFormatError": "tracefile",
    "load_trace": "tracefile",
    "capture": "capturing",
    "CaptureError": "capturing",
    "MemoryBudgetError": "capturing",
    "load_model": "models",
    "analysis": None,
    "AttentionWidget": "widget",
    "compare_widget": "widget",
    "AttentionSession": "session",
    "save_snapshot": "snapshot",
    "save_figure": "export",
}

__all__ = [
    "AttentionBlock",
    "AttentionSession",
    "AttentionTrace",
    "AttentionWidget",
    "CaptureError",
    "MemoryBudgetError",
    "Token",
    "TokenTable",
    "TraceFormatError",
    "analysis",
    "capture",
    "compare_widget",
    "load_model",
    "load_trace",
    "save_figure",
    "save_snapshot",
    "__version__",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'attn_widget' has no attribute {name!r}")
    module = _EXPORTS[name]
    value = import_module(f".{name}", __name__) if module is None else getattr(
        import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
