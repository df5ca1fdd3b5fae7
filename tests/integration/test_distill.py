"""Distillation: each loss term against a hand-computed value, and the strategy end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import mlflow_runs, tiny_cfg

from tlexp.models.distill_losses import (
    total_loss,
)


# Every end-to-end test here shares one cache (teacher, pretrained students) and trains briefly.
FAST = ["trainer.max_epochs=2", "pretrain.max_epochs=2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distill_cache")


def cfg_for(outputs: Path, cache: Path, *overrides: str, run_dir: str = "run"):
    return tiny_cfg(outputs, f"paths.cache_dir={cache}", *FAST, *overrides, run_dir=run_dir)


def prepared(cfg):
    """The run's model as the pipeline builds it (teacher loaded or trained into the cache)."""
    from helpers import assembled

    return assembled(cfg)


# ----- terms on a step, and their weighted sum -----


# ----- the strategy -----
def test_distill_run_logs_teacher_student_tradeoff_and_caches_the_teacher(outputs: Path, cache: Path):
    from mlflow.tracking import MlflowClient

    from tlexp.pipeline import run_pipeline

    first = run_pipeline(cfg_for(outputs, cache, "strategy=distill", run_dir="a"))
    client = MlflowClient(first["tracking_uri"])
    run = client.get_run(first["run_id"])
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    p_t, p_s = int(params["params_teacher"]), int(params["params_student"])
    assert p_s / p_t <= 0.15  # the default student is at most 15% of the default teacher
    assert float(params["compression_ratio"]) == pytest.approx(p_t / p_s, rel=1e-3)
    assert int(params["params_total"]) == p_s  # the module's backbone is the student
    assert tags["backbone"] == "two_tower_small" and tags["teacher_backbone"] == "two_tower_large"
    for key in ("test/ndcg_at_10", "test_cold/ndcg_at_10", "teacher_test/ndcg_at_10",
                "teacher_test_cold/ndcg_at_10", "teacher_test_warm/ndcg_at_10",
                "time/teacher_ms_per_1k_users", "time/student_ms_per_1k_users",
                "train/loss_rec", "train/loss_kd", "train/loss_rank", "train/loss_hint", "teacher/val_ndcg_at_10"):
        assert key in metrics, key
    assert 0 < metrics["teacher_test/ndcg_at_10"] <= 1
    assert params["distill.terms"] == "rec=1,kd=1,rank=0.5,hint=0.1"

    # a second student (another loss setup) reuses the cached teacher and student pretraining
    second = run_pipeline(cfg_for(outputs, cache, "strategy=distill", "strategy.losses.hint.weight=0", run_dir="b"))
    tags2 = client.get_run(second["run_id"]).data.tags
    assert tags2["teacher_cache"] == "hit" and tags2["teacher_pretrain_cache"] == "hit"
    assert tags2["pretrain_cache"] == "hit" and tags2["teacher_key"] == tags["teacher_key"]
    # the same teacher gives the same teacher metrics
    assert second["metrics"]["teacher_test/ndcg_at_10"] == first["metrics"]["teacher_test/ndcg_at_10"]


def test_each_loss_weight_set_to_zero_in_turn_runs(outputs: Path, cache: Path):
    from tlexp.pipeline import run_pipeline

    runs = {}
    for name in ("rec", "kd", "rank", "hint"):
        res = run_pipeline(cfg_for(outputs, cache, "strategy=distill", f"strategy.losses.{name}.weight=0",
                                   "trainer.max_epochs=1", run_dir=f"no_{name}"))
        runs[name] = res
        assert f"train/loss_{name}" not in res["metrics"]
        assert 0 <= res["metrics"]["test/ndcg_at_10"] <= 1
    df = mlflow_runs(runs["rec"]["tracking_uri"]).set_index("run_id")
    for name, res in runs.items():
        terms = dict(kv.split("=") for kv in df.loc[res["run_id"], "params.distill.terms"].split(","))
        assert name not in terms and len(terms) == 3
        assert df.loc[res["run_id"], "status"] == "FINISHED"
    # the teacher is trained at most once, then found in the cache
    assert (df["tags.teacher_cache"] == "hit").sum() >= 3


