"""Augmentation of the target's training data: only training pairs, a fresh reproducible subset per
epoch, and clear errors where an augmentation does not apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tlexp.core.errors import ConfigError
from tlexp.data.augment import AugmentSettings, EpochSubsetSampler


def test_the_subset_is_fresh_per_epoch_reproducible_and_the_right_size():
    s = EpochSubsetSampler(1000, keep=0.8, seed=3)
    first = list(s)
    assert len(first) == len(s) == 800 and len(set(first)) == 800 and set(first) <= set(range(1000))
    s.set_epoch(1)
    second = list(s)
    assert set(second) != set(first)
    again = EpochSubsetSampler(1000, keep=0.8, seed=3)
    again.set_epoch(1)
    assert list(again) == second  # a resumed run sees the same epoch


def test_settings_refuse_unknown_kinds_and_bad_shares():
    with pytest.raises(ConfigError, match="augment=cutout is not built"):
        AugmentSettings(name="cutout", p=0.1)
    with pytest.raises(ConfigError, match=r"augment.p=1.5"):
        AugmentSettings(name="interaction_dropout", p=1.5)
    assert not AugmentSettings().active and AugmentSettings(name="interaction_dropout", p=0.2).active


def test_interaction_dropout_trains_on_training_pairs_only(tmp_path: Path):
    from helpers import tiny_cfg

    from tlexp.data.datamodule import RecDataModule, datamodule_for
    from tlexp.pipeline.build import load_scenario

    cfg = tiny_cfg(tmp_path, "augment=interaction_dropout", "augment.p=0.3")
    scenario, _ = load_scenario(cfg)
    target = scenario.target
    aug = AugmentSettings(name="interaction_dropout", p=0.3)
    dm = RecDataModule(target, batch_size=128, augment=aug, seed=0)
    train = set(zip(target.train["user"].tolist(), target.train["item"].tolist(), strict=True))
    held = set(zip(target.valid["user"].tolist(), target.valid["item"].tolist(), strict=True)) | set(
        zip(target.test["user"].tolist(), target.test["item"].tolist(), strict=True))
    held -= train  # a pair may repeat in history; what matters is that nothing only held out is trained on
    seen = []
    for batch in dm.train_dataloader():
        seen += list(zip(batch["user"].tolist(), batch["item"].tolist(), strict=True))
    assert len(seen) == round(len(target.train) * 0.7)
    assert set(seen) <= train and not set(seen) & held
    # cold-start users' target histories are held out entirely: none of them is trained on
    cold = set(target.cold_users.tolist()) | set(target.valid_cold_users.tolist())
    assert not {u for u, _ in seen} & cold
    # sequence backbones: pair dropout does not apply to them, and that is said
    seq = torch.nn.Module()
    seq.needs_history = True  # what datamodule_for asks of a backbone that reads item sequences
    with pytest.raises(ConfigError, match="use augment=crop, mask, reorder, cl4srec or text_dropout"):
        datamodule_for(target, seq, augment=aug)
    assert torch.equal(dm.item_counts, torch.bincount(torch.tensor(target.train["item"].to_numpy()),
                                                      minlength=target.n_items))


def test_history_resample_draws_each_users_own_training_pairs(tmp_path: Path):
    """User-history resampling: every drawn pair is one of that user's training pairs (never a held-out
    one, never a cold-start user's), each user contributes min(n_u, cap) pairs an epoch, p=1 bootstraps
    (repeats occur), p=0 without a cap is a plain permutation, and an epoch is reproducible."""
    from collections import Counter

    from helpers import tiny_cfg

    from tlexp.data.augment import EpochHistorySampler
    from tlexp.data.datamodule import RecDataModule
    from tlexp.pipeline.build import load_scenario

    scenario, _ = load_scenario(tiny_cfg(tmp_path))
    target = scenario.target
    train = set(zip(target.train["user"].tolist(), target.train["item"].tolist(), strict=True))
    held = (set(zip(target.valid["user"].tolist(), target.valid["item"].tolist(), strict=True))
            | set(zip(target.test["user"].tolist(), target.test["item"].tolist(), strict=True))) - train
    per_user = Counter(target.train["user"].tolist())
    cap = 3
    dm = RecDataModule(target, batch_size=64, augment=AugmentSettings(name="history_resample", p=1.0, cap=cap))
    seen = []
    for batch in dm.train_dataloader():
        seen += list(zip(batch["user"].tolist(), batch["item"].tolist(), strict=True))
    assert set(seen) <= train and not set(seen) & held
    cold = set(target.cold_users.tolist()) | set(target.valid_cold_users.tolist())
    assert not {u for u, _ in seen} & cold
    drawn = Counter(u for u, _ in seen)
    assert drawn == Counter({u: min(n, cap) for u, n in per_user.items()})
    # a bootstrap repeats pairs for some users with several pairs
    assert any(len(set(p for p in seen if p[0] == u)) < min(n, cap) for u, n in per_user.items() if n >= 3)

    users = torch.tensor(target.train["user"].to_numpy())
    plain = EpochHistorySampler(users, p=0.0, cap=None, seed=1)
    assert sorted(plain.indices().tolist()) == list(range(len(users)))
    s = EpochHistorySampler(users, p=0.5, cap=None, seed=1)
    s.set_epoch(2)
    again = EpochHistorySampler(users, p=0.5, cap=None, seed=1)
    again.set_epoch(2)
    assert torch.equal(s.indices(), again.indices())
    assert torch.equal(users[s.indices()].sort().values, users.sort().values)  # each user keeps their count
    s.set_epoch(3)
    assert not torch.equal(s.indices(), again.indices())
    with pytest.raises(ConfigError, match=r"augment.cap=0 must be null or an integer >= 1"):
        AugmentSettings(name="history_resample", p=0.5, cap=0)
