"""L2-SP and the plain L1/L2 terms: zero where they should be, gradients that point the right way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlexp.core.errors import ConfigError
from tlexp.training.regularize import Regularizer, RegularizeSettings


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


def test_l2_sp_is_zero_at_the_starting_point_and_its_gradient_points_back_to_it():
    model = _model()
    reg = Regularizer(RegularizeSettings(l2_sp=2.0), model, anchored=["0.weight", "0.bias"])
    terms = reg.terms(model)
    assert set(terms) == {"l2_sp"} and float(terms["l2_sp"].detach()) == 0.0
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(torch.randn_like(start))
        model[1].weight.add_(1.0)  # not anchored: L2-SP does not see it
    terms = reg.terms(model)
    moved = model[0].weight.detach() - start
    assert float(terms["l2_sp"].detach()) == pytest.approx(0.5 * float((moved ** 2).sum()), rel=1e-6)
    model.zero_grad()
    reg.weighted(terms).backward()
    # d/dθ (w/2 ||θ - θ0||²) = w (θ - θ0): a gradient step moves θ straight back towards θ0
    assert torch.allclose(model[0].weight.grad, 2.0 * moved, atol=1e-6)
    assert model[1].weight.grad is None or float(model[1].weight.grad.abs().sum()) == 0.0
    with torch.no_grad():
        model[0].weight.sub_(0.1 * model[0].weight.grad)
    assert float(((model[0].weight.detach() - start) ** 2).sum()) < float((moved ** 2).sum())


def test_l1_and_l2_cover_every_trainable_parameter_and_skip_frozen_ones():
    model = _model()
    model[1].bias.requires_grad_(False)
    reg = Regularizer(RegularizeSettings(l2=1.0, l1=0.5), model)
    terms = reg.terms(model)
    trainable = [p.detach() for p in model.parameters() if p.requires_grad]
    assert float(terms["l2"].detach()) == pytest.approx(0.5 * sum(float((p ** 2).sum()) for p in trainable), rel=1e-6)
    assert float(terms["l1"].detach()) == pytest.approx(sum(float(p.abs().sum()) for p in trainable), rel=1e-6)
    total = float(terms["l2"].detach()) + 0.5 * float(terms["l1"].detach())
    assert float(reg.weighted(terms).detach()) == pytest.approx(total, rel=1e-6)


def test_bad_weights_and_l2_sp_without_a_transfer_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"regularize.l2_sp=-1"):
        RegularizeSettings(l2_sp=-1)
    with pytest.raises(ConfigError, match="transferred no trainable weight"):
        Regularizer(RegularizeSettings(l2_sp=1.0), _model(), anchored=[])
    assert not RegularizeSettings().active