def test_all_weights_zero_is_a_config_error(outputs: Path, cache: Path):
    from tlexp.core.errors import ConfigError
    from tlexp.pipeline import run_pipeline

    zero = [f"strategy.losses.{n}.weight=0" for n in ("rec", "kd", "rank", "hint")]
    with pytest.raises(ConfigError, match="weight 0"):
        run_pipeline(cfg_for(outputs, cache, "strategy=distill", *zero))


def test_teacher_runs_once_per_step_and_items_never(outputs: Path, cache: Path):
    """The teacher's user tower runs once per training step (shared by all terms), its item table never."""
    asm = prepared(cfg_for(outputs, cache, "strategy=distill"))
    scenario, objective = asm.scenario, asm.built.objective
    calls = {"user": 0, "item": 0}
    objective.teacher.user_emb.register_forward_hook(lambda *a: calls.__setitem__("user", calls["user"] + 1))
    objective.teacher.item_emb.register_forward_hook(lambda *a: calls.__setitem__("item", calls["item"] + 1))
    batch = {"user": torch.tensor([0, 1, 2, 3]), "item": torch.tensor([5, 6, 7, 8])}
    loss, values = total_loss(objective.terms, objective.make_step(asm.built.model.backbone, batch))
    loss.backward()
    assert set(values) == {"rec", "kd", "rank", "hint"}
    assert calls == {"user": 1, "item": 0}
    assert all(p.grad is None for p in objective.teacher.parameters())  # frozen
    # the precomputed top items are unseen by the user in training
    train = scenario.target.train
    seen = set(zip(train["user"].tolist(), train["item"].tolist(), strict=True))
    top = objective.teacher_top
    assert top.shape == (scenario.target.n_users, 10)
    assert not any((u, int(i)) in seen for u in range(50) for i in top[u])


@pytest.mark.slow
def test_distill_under_ddp_spawn_two_processes(outputs: Path, cache: Path):
    """Distillation trains in two ddp_spawn processes (the frozen teacher travels with the objective),
    validation is gathered over both ranks, the run is one MLflow run."""
    from mlflow.tracking import MlflowClient
    from helpers import run_cli

    from helpers import TINY

    # Fill the caches in this process (teacher, pretrained sources; their keys ignore the trainer),
    # so that the ddp runs spend their time on what is being tested.
    from tlexp.evaluation.plan import EvaluationPlan
    from tlexp.pipeline.build import eval_settings

    cfg = cfg_for(outputs, cache, "strategy=distill")
    asm = prepared(cfg)
    plan = EvaluationPlan(asm.scenario.target, eval_settings(cfg))
    teacher_ndcg = plan.extra(asm.strategy.extra_scorers(asm.built))["teacher_test/ndcg_at_10"]
    uri = f"sqlite:///{outputs / 'ddp.db'}"
    proc = run_cli(["run", *TINY, *FAST, f"paths.cache_dir={cache}", "strategy=distill", "trainer=ddp",
                    "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2"],
                   {"TLEXP_OUTPUTS": str(outputs), "MLFLOW_TRACKING_URI": uri}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = mlflow_runs(uri)
    ddp = df[df["params.trainer.strategy"] == "ddp_spawn"].set_index("tags.strategy")
    assert sorted(ddp.index) == ["distill"]
    for strategy, run in ddp.iterrows():
        assert run["status"] == "FINISHED" and run["params.trainer.devices"] == "2"
        assert 0 < run["metrics.test/ndcg_at_10"] <= 1 and 0 <= run["metrics.test_cold/ndcg_at_10"] <= 1
        # one validation point per epoch, gathered over both ranks, + the selected model's final value
        history = MlflowClient(uri).get_metric_history(run["run_id"], "val/ndcg_at_10")
        assert len(history) == 3, strategy
    d = ddp.loc["distill"]
    assert d["tags.teacher_cache"] == "hit" and d["tags.pretrain_cache"] == "hit"
    # the frozen teacher came through training in two processes unchanged
    assert d["metrics.teacher_test/ndcg_at_10"] == pytest.approx(teacher_ndcg, abs=1e-12)
    assert d["metrics.train/loss_kd"] >= 0
