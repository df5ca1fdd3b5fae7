"""Meta-learning: MAML's meta-gradient against finite differences, Reptile's update rule, the
vectorised meta-objective against a per-task autograd loop, and ``meta`` runs end to end."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from tlexp.evaluation.kshot import support_loss
from tlexp.strategies.meta import inner_loop, reptile_loss

DOT = lambda u, v: u @ v.T  # noqa: E731


def _tiny_problem():
    """Two tasks on a 3-d linear map and 5 items, in float64 for finite differences."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, dtype=torch.float64, generator=g)
    support = torch.tensor([[0, 2], [1, 4]])
    query = torch.tensor([[3, 1], [0, 2]])
    weight = torch.ones(2, 2, dtype=torch.float64)
    lin = nn.Linear(3, 3).double()
    w0 = torch.randn(3, 3, dtype=torch.float64, generator=g)
    b0 = torch.randn(3, dtype=torch.float64, generator=g)
    items0 = torch.randn(5, 3, dtype=torch.float64, generator=g)
    return lin, x, support, query, weight, w0, b0, items0


def _task_loss(lin):
    def loss(fast, x, idx, w, items):
        z = functional_call(lin, {"weight": fast["map.weight"], "bias": fast["map.bias"]}, (x,)) + fast["delta"]
        return support_loss(z, items, idx, DOT, w)
    return loss


def _meta_loss(lin, x, support, query, weight, first_order: bool, steps: int = 2, lr: float = 0.3):
    task_loss = _task_loss(lin)

    def f(w, b, items):
        fast = {"map.weight": w.expand(2, 3, 3), "map.bias": b.expand(2, 3),
                "delta": torch.zeros(2, 3, dtype=torch.float64)}
        adapted = inner_loop(fast, task_loss, (x, support, weight), (items,), steps, lr, first_order=first_order)
        return vmap(task_loss, in_dims=(0, 0, 0, 0, None))(adapted, x, query, weight, items).sum()
    return f


def test_maml_meta_gradient_matches_finite_differences():
    lin, x, support, query, weight, w0, b0, items0 = _tiny_problem()
    f = _meta_loss(lin, x, support, query, weight, first_order=False)
    inputs = tuple(t.clone().requires_grad_(True) for t in (w0, b0, items0))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    # the second-order terms matter here: the first-order gradient is measurably different
    second = torch.autograd.grad(f(*inputs), inputs)
    fo = _meta_loss(lin, x, support, query, weight, first_order=True)
    first = torch.autograd.grad(fo(*inputs), inputs)
    assert (second[0] - first[0]).abs().max() > 1e-3


def test_first_order_maml_is_the_query_gradient_at_the_adapted_weights():
    lin, x, support, query, weight, w0, b0, items0 = _tiny_problem()
    task_loss = _task_loss(lin)
    w = w0.clone().requires_grad_(True)
    fo = _meta_loss(lin, x, support, query, weight, first_order=True)
    (gw,) = torch.autograd.grad(fo(w, b0, items0), (w,))
    # reference, by hand: adapt each task with detached gradients, then sum dL_q/dphi over tasks
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for t in range(2):
        fast = {"map.weight": w0.clone(), "map.bias": b0.clone(), "delta": torch.zeros(3, dtype=torch.float64)}
        for _ in range(2):
            fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
            grads = torch.autograd.grad(task_loss(fast, x[t], support[t], weight[t], items0), list(fast.values()))
            fast = {k: v - 0.3 * gk for (k, v), gk in zip(fast.items(), grads, strict=True)}
        phi = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
        expected += torch.autograd.grad(task_loss(phi, x[t], query[t], weight[t], items0), phi["map.weight"])[0]
    assert torch.allclose(gw, expected, atol=1e-10)


