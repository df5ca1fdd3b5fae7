"""End to end in-process: the MLflow contract, the pretraining cache, reproducibility, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import mlflow_runs, tiny_cfg

from tlexp.pipeline import run_pipeline

REQUIRED_TAGS = ("strategy", "source", "target", "backbone", "seed", "git_sha")
SEGMENT_KEYS = ("test/ndcg_at_10", "test_cold/ndcg_at_10", "test_warm/ndcg_at_10", "val/ndcg_at_10")


def test_finetune_run_honours_the_mlflow_contract(outputs: Path):
    from mlflow.tracking import MlflowClient

    result = run_pipeline(tiny_cfg(outputs, "strategy=finetune"))
    assert result["tracking_uri"] == f"sqlite:///{outputs.resolve() / 'mlflow.db'}"
    client = MlflowClient(result["tracking_uri"])
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    for key in SEGMENT_KEYS + ("test/recall_at_20", "test/coverage_at_10", "test_warm/hit_at_5",
                               "test/mrr_at_10", "test/precision_at_10", "test/f1_at_10"):
        assert key in run.data.metrics, key
    assert "train/loss" in run.data.metrics
    for tag in REQUIRED_TAGS:
        assert run.data.tags.get(tag), tag
    assert run.data.tags["strategy"] == "finetune" and run.data.tags["target"] == "social"
    assert run.data.tags["source"] == "ecommerce" and run.data.tags["backbone"] == "two_tower"
    assert run.data.params["optimizer.lr"] == "0.005" and run.data.params["seed"] == "0"
    # per-epoch validation history (one point per epoch) plus the selected model's final value
    history = client.get_metric_history(result["run_id"], "val/ndcg_at_10")
    assert len(history) >= 2
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"config.yaml", "predictions.csv", "checkpoints"} <= artifacts
    local = Path(client.download_artifacts(result["run_id"], "config.yaml"))
    cfg = yaml.safe_load(local.read_text())
    assert cfg["strategy"]["name"] == "finetune" and cfg["world"]["n_users"] == 800
    pred = Path(client.download_artifacts(result["run_id"], "predictions.csv")).read_text().splitlines()
    assert pred[0] == "user,cold_start,top_10,held_out" and len(pred) == 21
    ckpts = client.list_artifacts(result["run_id"], "checkpoints")
    assert ckpts and ckpts[0].path.endswith(".ckpt")


def test_second_run_hits_pretrain_cache_and_reproduces_metrics(outputs: Path):
    first = run_pipeline(tiny_cfg(outputs, "strategy=finetune", run_dir="a"))
    second = run_pipeline(tiny_cfg(outputs, "strategy=finetune", run_dir="b"))
    df = mlflow_runs(first["tracking_uri"]).set_index("run_id")
    assert df.loc[first["run_id"], "tags.pretrain_cache"] == "miss"
    assert df.loc[second["run_id"], "tags.pretrain_cache"] == "hit"
    assert df.loc[first["run_id"], "tags.pretrain_key"] == df.loc[second["run_id"], "tags.pretrain_key"]
    assert df.loc[second["run_id"], "tags.scenario_cache"] == "hit"
    assert "time/pretrain_s" in second["timings"]
    assert second["timings"]["time/pretrain_s"] < first["timings"]["time/pretrain_s"]
    test_keys = [k for k in first["metrics"] if k.startswith("test")]
    assert test_keys and all(first["metrics"][k] == second["metrics"][k] for k in test_keys)
    # a different seed is a different pretraining (and different numbers)
    third = run_pipeline(tiny_cfg(outputs, "strategy=finetune", "seed=1", run_dir="c"))
    df = mlflow_runs(first["tracking_uri"]).set_index("run_id")
    assert df.loc[third["run_id"], "tags.pretrain_cache"] == "miss"
    assert third["metrics"]["test/ndcg_at_10"] != first["metrics"]["test/ndcg_at_10"]


def test_popular_and_scratch_need_no_source_pretraining(outputs: Path):
    pop = run_pipeline(tiny_cfg(outputs, "strategy=popular", run_dir="p"))
    scr = run_pipeline(tiny_cfg(outputs, "strategy=scratch", run_dir="s"))
    df = mlflow_runs(pop["tracking_uri"]).set_index("run_id")
    assert df.loc[pop["run_id"], "tags.backbone"] == "popular"
    assert "tags.pretrain_cache" not in df.columns or df["tags.pretrain_cache"].isna().all()
    assert not (outputs / "cache" / "pretrain").exists()
    # popularity gives every cold user the same list (nothing to mask): exactly 10 of 300 items
    assert pop["metrics"]["test_cold/coverage_at_10"] == pytest.approx(10 / 300)
    assert scr["metrics"]["test/coverage_at_10"] > pop["metrics"]["test/coverage_at_10"]


def test_run_that_raises_is_marked_failed(outputs: Path, monkeypatch: pytest.MonkeyPatch):
    from tlexp.pipeline import run as pipeline_run

    def broken(*args, **kwargs):
        raise ValueError("something broke while training")

    monkeypatch.setattr(pipeline_run, "fit_best", broken)
    with pytest.raises(ValueError):
        run_pipeline(tiny_cfg(outputs, "strategy=scratch"))
    df = mlflow_runs(f"sqlite:///{outputs.resolve() / 'mlflow.db'}")
    assert df["status"].tolist() == ["FAILED"]
    assert "something broke while training" in df["tags.error"].iloc[0]


def test_interrupted_run_is_marked_killed(outputs: Path, monkeypatch: pytest.MonkeyPatch):
    from tlexp.pipeline import run as pipeline_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_run, "fit_best", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(tiny_cfg(outputs, "strategy=scratch"))
    df = mlflow_runs(f"sqlite:///{outputs.resolve() / 'mlflow.db'}")
    assert df["status"].tolist() == ["KILLED"]


def test_freeze_and_transfer_options(outputs: Path):
    result = run_pipeline(tiny_cfg(outputs, "strategy=finetune", "transfer.freeze=[user_emb]",
                                   "transfer.lr_scale=1.0"))
    df = mlflow_runs(result["tracking_uri"]).set_index("run_id")
    row = df.loc[result["run_id"]]
    frozen = int(row["params.data.target_users"]) * 64  # the user embedding table, dim 64
    assert int(row["params.params_trainable"]) == int(row["params.params_total"]) - frozen
    assert "user_emb.weight" in row["params.transfer.moved"]


@pytest.mark.parametrize("override", ["optimizer=adamw", "optimizer=sgd", "scheduler=cosine", "scheduler=step",
                                      "loss=softmax", "backbone.tower_layers=[32]"])
def test_optimizer_scheduler_loss_choices_train(outputs: Path, override: str):
    result = run_pipeline(tiny_cfg(outputs, "strategy=scratch", "trainer.max_epochs=1", override))
    assert result["metrics"]["test/ndcg_at_10"] > 0


@pytest.mark.parametrize("overrides", [
    ["strategy=fusion", "strategy.fusion.mode=ensemble", "strategy.fusion.sources=[news,video]",
     "eval.monitor=val_combined/ndcg_at_10"],
    ["strategy=ease", "eval.monitor=val_cold_k1/ndcg_at_10"]], ids=["fusion-ensemble", "ease-kshot-monitor"])
def test_no_choice_is_made_after_looking_at_test(outputs: Path, monkeypatch: pytest.MonkeyPatch, overrides):
    """Every evaluation of a test set comes after every evaluation of a validation set: early stopping,
    checkpointing and a strategy's choices (ensemble weights, EASE's regularisation) only ever saw
    validation numbers."""
    from tlexp.evaluation import evaluator, kshot
    from tlexp.training import module

    seen: list[str] = []
    real = evaluator.accumulate

    def recording(eval_set, *args, **kwargs):
        seen.append(eval_set.name)
        return real(eval_set, *args, **kwargs)

    for mod in (evaluator, kshot, module):
        monkeypatch.setattr(mod, "accumulate", recording)
    result = run_pipeline(tiny_cfg(outputs, *overrides, "eval.kshot.shots=[1]", "trainer.max_epochs=2"))
    assert result["monitor"] == overrides[-1].split("=")[1] and result["monitor"] in result["metrics"]
    first_test = next(i for i, name in enumerate(seen) if name.startswith("test"))
    last_val = max(i for i, name in enumerate(seen) if name.startswith("val"))
    assert last_val < first_test, seen
    assert seen.count("val") >= 3  # per epoch or per candidate, and the final validation
    assert "val_cold_k1" in seen and "test_cold_k1" in seen


def test_a_test_metric_cannot_be_the_monitor(outputs: Path):
    from tlexp.core.errors import ConfigError

    with pytest.raises(ConfigError, match="must be a validation metric"):
        run_pipeline(tiny_cfg(outputs, "eval.monitor=test_cold/ndcg_at_10"))
    with pytest.raises(ConfigError, match="not validation segments"):
        run_pipeline(tiny_cfg(outputs, "eval.combine=[val,test]"))
