"""Fusion of several source models: the fusion head, the ensemble, and the strategy end to end."""

from __future__ import annotations


import pytest
import torch

from tlexp.strategies.fusion import FusionHead, simplex_grid, standardise

# The end-to-end tests share one cache of pretrained sources and train briefly.
FAST = ["data=ecommerce", "trainer.max_epochs=1", "pretrain.max_epochs=1"]


def _head(mode: str) -> FusionHead:
    # 3 target users, 2 sources of dimension 2; user 0 known by both, user 1 by source 0 only, user 2 by none
    t0 = torch.tensor([[1.0, 0.0], [2.0, 2.0], [0.0, 0.0]])
    t1 = torch.tensor([[0.0, 3.0], [0.0, 0.0], [0.0, 0.0]])
    have = [torch.tensor([True, True, False]), torch.tensor([True, False, False])]
    return FusionHead([t0, t1], have, dim=2, mode=mode)


def test_weighted_and_gate_start_uniform_over_the_sources_that_know_the_user():
    users = torch.arange(3)
    for mode in ("weighted", "gate"):
        head = _head(mode)
        w = head.weights(users)
        if mode == "gate":  # per user: a softmax over the user's sources only
            assert w.tolist() == [[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]]
        else:               # one softmax over sources, zero where a source does not know the user
            assert w.tolist() == [[0.5, 0.5], [0.5, 0.0], [0.0, 0.0]]
        out = head(users)
        assert out[0].tolist() == [0.5, 1.5]              # (t0 + t1) / 2 through identity adapters
        assert torch.isfinite(out).all() and out[2].tolist() == [0.0, 0.0]
    with torch.no_grad():
        head = _head("weighted")
        head.logits.copy_(torch.tensor([0.0, torch.log(torch.tensor(3.0))]))  # softmax -> [0.25, 0.75]
    assert head.weights(users)[0].tolist() == pytest.approx([0.25, 0.75])


def test_gate_gradient_is_finite_for_users_no_source_knows():
    head = _head("gate")
    with torch.no_grad():
        head.gate.weight.normal_()
    head(torch.arange(3)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_concat_starts_as_the_average_of_the_sources():
    head = _head("concat")
    out = head(torch.arange(3))
    assert out.tolist() == [[0.5, 1.5], [1.0, 1.0], [0.0, 0.0]]


def test_simplex_grid_and_standardise():
    grid = simplex_grid(3, 2)
    assert len(grid) == 6 and all(sum(w) == pytest.approx(1) for w in grid)
    assert (0.5, 0.5, 0.0) in grid and simplex_grid(1, 10) == [(1.0,)]
    z = standardise(torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]]))
    assert z.mean(1).abs().max() < 1e-6 and z.std(1).tolist() == pytest.approx([1.0, 1.0])
    assert z[0].tolist() == pytest.approx([-1.0, 0.0, 1.0])
