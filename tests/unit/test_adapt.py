"""Domain adaptation: the alignment pieces (GRL, MMD, CORAL) and the ``adapt`` strategy end to end."""

from __future__ import annotations

import math

import pytest
import torch

from tlexp.models.alignment import DomainClassifier, coral, dann_lambda, domain_adversarial_loss, \
    grad_reverse, mmd


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    (grad_reverse(x, 0.7) * w).sum().backward()
    assert torch.allclose(x.grad, -0.7 * w)
    y = torch.randn(4, requires_grad=True)
    out = grad_reverse(y, 2.0)
    assert torch.equal(out, y)  # identity on the way forward
    out.pow(2).sum().backward()
    assert torch.allclose(y.grad, -2.0 * 2 * y.detach())


def test_dann_warmup_goes_from_zero_to_one():
    assert dann_lambda(0.0) == 0.0
    values = [dann_lambda(p / 10) for p in range(11)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(2 / (1 + math.exp(-10)) - 1) and values[-1] > 0.999
    assert dann_lambda(5.0) == dann_lambda(1.0)  # clipped past the end of training


def test_domain_classifier_behind_grl_trains_apart_while_features_move_together():
    torch.manual_seed(0)
    src = torch.randn(64, 4) + 2.0
    tgt = (torch.randn(64, 4) - 2.0).requires_grad_(True)
    clf = DomainClassifier(4, hidden=[8])
    loss, acc = domain_adversarial_loss(clf, src, tgt, coeff=1.0)
    loss.backward()
    plain = tgt.grad.clone()
    tgt.grad = None
    clf.zero_grad()
    # without reversal the target features would be pushed to be *more* recognisable; with it, less
    feats = torch.cat([src, tgt])
    labels = torch.cat([torch.ones(64), torch.zeros(64)])
    torch.nn.functional.binary_cross_entropy_with_logits(clf(feats), labels).backward()
    assert torch.allclose(plain, -tgt.grad, atol=1e-6)
    assert 0.0 <= float(acc) <= 1.0


def test_mmd_is_zero_for_identical_samples_and_grows_with_a_shift():
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    assert float(mmd(x, x.clone())) == pytest.approx(0.0, abs=1e-6)
    same = float(mmd(x, torch.randn(200, 8)))
    shifted = [float(mmd(x, torch.randn(200, 8) + s)) for s in (0.5, 1.0, 2.0)]
    assert same < 0.1  # the biased estimate is small but positive for two samples of one distribution
    assert same < shifted[0] < shifted[1] < shifted[2]
    assert shifted[0] > 3 * same  # biased V-statistic: "same" is mostly its positive bias


def test_coral_matches_known_covariances():
    torch.manual_seed(0)
    d, n = 3, 500
    z = torch.randn(n, d, dtype=torch.float64)
    z = z - z.mean(0)
    # whiten exactly: the sample covariance of `white` is the identity
    cov = z.T @ z / (n - 1)
    white = z @ torch.linalg.inv(torch.linalg.cholesky(cov)).T
    a = torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    target = white @ a.T  # covariance a a^T
    expected = ((torch.eye(d, dtype=torch.float64) - a @ a.T) ** 2).sum() / (4 * d * d)
    assert float(coral(white, target)) == pytest.approx(float(expected), rel=1e-9)
    assert float(coral(white, white + 5.0)) == pytest.approx(0.0, abs=1e-12)  # a shift is not a covariance change
    # scale-free: the same mismatch at 1/10 the scale keeps its value (the textbook one shrinks 10^4-fold)
    small_s, small_t = white / 10, target / 10
    assert float(coral(small_s, small_t)) == pytest.approx(float(expected) / 1e4, rel=1e-9)
    assert float(coral(small_s, small_t, scale_free=True)) == pytest.approx(float(expected), rel=1e-9)
