"""DP-SGD (tlexp/training/privacy.py): per-example gradients, clipped to privacy.max_grad_norm, as Opacus steps them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tlexp.core.errors import ConfigError
from tlexp.models.losses import BPRLoss, CrossEntropyLoss, InBatchSoftmaxLoss
from tlexp.models.recommender import Recommender
from tlexp.models.two_tower import TwoTower
from tlexp.training.module import LossObjective
from tlexp.training.privacy import PrivacySettings, PrivateTraining, loss_problem, per_sample_grads


def _model(seed: int = 0, tower: list[int] | None = None) -> TwoTower:
    torch.manual_seed(seed)
    return TwoTower(SimpleNamespace(n_users=12, n_items=9), dim=4, tower_layers=tower or [5], init_std=0.5)


def _batch(n: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"user": torch.randint(0, 12, (n,), generator=g), "item": torch.randint(0, 9, (n,), generator=g)}


def _one_by_one(backbone: TwoTower, loss: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[dict]:
    """Each example's gradient by plain autograd on a batch of one: the reference, independent of torch.func."""
    out = []
    for i in range(batch["user"].shape[0]):
        backbone.zero_grad()
        loss(backbone, {k: v[i: i + 1] for k, v in batch.items()}).backward()
        out.append({n: p.grad.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad})
    backbone.zero_grad()
    return out


def test_per_example_gradients_equal_autograd_on_each_example_alone():
    backbone, loss, batch = _model(), CrossEntropyLoss(num_negatives=0), _batch()
    backbone.user_tower[0].bias.requires_grad_(False)  # frozen: no per-example gradient for it
    grads, losses = per_sample_grads(backbone, loss, batch)
    ref = _one_by_one(backbone, loss, batch)
    assert set(grads) == set(ref[0]) and "user_tower.0.bias" not in grads
    for name, g in grads.items():
        assert g.shape == (8, *dict(backbone.named_parameters())[name].shape)
        assert torch.allclose(g, torch.stack([r[name] for r in ref]), atol=1e-6), name
    # the embedding rows of an example's user get its gradient, other users' rows none
    u0 = int(batch["user"][0])
    others = [u for u in range(12) if u not in batch["user"].tolist()]
    assert grads["user_emb.weight"][0, u0].abs().sum() > 0 and grads["user_emb.weight"][:, others].abs().sum() == 0
    assert torch.allclose(losses.mean(), loss(backbone, batch), atol=1e-6)


def test_each_example_is_clipped_to_max_grad_norm_before_the_step():
    """With no noise and plain SGD (lr 1), one step moves the weights by minus the sum of the per-example
    gradients, each scaled to norm <= C (over all weights together), divided by the expected batch size."""
    backbone, loss, batch = _model(), CrossEntropyLoss(num_negatives=0), _batch()
    ref = _one_by_one(backbone, loss, batch)
    norms = torch.stack([torch.sqrt(sum((g ** 2).sum() for g in r.values())) for r in ref])
    clip = float(norms.median())  # some examples are clipped, some are not
    assert (norms > clip * 1.01).any() and (norms < clip * 0.99).any()

    dp = PrivateTraining(PrivacySettings(dp=True, noise_multiplier=1.0, max_grad_norm=clip), n_examples=80,
                         batch_size=8, max_epochs=1)
    dp.noise_multiplier = 0.0  # no noise: the update is the clipped gradient itself (config refuses 0)
    model = Recommender(backbone)
    opt = dp.optimizer(torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=1.0))
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    dp.step(model, LossObjective(loss), opt, batch)

    expected_batch = 8  # sample rate 8/80 of 80 examples
    for name, p in backbone.named_parameters():
        clipped = sum(r[name] * min(1.0, clip / float(norms[i])) for i, r in enumerate(ref))
        assert torch.allclose(before[name] - p.detach(), clipped / expected_batch, atol=1e-5), name
    # and not merely the plain mean gradient: clipping changed the step
    unclipped = sum(r["item_emb.weight"] for r in ref) / expected_batch
    assert not torch.allclose(before["item_emb.weight"] - backbone.item_emb.weight.detach(), unclipped, atol=1e-5)
    assert dp.steps == 1 and all(getattr(p, "grad_sample", None) is None for p in backbone.parameters())


def test_noise_has_the_configured_scale_and_an_empty_poisson_batch_still_steps():
    backbone = _model()
    dp = PrivateTraining(PrivacySettings(dp=True, noise_multiplier=2.0, max_grad_norm=0.5), n_examples=1000,
                         batch_size=100, max_epochs=1)
    opt = dp.optimizer(torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=1.0))
    before = backbone.item_emb.weight.detach().clone()
    empty = {"user": torch.zeros(0, dtype=torch.long), "item": torch.zeros(0, dtype=torch.long)}
    loss, n = dp.step(Recommender(backbone), LossObjective(BPRLoss()), opt, empty)
    assert n == 0
    moved = before - backbone.item_emb.weight.detach()  # noise only: std σ·C / expected batch
    assert float(moved.std()) == pytest.approx(2.0 * 0.5 / 100, rel=0.35)
    assert dp.steps == 1 and 0 < dp.epsilon() < float("inf")


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_target_epsilon_is_what_the_planned_steps_spend(accountant):
    dp = PrivateTraining(PrivacySettings(dp=True, target_epsilon=2.0, delta=1e-5, accountant=accountant),
                         n_examples=5000, batch_size=250, max_epochs=4)
    assert dp.planned_steps == 80 and dp.sample_rate == pytest.approx(0.05)
    for _ in range(dp.planned_steps):
        dp.accountant.step(noise_multiplier=dp.noise_multiplier, sample_rate=dp.sample_rate)
    dp.steps = dp.planned_steps
    assert dp.epsilon() == pytest.approx(2.0, abs=0.02) and dp.planned_epsilon == pytest.approx(dp.epsilon(), rel=1e-6)
    assert PrivateTraining(PrivacySettings(dp=True), n_examples=5000, batch_size=250, max_epochs=1).delta == 2e-5


def test_losses_without_per_example_terms_are_refused_by_name():
    assert loss_problem(BPRLoss(num_negatives=4)) is None and loss_problem(CrossEntropyLoss(0)) is None
    assert "loss=softmax" in loss_problem(InBatchSoftmaxLoss()) and "loss=bpr" in loss_problem(InBatchSoftmaxLoss())
    assert "loss=sampled_ce" in loss_problem(CrossEntropyLoss(num_negatives=64))


@pytest.mark.parametrize("field,value,message", [
    ("delta", 2.0, r"privacy.delta=2.0 must be between 0 and 1"),
    ("max_grad_norm", 0.0, r"privacy.max_grad_norm=0.0 must be a number > 0"),
    ("noise_multiplier", -1.0, r"privacy.noise_multiplier=-1.0 must be a number > 0"),
    ("target_epsilon", 0.0, r"privacy.target_epsilon=0.0 must be a number > 0"),
    ("accountant", "gdp", r"privacy.accountant='gdp' must be one of rdp\|prv"),
])
def test_bad_settings_are_one_line_errors(field, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        PrivacySettings(**{field: value})
    assert "\n" not in str(err.value)
