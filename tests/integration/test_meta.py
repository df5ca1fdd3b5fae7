"""Meta-learning: MAML's meta-gradient against finite differences, Reptile's update rule, the
vectorised meta-objective against a per-task autograd loop, and ``meta`` runs end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, mlflow_runs, tiny_cfg


DOT = lambda u, v: u @ v.T  # noqa: E731


def test_meta_runs_end_to_end_with_k_shot_segments(outputs: Path):
    from mlflow.tracking import MlflowClient

    from tlexp.pipeline import run_pipeline

    res = run_pipeline(tiny_cfg(outputs, "strategy=meta", "meta.test_shots=[1,3]", run_dir="maml"))
    m = res["metrics"]
    for k in (1, 3):
        assert 0 <= m[f"test_cold_k{k}/ndcg_at_10"] <= 1
    assert "test_cold_k5/ndcg_at_10" not in m
    client = MlflowClient(res["tracking_uri"])
    run = client.get_run(res["run_id"])
    assert run.data.params["meta.algorithm"] == "maml" and run.data.params["strategy.name"] == "meta"
    assert int(run.data.params["meta.tasks"]) > 0
    history = client.get_metric_history(res["run_id"], "train/meta_query_loss")
    assert len(history) == 3  # one point per epoch (TINY: 3 epochs)
    # Reptile on the same scenario: the pretraining cache is shared, the numbers differ
    # the defaults suffice for Reptile (meta.inner_params=auto adds the mapping it must meta-learn)
    rep = run_pipeline(tiny_cfg(outputs, "strategy=meta", "meta.algorithm=reptile",
                                "meta.test_shots=[1,3]", run_dir="reptile"))
    df = mlflow_runs(res["tracking_uri"]).set_index("run_id")
    assert df.loc[rep["run_id"], "tags.pretrain_cache"] == "hit"
    assert rep["metrics"]["test_cold_k3/ndcg_at_10"] != m["test_cold_k3/ndcg_at_10"]


@pytest.mark.slow
def test_meta_under_ddp_logs_one_run(tmp_path: Path):
    from helpers import run_cli

    uri = f"sqlite:///{tmp_path / 'ddp.db'}"
    # one thread per process: two workers on a small machine, no oversubscription
    env = {"MLFLOW_TRACKING_URI": uri, "TLEXP_OUTPUTS": str(tmp_path / "outputs"), "OMP_NUM_THREADS": "1"}
    # ddp_fork: the meta objective's gradient sync across ranks is what is tested here; pickling a
    # run through ddp_spawn (re-import in every child, ~45 s) is test_distill's spawn test
    proc = run_cli(["run", *TINY, "strategy=meta", "meta.test_shots=[1,3]", "trainer=ddp",
                    "trainer.strategy=ddp_fork", "trainer.accelerator=cpu", "trainer.devices=2",
                    "trainer.max_epochs=1", "pretrain.max_epochs=1", "logger.predictions_sample=0"], env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = mlflow_runs(uri)
    assert len(df) == 1 and df.iloc[0]["status"] == "FINISHED"
    run = df.iloc[0]
    assert run["params.trainer.strategy"] == "ddp_fork" and run["params.strategy.name"] == "meta"
    assert 0 <= run["metrics.test_cold_k3/ndcg_at_10"] <= 1
    assert np.isfinite(run["metrics.train/meta_query_loss"])
