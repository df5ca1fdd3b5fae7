"""Data-parallel training on CPU through the real ``tlexp`` command: Lightning's ``ddp`` strategy
relaunches the command in a second process; both train in lockstep, exactly one MLflow run is logged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, TINY, mlflow_runs


def tlexp_executable() -> list[str]:
    """The installed ``tlexp`` script (what a user types), else the module."""
    script = Path(sys.executable).parent / "tlexp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tlexp.cli"]


@pytest.mark.slow
def test_ddp_relaunch_of_tlexp_run_logs_exactly_one_finished_run(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'ddp.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TLEXP_OUTPUTS": str(tmp_path / "outputs")}
    cmd = [*tlexp_executable(), "run", *TINY, "strategy=finetune", "trainer=ddp", "trainer.devices=2",
           "trainer.accelerator=cpu", "trainer.max_epochs=1", "pretrain.max_epochs=1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("MLflow run") == 1  # only the main process reports
    df = mlflow_runs(uri)
    assert len(df) == 1, df[["run_id", "status"]]
    run = df.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["params.trainer.strategy"] == "ddp" and run["params.trainer.devices"] == "2"
    assert 0 < run["metrics.test/ndcg_at_10"] <= 1 and 0 <= run["metrics.test_cold/ndcg_at_10"] <= 1
    from mlflow.tracking import MlflowClient

    # one validation point for the one epoch, gathered over both processes, + the selected model's value
    history = MlflowClient(uri).get_metric_history(run["run_id"], "val/ndcg_at_10")
    assert len(history) == 2
    # the second process built its pretraining privately and left nothing behind in the cache
    pretrain = tmp_path / "outputs" / "cache" / "pretrain"
    assert [p.name for p in pretrain.iterdir()] == [run["tags.pretrain_key"]]
