"""Distillation: each loss term against a hand-computed value, and the strategy end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import mlflow_runs, tiny_cfg
from torch import nn

from tlexp.models.distill_losses import (
    DistillStep,
    HintTerm,
    RankingTerm,
    RecTerm,
    SoftTargetTerm,
    hint_mse,
    rank_weights,
    ranking_distillation,
    soft_target_kd,
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


def softplus_neg(x: float) -> float:
    """-log σ(x), by hand."""
    return math.log(1.0 + math.exp(-x))


# ----- soft-target KD -----
def test_soft_target_kd_matches_hand_computation_with_temperature_and_padding():
    student = torch.tensor([[1.0, 2.0, 0.0]])
    teacher = torch.tensor([[2.0, 1.0, 5.0]])
    mask = torch.tensor([[True, True, False]])  # the third candidate is padding
    # T = 2: teacher/T = [1, .5], student/T = [.5, 1]. p_t = [σ(.5), σ(-.5)], p_s = [σ(-.5), σ(.5)].
    # KL(p_t || p_s) = σ(.5)·ln(σ(.5)/σ(-.5)) + σ(-.5)·ln(σ(-.5)/σ(.5)) = (σ(.5) - σ(-.5))·0.5
    sig = lambda x: 1 / (1 + math.exp(-x))
    kl = (sig(0.5) - sig(-0.5)) * 0.5
    assert soft_target_kd(student, teacher, mask, temperature=2.0).item() == pytest.approx(4 * kl, rel=1e-6)
    # T = 1: p_t = [σ(1), σ(-1)], p_s = [σ(-1), σ(1)]: KL = (σ(1) - σ(-1))·1, and no T² factor
    assert soft_target_kd(student, teacher, mask, temperature=1.0).item() == pytest.approx(
        sig(1) - sig(-1), rel=1e-6)
    # without the mask the padded candidate (teacher logit 5) dominates: a different value
    assert soft_target_kd(student, teacher, None, 2.0).item() > 4 * kl + 0.5


def test_soft_target_kd_ignores_masked_values_and_empty_rows_without_nan_gradients():
    student = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 0.5]], requires_grad=True)
    teacher = torch.tensor([[2.0, 1.0, 5.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])  # row 2: all padding
    loss = soft_target_kd(student, teacher, mask, 2.0)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[1].abs().sum() == 0 and student.grad[0, 2] == 0  # nothing flows to padding
    other = soft_target_kd(torch.tensor([[1.0, 2.0, -9.0]]), torch.tensor([[2.0, 1.0, -3.0]]), mask[:1], 2.0)
    assert other.item() == pytest.approx(loss.item(), rel=1e-6)  # the padded values never matter
    # identical distributions: zero
    same = soft_target_kd(teacher[:1], teacher[:1], mask[:1], 3.0)
    assert same.item() == pytest.approx(0.0, abs=1e-7)


# ----- ranking distillation -----
def test_rank_weights_decay_exponentially_and_sum_to_one():
    w = rank_weights(3, 1.0)
    z = 1 + math.exp(-1) + math.exp(-2)
    assert w.tolist() == pytest.approx([1 / z, math.exp(-1) / z, math.exp(-2) / z], rel=1e-6)


def test_ranking_distillation_matches_hand_computation_with_padding():
    pos = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    neg = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    w = torch.tensor([0.75, 0.25])
    row1 = 0.75 * softplus_neg(2.0) + 0.25 * softplus_neg(-1.0)
    row2 = 0.75 * softplus_neg(1.0) + 0.25 * softplus_neg(1.0)
    assert ranking_distillation(pos, neg, w).item() == pytest.approx((row1 + row2) / 2, rel=1e-6)
    mask = torch.tensor([[True, False], [False, False]])  # row 1 keeps rank 0 only; row 2 is all padding
    assert ranking_distillation(pos, neg, w, mask).item() == pytest.approx(0.75 * softplus_neg(2.0), rel=1e-6)


# ----- hints -----
def test_hint_mse_matches_hand_computation():
    proj = nn.Linear(2, 3)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        proj.bias.zero_()
    # proj([1, 2]) = [1, 2, 3]; teacher [1, 0, 3]: squared errors [0, 4, 0] -> mean 4/3
    value = hint_mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0]]), proj)
    assert value.item() == pytest.approx(4 / 3, rel=1e-6)


# ----- terms on a step, and their weighted sum -----
def _step(**over) -> DistillStep:
    base = dict(batch={}, student=None, rec_loss=lambda: torch.tensor(0.7), student_user=torch.tensor([[1.0, 2.0]]),
                teacher_user=torch.tensor([[1.0, 0.0, 3.0]]), student_item=torch.tensor([[0.0, 1.0]]),
                teacher_item=torch.tensor([[0.0, 1.0, 1.0]]), candidates=torch.tensor([[0, 1, 2]]),
                cand_mask=torch.tensor([[True, True, False]]), student_cand_scores=torch.tensor([[1.0, 2.0, 0.0]]),
                teacher_cand_scores=torch.tensor([[2.0, 1.0, 5.0]]), top_items=torch.tensor([[3, 4]]),
                top_mask=torch.tensor([[True, True]]), student_top_scores=torch.tensor([[2.0, 0.0]]),
                student_neg_scores=torch.tensor([[0.0, 1.0]]))
    base.update(over)
    return DistillStep(**base)


def test_terms_read_the_step_and_total_is_the_weighted_sum():
    step = _step()
    kd = SoftTargetTerm(weight=2.0, temperature=2.0)
    rank = RankingTerm(weight=0.5, top_k=2, lam=1.0)
    hint = HintTerm(weight=0.1, sides=["user", "item"])
    hint.setup(2, 3)
    with torch.no_grad():
        for lin in hint.proj.values():
            lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            lin.bias.zero_()
    terms = nn.ModuleDict({"rec": RecTerm(1.0), "kd": kd, "rank": rank, "hint": hint})
    total, values = total_loss(terms, step)
    sig = lambda x: 1 / (1 + math.exp(-x))
    w0, w1 = 1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))
    expect = {"rec": 0.7, "kd": 4 * (sig(0.5) - sig(-0.5)) * 0.5,
              "rank": w0 * softplus_neg(2.0) + w1 * softplus_neg(-1.0),
              # user: proj([1,2]) = [1,2,3] vs [1,0,3] -> 4/3; item: proj([0,1]) = [0,1,1] vs [0,1,1] -> 0
              "hint": (4 / 3 + 0.0) / 2}
    for name, v in expect.items():
        assert values[name].item() == pytest.approx(v, rel=1e-5), name
    assert total.item() == pytest.approx(0.7 + 2 * expect["kd"] + 0.5 * expect["rank"] + 0.1 * expect["hint"], rel=1e-5)
    assert kd.needs_candidates and rank.needs_top_k == 2 and hint.needs_items
    assert not HintTerm(sides=["user"]).needs_items


def test_bad_term_settings_are_config_errors():
    from tlexp.core.errors import ConfigError

    with pytest.raises(ConfigError, match="temperature"):
        SoftTargetTerm(temperature=0)
    with pytest.raises(ConfigError, match="sides"):
        HintTerm(sides=["users"])


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


def test_teacher_and_student_are_any_backbone_choice(outputs: Path):
    """Teacher and student are conf/backbone choices composed by Hydra at their place in the config
    (``backbone@strategy.teacher.backbone=<name>``): nothing is composed while the run runs."""
    cfg = tiny_cfg(outputs, "strategy=distill")
    student, teacher = cfg.strategy.student.backbone, cfg.strategy.teacher.backbone
    assert student.dim == 16 and student._target_ == "tlexp.models.two_tower.TwoTower"  # its defaults composed
    assert teacher.dim == 128 and teacher.tower_layers == [128, 128]
    # a text backbone (whose own loss differs from the run's) composes as a teacher too
    with_text = tiny_cfg(outputs, "strategy=distill", "backbone@strategy.teacher.backbone=text_seq")
    text = with_text.strategy.teacher.backbone
    assert text._target_ == "tlexp.models.text_seq.TextSeq" and text.encoder.mode == "frozen"
    assert with_text.loss.logq_correction  # the run's loss is still the run's backbone's
    with pytest.raises(Exception, match="two_tower_large"):  # Hydra lists the choices
        tiny_cfg(outputs, "strategy=distill", "backbone@strategy.teacher.backbone=no_such_backbone")


@pytest.mark.slow
def test_distill_and_fusion_under_ddp_spawn_two_processes(outputs: Path, cache: Path):
    """Both strategies train in two ddp_spawn processes (the teacher travels with the module: loaded
    once per process), validation is gathered over both ranks, each run is one MLflow run."""
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
    prepared(cfg_for(outputs, cache, "strategy=fusion"))
    uri = f"sqlite:///{outputs / 'ddp.db'}"
    proc = run_cli(["run", "-m", *TINY, *FAST, f"paths.cache_dir={cache}", "strategy=distill,fusion", "trainer=ddp",
                    "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2"],
                   {"TLEXP_OUTPUTS": str(outputs), "MLFLOW_TRACKING_URI": uri}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = mlflow_runs(uri)
    ddp = df[df["params.trainer.strategy"] == "ddp_spawn"].set_index("tags.strategy")
    assert sorted(ddp.index) == ["distill", "fusion"]
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
    assert ddp.loc["fusion", "tags.pretrain_ecommerce_cache"] == "hit"
    assert ddp.loc["fusion", "metrics.fusion/gate_ecommerce"] > 0
