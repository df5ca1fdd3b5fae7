"""Shared fixtures: a tiny synthetic world and an isolated outputs/ folder per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore")

ROOT = Path(__file__).resolve().parents[1]

# Small enough for seconds per run, large enough that training beats chance.
TINY = [
    "world.n_users=800", "source.n_items=300", "target.n_items=300",
    "trainer=debug", "trainer.max_epochs=3", "pretrain.max_epochs=3", "batch_size=256",
    "logger.predictions_sample=20",
]


@pytest.fixture
def outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh outputs/ folder; MLFLOW_TRACKING_URI unset so the embedded store is used."""
    out = tmp_path / "outputs"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TLEXP_OUTPUTS", str(out))
    return out


def tiny_cfg(outputs: Path, *overrides: str, run_dir: str = "run"):
    """The composed run config on the tiny world, writing under ``outputs``."""
    from tlexp.config import compose

    return compose([*TINY, f"paths.output_root={outputs}", f"paths.output_dir={outputs / run_dir}",
                    *overrides])


def mlflow_runs(uri: str):
    """All runs in the store at ``uri`` as a DataFrame (mlflow.search_runs), leaving no global state.

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI, which would leak into later tests.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(uri)
        return mlflow.search_runs(search_all_experiments=True)
    finally:
        mlflow.set_tracking_uri(before or "")
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
