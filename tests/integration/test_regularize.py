"""`regularize.*` and `augment=*` in a real run: each term logged per epoch; both change the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import mlflow_runs, tiny_cfg

from tlexp.core.errors import ConfigError


def test_l2_sp_is_logged_per_epoch_and_changes_the_run(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from tlexp.pipeline import run_pipeline

    plain = run_pipeline(tiny_cfg(tmp_path, "strategy=finetune", run_dir="plain"))
    held = run_pipeline(tiny_cfg(tmp_path, "strategy=finetune", "regularize.l2_sp=10", "regularize.l2=1e-4",
                                 run_dir="held"))
    client = MlflowClient(held["tracking_uri"])
    sp = client.get_metric_history(held["run_id"], "train/reg_l2_sp")
    l2 = client.get_metric_history(held["run_id"], "train/reg_l2")
    assert len(sp) == len(l2) == len(client.get_metric_history(held["run_id"], "train/loss")) >= 2
    assert all(m.value >= 0 for m in sp) and sp[0].value > 0
    assert client.get_metric_history(plain["run_id"], "train/reg_l2_sp") == []
    assert held["metrics"]["test/ndcg_at_10"] != plain["metrics"]["test/ndcg_at_10"]
    df = mlflow_runs(held["tracking_uri"]).set_index("run_id")
    assert df.loc[held["run_id"], "params.regularize.l2_sp"] == "10"
    assert df.loc[held["run_id"], "tags.config.regularize"] != df.loc[plain["run_id"], "tags.config.regularize"]
    # interaction dropout: a different run of the same seed, recorded as such; reproducible
    aug = [run_pipeline(tiny_cfg(tmp_path, "strategy=finetune", "augment=interaction_dropout", "augment.p=0.3",
                                 run_dir=f"aug{i}")) for i in range(2)]
    assert aug[0]["metrics"]["test/ndcg_at_10"] != plain["metrics"]["test/ndcg_at_10"]
    assert aug[0]["metrics"] == aug[1]["metrics"]
    df = mlflow_runs(held["tracking_uri"]).set_index("run_id")
    assert df.loc[aug[0]["run_id"], "params.augment.name"] == "interaction_dropout"
    with pytest.raises(ConfigError, match="transferred no trainable weight"):
        run_pipeline(tiny_cfg(tmp_path, "strategy=scratch", "regularize.l2_sp=1", run_dir="scratch"))
    with pytest.raises(ConfigError, match="trains nothing"):
        run_pipeline(tiny_cfg(tmp_path, "strategy=popular", "regularize.l2=1", run_dir="popular"))


def test_cl4srec_on_sasrec_logs_its_term_per_epoch_and_keeps_the_model_keys(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from tlexp.pipeline import run_pipeline

    small = ["backbone=sasrec", "strategy=scratch", "world.n_users=400", "trainer.max_epochs=2", "backbone.dim=16",
             "backbone.max_seq_len=10", "backbone.n_layers=1", "backbone.batch_size=32", "logger.predictions_sample=0",
             "+trainer.limit_train_batches=2"]
    result = run_pipeline(tiny_cfg(tmp_path, *small, "augment=cl4srec", "augment.cl_weight=0.5", run_dir="cl"))
    client = MlflowClient(result["tracking_uri"])
    cl = client.get_metric_history(result["run_id"], "train/loss_cl")
    assert len(cl) == len(client.get_metric_history(result["run_id"], "train/loss")) == 2
    assert all(m.value > 0 for m in cl) and result["metrics"]["test/ndcg_at_10"] > 0
    df = mlflow_runs(result["tracking_uri"]).set_index("run_id")
    row = df.loc[result["run_id"]]
    assert row["params.augment.name"] == "cl4srec" and row["params.augment.cl_weight"] == "0.5"
    # the served model is a plain SASRec: same parameter count as without augmentation (the mask vector
    # and the contrastive term belong to the training objective)
    from helpers import assembled

    plain = assembled(tiny_cfg(tmp_path, *small, run_dir="plain"))
    assert int(row["params.params_total"]) == plain.backbone.num_parameters()
    with pytest.raises(ConfigError, match="augment=crop works on item sequences"):
        assembled(tiny_cfg(tmp_path, "strategy=scratch", "augment=crop", run_dir="pairs"))
