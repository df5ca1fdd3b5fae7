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
    test_cold, valid_cold = t.cold_users, t.valid_cold_users
    assert test_cold.size > 0 and valid_cold.size > 0
    assert not np.intersect1d(test_cold, valid_cold).size  # two disjoint sets of cold users
    cold = np.union1d(test_cold, valid_cold)
    assert not t.train["user"].isin(cold).any()
    # test cold users: their whole history is their test set (several items each), nothing in valid
    assert not t.valid["user"].isin(test_cold).any()
    assert t.test[t.test["user"].isin(test_cold)].groupby("user").size().min() >= 3
    # validation cold users: the same, in the validation set, and nothing of theirs in test
    assert not t.test["user"].isin(valid_cold).any()
    assert t.valid[t.valid["user"].isin(valid_cold)].groupby("user").size().min() >= 3
    overlap = scenario.overlap_users()
    assert np.isin(cold, overlap).all()
    assert abs(cold.size / overlap.size - SPLIT["cold_user_share"]) < 0.01
    assert abs(valid_cold.size - 0.5 * cold.size) <= 0.5  # split.cold_valid_share (default 0.5)


def test_validation_segments_mirror_test_segments(scenario):
    from tlexp.evaluation.evaluator import make_eval_set

    t = scenario.target
    val, test = make_eval_set(t, "valid"), make_eval_set(t, "test")
    assert set(val.segments) == {"", "_cold", "_warm"} and {"", "_cold", "_warm"} <= set(test.segments)
    assert set(val.users[val.segments["_cold"]]) == set(t.valid_cold_users)
    assert set(test.users[test.segments["_cold"]]) == set(t.cold_users)
    # a validation cold user has nothing masked (no training rows) and all their history as truth
    row = int(np.flatnonzero(val.segments["_cold"])[0])
    user = val.users[row]
    assert val.mask.indptr[row + 1] == val.mask.indptr[row]
    assert val.truth.indptr[row + 1] - val.truth.indptr[row] == (t.valid["user"] == user).sum()


def test_data_without_a_time_order_is_split_in_a_seeded_random_order():
    """Rows in file order (e.g. sorted by product id) must not decide what is held out."""
    from tlexp.data.domain import Domain
    from tlexp.data.scenario import split_domain

    items = pd.DataFrame({"item": [f"i{i:03d}" for i in range(40)], "text": "", "category": ""})
    inter = pd.DataFrame({"user": np.repeat([f"u{u:02d}" for u in range(30)], 20),
                          "item": [f"i{i:03d}" for u in range(30) for i in range(u, u + 20)],
                          "timestamp": np.tile(np.arange(20), 30)})  # position = item id order
    ordered = split_domain(Domain("d", inter, items), SPLIT)
    unordered = split_domain(Domain("d", inter, items, ordered=False), SPLIT)
    # in file order the held-out item is always the user's highest id; in a random order it is not
    assert (ordered.test["item"].to_numpy() == ordered.test["user"].to_numpy() + 19).all()
    assert (unordered.test["item"].to_numpy() != unordered.test["user"].to_numpy() + 19).mean() > 0.8
    assert not unordered.ordered and ordered.ordered
    again = split_domain(Domain("d", inter, items, ordered=False), SPLIT)
    pd.testing.assert_frame_equal(unordered.test, again.test)  # seeded: the same split every time
    other = split_domain(Domain("d", inter, items, ordered=False), {**SPLIT, "seed": SPLIT["seed"] + 1})
    assert not other.test.equals(unordered.test)


def test_split_order_random_is_recboles_random_ordering_and_time_needs_a_time_order():
    from tlexp.data.domain import Domain
    from tlexp.data.scenario import split_domain

    items = pd.DataFrame({"item": [f"i{i:03d}" for i in range(40)], "text": "", "category": ""})
    inter = pd.DataFrame({"user": np.repeat([f"u{u:02d}" for u in range(30)], 20),
                          "item": [f"i{i:03d}" for u in range(30) for i in range(u, u + 20)],
                          "timestamp": np.tile(np.arange(20), 30)})
    ratio = {**SPLIT, "protocol": "ratio", "ratios": [0.8, 0.1, 0.1]}
    timed = split_domain(Domain("d", inter, items), {**ratio, "order": "time"})
    auto = split_domain(Domain("d", inter, items), ratio)
    pd.testing.assert_frame_equal(timed.test, auto.test)  # auto = time where the data has one
    rand = split_domain(Domain("d", inter, items), {**ratio, "order": "random"})
    # time order: the last 10 % are each user's latest; random order: mostly not
    latest = timed.test.groupby("user")["item"].max()
    assert (timed.test["item"].to_numpy() >= timed.test["user"].map(latest).to_numpy() - 1).all()
    assert not rand.test.equals(timed.test) and not rand.ordered and timed.ordered
    assert len(rand.train) == len(timed.train) and len(rand.test) == len(timed.test)  # same 8:1:1 per user
    with pytest.raises(DataError, match="has no time order"):
        split_domain(Domain("d", inter, items, ordered=False), {**ratio, "order": "time"})
    with pytest.raises(DataError, match="split.order 'sideways'"):
        split_domain(Domain("d", inter, items), {**ratio, "order": "sideways"})


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
