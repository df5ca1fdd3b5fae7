"""Splits and cold-start users: nothing from valid/test leaks into training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tlexp.data.scenario import build_scenario, leave_one_out, ratio_split
from tlexp.data.synthetic import SyntheticDomainLoader
from tlexp.core.errors import DataError

WORLD = {"n_users": 800, "dim": 16, "seed": 3}
SPLIT = {"protocol": "loo", "min_user_interactions": 3, "cold_user_share": 0.2, "seed": 1}


def loaders():
    return (SyntheticDomainLoader("news", world=WORLD, n_items=250),
            SyntheticDomainLoader("social", world=WORLD, n_items=250))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return build_scenario(*loaders(), SPLIT, tmp_path_factory.mktemp("cache"))


def pairs(df: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(df["user"].tolist(), df["item"].tolist(), strict=True))


def test_no_valid_or_test_interaction_in_training(scenario):
    t = scenario.target
    assert not pairs(t.valid) & pairs(t.train)
    assert not pairs(t.test) & pairs(t.train)
    assert not pairs(t.test) & pairs(t.valid)


def test_leave_one_out_takes_the_latest_interactions():
    frame = pd.DataFrame({"user": [0, 0, 0, 0, 1, 1], "item": [5, 6, 7, 8, 1, 2],
                          "timestamp": [40, 10, 30, 20, 2, 1]})
    parts = leave_one_out(frame, min_user_interactions=3)
    assert parts["test"][["user", "item"]].values.tolist() == [[0, 5]]      # ts 40
    assert parts["valid"][["user", "item"]].values.tolist() == [[0, 7]]     # ts 30
    assert sorted(parts["train"]["item"]) == [1, 2, 6, 8]                    # user 1 too short: all train


def test_warm_test_is_after_training_in_time(scenario):
    t = scenario.target
    warm_test = t.test[~t.test["user"].isin(t.cold_users)]
    last_train = t.train.groupby("user")["timestamp"].max()
    ts = warm_test.set_index("user")["timestamp"]
    common = ts.index.intersection(last_train.index)
    assert (ts.loc[common] >= last_train.loc[common]).all()
    assert warm_test["user"].is_unique  # exactly one test item per warm user


def test_cold_start_users_have_no_target_training_rows(scenario):
    t = scenario.target
    cold = t.cold_users
    assert cold.size > 0
    assert not t.train["user"].isin(cold).any()
    assert not t.valid["user"].isin(cold).any()
    # ... and their whole history is their test set: several items each
    assert t.test[t.test["user"].isin(cold)].groupby("user").size().min() >= 3
    overlap = scenario.overlap_users()
    assert np.isin(cold, overlap).all()
    assert abs(cold.size / overlap.size - SPLIT["cold_user_share"]) < 0.01


def test_scenario_cache_hit_gives_identical_frames(scenario, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache2")
    first = build_scenario(*loaders(), SPLIT, root)
    second = build_scenario(*loaders(), SPLIT, root)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert first.key == second.key == scenario.key
    for part in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(first.target, part), getattr(second.target, part))
    np.testing.assert_array_equal(first.target.cold_users, second.target.cold_users)
    other = build_scenario(*loaders(), {**SPLIT, "cold_user_share": 0.3}, root)
    assert other.key != first.key and not other.cache_hit


def test_failed_build_leaves_no_cache_entry(tmp_path):
    class Broken(SyntheticDomainLoader):
        def load(self):
            raise DataError("broken.csv: column 'user' missing; rename your id column to 'user'")

    with pytest.raises(DataError):
        build_scenario(SyntheticDomainLoader("news", world=WORLD, n_items=50),
                       Broken("social", world=WORLD, n_items=50), SPLIT, tmp_path)
    assert not [p for p in (tmp_path / "scenarios").iterdir()]


def test_same_source_and_target_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="pick two different domains"):
        build_scenario(SyntheticDomainLoader("news", world=WORLD), SyntheticDomainLoader("news", world=WORLD),
                       SPLIT, tmp_path)


def test_ratio_split_orders_by_time():
    frame = pd.DataFrame({"user": [0] * 10, "item": list(range(10)), "timestamp": list(range(10, 0, -1))})
    parts = ratio_split(frame, (0.8, 0.1, 0.1))
    assert len(parts["train"]) == 8 and len(parts["valid"]) == 1 and len(parts["test"]) == 1
    assert parts["test"]["item"].tolist() == [0]  # latest timestamp
