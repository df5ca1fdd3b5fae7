"""Data-parallel training on CPU: two ddp_spawn processes, one MLflow run, exact metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, mlflow_runs
from test_cli import run_cli


@pytest.mark.slow
def test_ddp_spawn_two_processes_log_exactly_one_run(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'ddp.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "TLEXP_OUTPUTS": str(tmp_path / "outputs")}
    proc = run_cli(["run", *TINY, "strategy=finetune", "trainer=ddp", "trainer.strategy=ddp_spawn",
                    "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2",
                    "pretrain.max_epochs=2"], env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = mlflow_runs(uri)
    assert len(df) == 1, df[["run_id", "status"]]
    run = df.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["params.trainer.strategy"] == "ddp_spawn" and run["params.trainer.devices"] == "2"
    assert 0 < run["metrics.test/ndcg_at_10"] <= 1 and 0 <= run["metrics.test_cold/ndcg_at_10"] <= 1
    from mlflow.tracking import MlflowClient

    # one validation point per epoch, gathered over both ranks (+ the final value of the chosen model)
    history = MlflowClient(uri).get_metric_history(run["run_id"], "val/ndcg_at_10")
    assert len(history) == 3
