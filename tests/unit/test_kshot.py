"""The k-shot protocol: support = first k interactions in time order, never a test positive."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from tlexp.data.scenario import DomainData
from tlexp.evaluation.kshot import adapt_user_vectors, evaluate_kshot, kshot_sets, support_loss

N_ITEMS = 12


def _domain() -> DomainData:
    """Users 0-1 warm (train rows); users 2-4 cold, with 7, 4 and 3 interactions in shuffled row order."""
    items = pd.DataFrame({"item": [f"i{i}" for i in range(N_ITEMS)], "text": "", "category": ""})
    train = pd.DataFrame({"user": [0, 0, 1, 1], "item": [0, 1, 2, 3], "timestamp": [1, 2, 1, 2]})
    cold = pd.DataFrame({
        "user": [2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4],
        "item": [5, 9, 1, 7, 3, 11, 0, 4, 8, 2, 6, 1, 2, 3],
        "timestamp": [70, 10, 30, 20, 50, 40, 60, 4, 1, 3, 2, 1, 2, 3],
    })
    test = pd.concat([pd.DataFrame({"user": [0, 1], "item": [4, 5], "timestamp": [3, 3]}), cold])
    return DomainData("t", np.array([f"u{u}" for u in range(5)]), items, train, train[:0],
                      test.reset_index(drop=True), cold_users=np.array([2, 3, 4]))


def test_support_is_the_first_k_in_time_order_and_never_a_test_positive():
    data = _domain()
    sets = {s.k: s for s in kshot_sets(data, [1, 3])}
    for k, s in sets.items():
        # cohort: cold users with more than max(shots)=3 interactions, the same for every k
        assert s.eval_set.users.tolist() == [2, 3]
        assert s.eval_set.name == f"test_cold_k{k}"
        for row, user in enumerate(s.eval_set.users):
            hist = data.test[data.test.user == user].sort_values("timestamp")["item"].tolist()
            assert s.support[row].tolist() == hist[:k]
            a, b = s.eval_set.truth.indptr[row], s.eval_set.truth.indptr[row + 1]
            truth = set(s.eval_set.truth.indices[a:b].tolist())
            a, b = s.eval_set.mask.indptr[row], s.eval_set.mask.indptr[row + 1]
            masked = set(s.eval_set.mask.indices[a:b].tolist())
            assert truth == set(hist[k:]) and masked == set(hist[:k])
            assert not truth & set(s.support[row].tolist())
    assert sets[3].support[0].tolist() == [9, 7, 1]  # user 2 by timestamp 10, 20, 30


def test_an_adapter_that_ranks_the_support_first_gets_no_credit_for_it():
    data = _domain()
    seen = []

    def support_first(users: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        seen.append((users.clone(), support.clone()))
        scores = torch.zeros(users.shape[0], N_ITEMS)
        scores.scatter_(1, support, 100.0)
        return scores

    def truth_first(users: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(users.shape[0], N_ITEMS)
        for r, u in enumerate(users.tolist()):
            hist = data.test[data.test.user == u].sort_values("timestamp")["item"].tolist()
            scores[r, torch.tensor(hist[support.shape[1]:])] = 50.0
        return scores

    leak = evaluate_kshot(data, [1, 3], support_first, ks=[3])
    # support items are masked: the top-3 holds no support item, and only ties (by index) can hit
    ties_only = evaluate_kshot(data, [1, 3], lambda u, s: torch.zeros(u.shape[0], N_ITEMS), ks=[3])
    assert leak["test_cold_k3/hit_at_3"] == ties_only["test_cold_k3/hit_at_3"]
    assert leak["test_cold_k1/ndcg_at_3"] == ties_only["test_cold_k1/ndcg_at_3"]
    assert [u.tolist() for u, _ in seen] == [[2, 3], [2, 3]]
    best = evaluate_kshot(data, [1, 3], truth_first, ks=[3])
    assert best["test_cold_k1/ndcg_at_3"] == pytest.approx(1.0) and best["test_cold_k3/hit_at_3"] == 1.0
    assert best["test_cold_k3/recall_at_3"] == pytest.approx(np.mean([3 / 4, 1.0]))


def test_gradient_steps_move_a_user_towards_their_support():
    torch.manual_seed(0)
    items = torch.randn(N_ITEMS, 4)
    z0 = torch.zeros(2, 4)
    support = torch.tensor([[1, 2], [5, 7]])
    dot = lambda u, v: u @ v.T  # noqa: E731
    z = adapt_user_vectors(z0, items, support, steps=5, lr=0.5, score=dot)
    for r in range(2):
        assert support_loss(z[r], items, support[r], dot) < support_loss(z0[r], items, support[r], dot)
    assert torch.equal(adapt_user_vectors(z0, items, support, 0, 0.5, dot), z0)
