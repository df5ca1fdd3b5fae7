"""Distillation: each loss term against a hand-computed value, and the strategy end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import tiny_cfg
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
