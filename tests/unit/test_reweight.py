"""Alignment by resampling (tlexp/data/reweight.py): the domain classifier recovers a known density
ratio, weights move the source towards the target, and the sampler draws in proportion to them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from tlexp.core.errors import ConfigError
from tlexp.data.reweight import (EpochWeightedSampler, ReweightSettings, auc, fit_log_ratio, importance_weights,
                                 normalise)
from tlexp.data.scenario import DomainData


def test_the_classifier_recovers_a_known_gaussian_density_ratio():
    rng = np.random.default_rng(0)
    source = rng.normal([0.0, 0.0], [1.0, 1.0], size=(20000, 2))
    target = rng.normal([0.8, -0.5], [0.7, 1.2], size=(20000, 2))
    log_ratio, _ = fit_log_ratio(source, target, degree=2, l2=0.0)
    # where the source has mass (its central 95 % per axis), compare with the analytic log ratio
    x = rng.normal(0.0, 1.0, size=(5000, 2))
    x = x[(np.abs(x) < 1.96).all(1)]
    true = (norm.logpdf(x[:, 0], 0.8, 0.7) + norm.logpdf(x[:, 1], -0.5, 1.2)
            - norm.logpdf(x[:, 0], 0, 1) - norm.logpdf(x[:, 1], 0, 1))
    est = log_ratio(x)
    assert np.corrcoef(est, true)[0, 1] > 0.995
    assert np.median(np.abs(est - true)) < 0.08
    # a linear logit cannot represent the variance change: it must fit worse
    linear, _ = fit_log_ratio(source, target, degree=1, l2=0.0)
    assert np.median(np.abs(linear(x) - true)) > 2 * np.median(np.abs(est - true))


def _domain(name: str, users: np.ndarray, items: np.ndarray, n_items: int, user_keys: np.ndarray) -> DomainData:
    frame = pd.DataFrame({"user": users, "item": items, "timestamp": np.arange(len(users))})
    info = pd.DataFrame({"item": [f"{name}{i}" for i in range(n_items)], "text": "", "category": ""})
    empty = frame.iloc[:0]
    return DomainData(name, user_keys, info, frame, empty, empty)


def test_weights_move_the_source_towards_the_target_and_recover_the_shift():
    """Source pairs pick items uniformly; target pairs prefer the catalogue's head. The weights must
    favour source pairs of head items, bring the mean popularity feature to the target's, and make the
    held-out pairs harder to tell apart (auc_after nearer 0.5 than auc)."""
    rng = np.random.default_rng(1)
    n_items, n_users = 200, 400
    keys = np.array([f"u{i}" for i in range(n_users)])
    # item popularity is fixed by a head of the catalogue that both domains share in rank
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.3
    src_items = rng.choice(n_items, size=20000, p=pop / pop.sum())
    tgt_p = pop ** 4 / (pop ** 4).sum()
    tgt_items = rng.choice(n_items, size=8000, p=tgt_p)
    source = _domain("s", rng.integers(0, n_users, 20000), src_items, n_items, keys)
    target = _domain("t", rng.integers(0, n_users, 8000), tgt_items, n_items, keys)
    found = importance_weights(source, target, ReweightSettings(features=("item_popularity",), clip=50.0), seed=0)
    w, st = found.weights, found.stats
    assert w.shape == (20000,) and abs(w.mean() - 1) < 1e-9 and w.max() <= 50.0 + 1e-9
    head = src_items < 10
    assert w[head].mean() > 2 * w[~head].mean()
    assert st["auc"] > 0.6 and abs(st["auc_after"] - 0.5) < 0.5 * abs(st["auc"] - 0.5)
    assert abs(st["smd_item_popularity_after"]) < 0.2 * abs(st["smd_item_popularity_before"])
    assert sum(found.histogram["pairs"]) == 20000
    # no shift: weights stay near 1
    same = _domain("t", rng.integers(0, n_users, 8000), rng.choice(n_items, size=8000, p=pop / pop.sum()),
                   n_items, keys)
    flat = importance_weights(source, same, ReweightSettings(features=("item_popularity", "user_activity")))
    assert flat.stats["ess_share"] > 0.97 and abs(flat.stats["auc"] - 0.5) < 0.05


def test_the_sampler_draws_in_proportion_to_the_weights_per_epoch():
    w = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    s = EpochWeightedSampler(w, seed=5, n=100_000)
    freq = np.bincount(s.indices().numpy(), minlength=5) / 100_000
    assert np.allclose(freq, w / w.sum(), atol=0.006) and freq[4] == 0
    first = s.indices()
    s.set_epoch(1)
    assert not np.array_equal(first.numpy(), s.indices().numpy())
    again = EpochWeightedSampler(w, seed=5, n=100_000)
    again.set_epoch(1)
    assert np.array_equal(again.indices().numpy(), s.indices().numpy())


def test_helpers_and_settings():
    assert auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5
    w, capped = normalise(np.array([1.0, 1.0, 1.0, 100.0]), clip=2.0)   # cap t = 2 · mean(1, 1, 1, t) -> t = 3
    assert abs(w.mean() - 1) < 1e-12 and w[3] == pytest.approx(2.0) and w[3] / w[0] == pytest.approx(3.0)
    assert capped == 0.25
    w, capped = normalise(np.array([1.0, 2.0, 3.0]), clip=10.0)
    assert np.allclose(w, [0.5, 1.0, 1.5]) and capped == 0.0
    with pytest.raises(ConfigError, match="reweight_features"):
        ReweightSettings(features=("age",))
    with pytest.raises(ConfigError, match="reweight_clip"):
        ReweightSettings(clip=1.0)