def test_reptile_update_rule_on_a_tiny_model():
    lin, x, support, query, weight, w0, b0, items0 = _tiny_problem()
    task_loss = _task_loss(lin)
    data = torch.cat([support, query], 1)
    w4 = torch.ones(2, 4, dtype=torch.float64)
    steps, inner_lr, outer_lr = 3, 0.2, 0.5
    theta = {"map.weight": nn.Parameter(w0.clone()), "map.bias": nn.Parameter(b0.clone())}
    fast = {k: v.detach().expand(2, *v.shape) for k, v in theta.items()}
    fast["delta"] = torch.zeros(2, 3, dtype=torch.float64)
    adapted = inner_loop(fast, task_loss, (x, data, w4), (items0,), steps, inner_lr, first_order=True)
    opt = torch.optim.SGD(theta.values(), lr=outer_lr)
    reptile_loss(theta, adapted).backward()
    opt.step()
    # reference: each task trained with torch.optim.SGD from theta, then theta + eps (mean(phi) - theta)
    phis = []
    for t in range(2):
        model = nn.Linear(3, 3).double()
        delta = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        with torch.no_grad():
            model.weight.copy_(w0)
            model.bias.copy_(b0)
        sgd = torch.optim.SGD([*model.parameters(), delta], lr=inner_lr)
        for _ in range(steps):
            sgd.zero_grad()
            support_loss(model(x[t]) + delta, items0, data[t], DOT, w4[t]).backward()
            sgd.step()
        phis.append((model.weight.detach().clone(), model.bias.detach().clone()))
    mean_w = torch.stack([p[0] for p in phis]).mean(0)
    mean_b = torch.stack([p[1] for p in phis]).mean(0)
    assert torch.allclose(theta["map.weight"].detach(), w0 + outer_lr * (mean_w - w0), atol=1e-12)
    assert torch.allclose(theta["map.bias"].detach(), b0 + outer_lr * (mean_b - b0), atol=1e-12)
    assert not torch.allclose(mean_w, w0)  # the tasks did move the weights


def _tiny_meta(algorithm: str, inner_params=("user", "map")):
    """Meta's model and objective on a hand-made 6-user, 7-item domain, in float64, without the pipeline."""
    from tlexp.data.scenario import DomainData
    from tlexp.models.losses import BPRLoss
    from tlexp.models.mapping import Mapping
    from tlexp.models.two_tower import TwoTower
    from tlexp.strategies.meta import MetaObjective, MetaRecommender, MetaSettings

    settings = MetaSettings(algorithm=algorithm, inner_steps=2, inner_lr=0.3, inner_params=tuple(inner_params),
                            train_shots=(2,), query_size=2, learn_inner_lr=False, anchor_weight=0.0, meta_items=True)
    items = pd.DataFrame({"item": [f"i{i}" for i in range(7)], "text": "", "category": ""})
    frame = pd.DataFrame({"user": [0] * 4 + [1] * 4, "item": [0, 1, 2, 3, 4, 5, 6, 0], "timestamp": range(8)})
    data = DomainData("d", np.array([f"u{u}" for u in range(6)]), items, frame, frame[:0], frame[:0])
    torch.manual_seed(0)
    backbone = TwoTower(data, dim=3)
    mapping = Mapping(3, 3)
    with torch.no_grad():
        mapping.net.weight.add_(0.3 * torch.randn(3, 3))
    src_user = torch.randn(6, 3, dtype=torch.float64)
    model = MetaRecommender(backbone, src_user, torch.ones(6, dtype=torch.bool), torch.zeros(6, dtype=torch.bool),
                            mapping, settings).double()
    task = {"user": torch.tensor([0, 1]), "seq": torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0]]),
            "len": torch.tensor([4, 4])}
    return model, MetaObjective(BPRLoss(), settings), task


def test_vectorised_maml_objective_equals_a_per_task_autograd_loop():
    module, objective, task = _tiny_meta("maml")
    loss, stats = objective.meta_objective(module, task)
    params = [module.backbone.item_emb.weight, *module.mapping.parameters()]
    got = torch.autograd.grad(loss, params)
    # reference: a Python loop over tasks, second order through torch.autograd.grad(create_graph=True)
    items = module.backbone.item_repr()
    total = 0.0
    for t in range(2):
        x = module.src_user[task["user"][t]]
        w, b = module.mapping.net.weight, module.mapping.net.bias
        delta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        fw, fb = w, b
        for _ in range(2):
            lt = support_loss(x @ fw.T + fb + delta, items, task["seq"][t, :2], DOT)
            gw, gb, gd = torch.autograd.grad(lt, (fw, fb, delta), create_graph=True)
            fw, fb, delta = fw - 0.3 * gw, fb - 0.3 * gb, delta - 0.3 * gd
        total = total + support_loss(x @ fw.T + fb + delta, items, task["seq"][t, 2:4], DOT)
    expected = torch.autograd.grad(total / 2, params)
    for a, b in zip(got, expected, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    assert stats["train/meta_query_loss"] == pytest.approx(float(total / 2))


def test_meta_config_errors_are_one_clear_line():
    from tlexp.core.errors import ConfigError

    with pytest.raises(ConfigError, match="inner_params"):
        _tiny_meta("reptile", inner_params=("user",))
    with pytest.raises(ConfigError, match="algorithm 'mamal'"):
        _tiny_meta("mamal")
