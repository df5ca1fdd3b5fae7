"""Fixtures shared by every test: an isolated outputs/ folder, a tiny text encoder on disk.

Helpers (configs on a tiny world, reading a store, running the CLI) live in ``helpers.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore")


@pytest.fixture
def outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh outputs/ folder; MLFLOW_TRACKING_URI unset so the embedded store is used."""
    out = tmp_path / "outputs"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TLEXP_OUTPUTS", str(out))
    return out


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (with MiniLM's tokenizer) saved as a Hugging Face folder."""
    from helpers import save_tiny_encoder

    return save_tiny_encoder(tmp_path_factory.mktemp("tiny_bert"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration runs tlexp end to end (training, processes, servers): slow."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.slow)
