"""Fixtures shared by every test: an isolated outputs/ folder, a tiny text encoder on disk.

Helpers (configs on a tiny world, reading a store, running the CLI) live in ``helpers.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore")


def _threads_per_worker() -> int:
    """Cores per xdist worker. Every worker (and every tlexp process a test starts, which inherits
    the environment) would otherwise run one OpenMP thread per core: on 2 cores with 2 workers that
    is twice the threads there are cores, and OpenMP threads spin at every barrier waiting for one
    that is descheduled — several times slower, not twice."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


if "PYTEST_XDIST_WORKER" in os.environ:  # a worker of `make test` (-n auto): set before torch loads
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads_per_worker()))
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])


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
