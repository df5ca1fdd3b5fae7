"""Vectorised metrics against an independent per-user reference (and torchmetrics)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tlexp.data.scenario import DomainData
from tlexp.evaluation.evaluator import accumulate, evaluate, make_eval_set
from tlexp.evaluation.metrics import topk_items

KS = [1, 3, 5, 10]


def reference(scores: np.ndarray, truth: dict[int, set[int]], mask: dict[int, set[int]], k: int) -> dict:
    """Plain loop: sort each user's items by (-score, index), skip masked, compare with truth."""
    out = {m: [] for m in ("recall", "ndcg", "hit", "mrr", "precision", "f1")}
    for u, gt in truth.items():
        order = [int(i) for i in np.lexsort((np.arange(scores.shape[1]), -scores[u])) if i not in mask.get(u, ())]
        top = order[:k]
        hits = [1.0 if i in gt else 0.0 for i in top]
        n_hit = sum(hits)
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(gt), k)))
        first = next((r for r, h in enumerate(hits) if h), None)
        p, r = n_hit / k, n_hit / len(gt)
        out["recall"].append(r)
        out["precision"].append(p)
        out["hit"].append(float(n_hit > 0))
        out["ndcg"].append(dcg / idcg)
        out["mrr"].append(0.0 if first is None else 1.0 / (first + 1))
        out["f1"].append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return {m: float(np.mean(v)) for m, v in out.items()}


def random_domain(rng: np.random.Generator, n_users: int = 60, n_items: int = 40) -> DomainData:
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=rng.integers(3, 12), replace=False)
        for t, i in enumerate(items):
            rows.append((u, int(i), t))
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    # Several test items per user: the last 1-3 interactions.
    rank = frame.groupby("user").cumcount(ascending=False)
    n_test = frame["user"].map(lambda u: 1 + u % 3)
    test = frame[rank < n_test]
    valid = frame[(rank == n_test)]
    train = frame[rank > n_test]
    return DomainData(name="t", users=np.array([f"u{u}" for u in range(n_users)], dtype=object),
                      item_info=pd.DataFrame({"item": [f"i{i}" for i in range(n_items)], "text": "", "category": ""}),
                      train=train.reset_index(drop=True), valid=valid.reset_index(drop=True),
                      test=test.reset_index(drop=True), cold_users=np.array([0, 5, 7], dtype=np.int64))


@pytest.mark.parametrize("ties", [False, True])
def test_matches_reference_loop(ties):
    rng = np.random.default_rng(0)
    data = random_domain(rng)
    scores = rng.standard_normal((data.n_users, data.n_items)).astype(np.float32)
    if ties:  # few distinct values: ties everywhere, also at the K-th place
        scores = np.round(scores * 2) / 2
    s = torch.from_numpy(scores)
    es = make_eval_set(data, "test")
    got = evaluate(es, lambda users: s[users].clone(), KS, batch_size=7)
    hist = pd.concat([data.train, data.valid])
    for seg, users in (("", es.users), ("_warm", es.users[~np.isin(es.users, data.cold_users)]),
                       ("_cold", es.users[np.isin(es.users, data.cold_users)])):
        truth = {int(u): set(data.test.loc[data.test.user == u, "item"]) for u in users}
        mask = {int(u): set(hist.loc[hist.user == u, "item"]) for u in users}
        for k in KS:
            ref = reference(scores, truth, mask, k)
            for m, v in ref.items():
                assert got[f"test{seg}/{m}_at_{k}"] == pytest.approx(v, abs=1e-6), (seg, m, k)


def test_topk_tie_rule_is_lower_index_first():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0, 0.0]])
    assert topk_items(scores, 3).tolist() == [[1, 2, 4]]
    assert topk_items(scores, 5).tolist() == [[1, 2, 4, 5, 3]]


def test_agrees_with_torchmetrics_without_ties():
    from torchmetrics.functional.retrieval import retrieval_normalized_dcg, retrieval_recall

    rng = np.random.default_rng(1)
    data = random_domain(rng)
    data.train = data.train.iloc[:0]  # no masking: torchmetrics ranks all items
    data.valid = data.valid.iloc[:0]
    s = torch.from_numpy(rng.standard_normal((data.n_users, data.n_items)).astype(np.float32))
    es = make_eval_set(data, "test")
    got = evaluate(es, lambda users: s[users].clone(), [10])
    ndcg, rec = [], []
    for u in es.users:
        target = torch.zeros(data.n_items, dtype=torch.bool)
        target[torch.tensor(data.test.loc[data.test.user == u, "item"].to_numpy())] = True
        ndcg.append(retrieval_normalized_dcg(s[u], target, top_k=10))
        rec.append(retrieval_recall(s[u], target, top_k=10))
    assert got["test/ndcg_at_10"] == pytest.approx(float(torch.stack(ndcg).mean()), abs=1e-5)
    assert got["test/recall_at_10"] == pytest.approx(float(torch.stack(rec).mean()), abs=1e-5)


def test_training_items_are_never_recommended():
    data = random_domain(np.random.default_rng(2))
    es = make_eval_set(data, "test")
    # Scores that love the user's own training items: masking must push them out.
    hist = pd.concat([data.train, data.valid])
    s = torch.zeros(data.n_users, data.n_items)
    s[torch.tensor(hist.user.to_numpy()), torch.tensor(hist.item.to_numpy())] = 10.0
    from tlexp.evaluation.evaluator import top_items

    top = top_items(es, lambda users: s[users].clone(), es.users, 5)
    for u, row in zip(es.users, top, strict=True):
        assert not set(row.tolist()) & set(hist.loc[hist.user == u, "item"])


def test_mask_history_false_ranks_the_history_too():
    """eval.mask_history=false (RecBole's sequential protocol): nothing masked, metrics as the reference
    loop without a mask; the default masks train (valid) and train + valid (test)."""
    rng = np.random.default_rng(4)
    data = random_domain(rng)
    s = torch.from_numpy(rng.standard_normal((data.n_users, data.n_items)).astype(np.float32))
    for split, hist in (("valid", data.train), ("test", pd.concat([data.train, data.valid]))):
        masked, open_ = make_eval_set(data, split), make_eval_set(data, split, mask_history=False)
        assert open_.mask.indices.size == 0 and masked.mask.indices.size == len(hist)
        assert np.array_equal(open_.users, masked.users) and np.array_equal(open_.truth.indices, masked.truth.indices)
        got = evaluate(open_, lambda users: s[users].clone(), [10])
        frame = getattr(data, split)
        truth = {int(u): set(frame.loc[frame.user == u, "item"]) for u in open_.users}
        ref = reference(s.numpy(), truth, {}, 10)
        prefix = "val" if split == "valid" else "test"
        assert got[f"{prefix}/ndcg_at_10"] == pytest.approx(ref["ndcg"], abs=1e-6)


def test_sharded_sums_equal_single_process():
    """What data-parallel ranks add up equals the single-process result, coverage included."""
    rng = np.random.default_rng(3)
    data = random_domain(rng, n_users=90)
    s = torch.from_numpy(rng.standard_normal((data.n_users, data.n_items)).astype(np.float32))
    es = make_eval_set(data, "test")
    fn = lambda users: s[users].clone()
    single = accumulate(es, fn, KS, batch_size=8)
    parts = [accumulate(es, fn, KS, batch_size=8, rank=r, world_size=3) for r in range(3)]
    total = parts[0]
    total.load_tensor(sum(p.as_tensor() for p in parts))
    a, b = single.result("test"), total.result("test")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert 0 < a["test/coverage_at_10"] <= 1
