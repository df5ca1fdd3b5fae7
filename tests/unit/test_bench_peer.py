"""scripts/bench_peer.py without RecBole: the split writers, and tlexp reading back exactly what they wrote.

Uses MovieLens-100K from $TLEXP_DATA_DIR (or ../shared/data); skips when it is absent.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pandas as pd
import pytest

from tlexp.core.config import project_root

DATA = Path(os.environ.get("TLEXP_DATA_DIR") or project_root().parent / "shared" / "data") / "movielens-100k"
pytestmark = pytest.mark.skipif(not (DATA / "ml-100k.inter").is_file(),
                                reason=f"ml-100k not found at {DATA} (set TLEXP_DATA_DIR to the shared data folder)")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_peer", project_root() / "scripts" / "bench_peer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def frame(bench):
    return bench.read_ml100k(DATA)


def pairs(df: pd.DataFrame) -> set:
    return set(zip(df["user"], df["item"], strict=True))


def test_recbole_split_counts_are_recboles_arithmetic(bench):
    assert bench.recbole_split_counts(20) == [16, 2, 2]
    assert bench.recbole_split_counts(29) == [25, 2, 2]   # int(0.1 * 29) = 2 each, the rest to train
    assert bench.recbole_split_counts(5) == [3, 1, 1]     # a part below one row gets one, from train
    assert all(sum(bench.recbole_split_counts(n)) == n for n in range(2, 500))


def test_ratio_split_is_811_per_user_disjoint_seeded_and_covers_every_user(bench, frame):
    parts = bench.ratio_split(frame, seed=2024)
    assert sum(len(p) for p in parts.values()) == len(frame)
    train, valid, test = pairs(parts["train"]), pairs(parts["valid"]), pairs(parts["test"])
    assert not (train & valid or train & test or valid & test)
    assert train | valid | test == pairs(frame)
    assert set(parts["train"]["user"]) == set(frame["user"])  # every user in train (and in valid, test)
    assert set(parts["valid"]["user"]) == set(parts["test"]["user"]) == set(frame["user"])
    sizes = frame.groupby("user").size()
    for name, share in (("valid", 0.1), ("test", 0.1)):
        got = parts[name].groupby("user").size().reindex(sizes.index)
        assert (got == (sizes * share).astype(int)).all()  # floor(0.1 n): RecBole's RS
    assert bench.ratio_split(frame, seed=2024)["test"].equals(parts["test"])  # seeded
    assert pairs(bench.ratio_split(frame, seed=7)["test"]) != test
    # a random order, not time: the test rows sit anywhere in their user's history (mean rank ~0.5, not ~0.95)
    rank = frame.assign(t=frame["timestamp"].astype(float)).groupby("user")["t"].rank(pct=True)
    in_test = pd.Series([p in test for p in zip(frame["user"], frame["item"], strict=True)])
    assert 0.4 < rank[in_test.to_numpy()].mean() < 0.6


def test_loo_split_holds_out_the_last_two_by_time(bench, frame):
    parts = bench.loo_split(frame)
    n_users = frame["user"].nunique()
    assert len(parts["test"]) == len(parts["valid"]) == n_users
    assert len(parts["train"]) == len(frame) - 2 * n_users
    t = lambda df: df.assign(t=df["timestamp"].astype(float)).groupby("user")["t"]  # noqa: E731
    assert (t(parts["test"]).max() >= t(parts["valid"]).max()).all()
    assert (t(parts["valid"]).max() >= t(parts["train"]).max().reindex(t(parts["valid"]).max().index)).all()
    assert not (pairs(parts["train"]) & pairs(parts["test"]) or pairs(parts["valid"]) & pairs(parts["test"]))


def test_sequence_rows_are_recboles_augmented_leave_one_out(bench, frame):
    loo = bench.loo_split(frame)
    seqs = bench.sequences(loo)
    rows = bench.sequence_rows(loo, max_len=50)
    assert len(rows["train"]) == len(frame) - 3 * len(seqs)  # every train item but each user's first
    assert len(rows["valid"]) == len(rows["test"]) == len(seqs)
    by_user = {u: (h, i) for u, h, i in rows["test"]}
    for user, seq in list(seqs.items())[:50]:
        history, item = by_user[user]
        assert item == seq[-1] and history.split() == seq[:-1][-50:]
    assert max(len(h.split()) for _, h, _ in rows["train"]) == 50


def test_tlexp_reads_exactly_the_written_files(bench, frame, tmp_path):
    written = bench.write_data(DATA, tmp_path, seed=2024)
    report = bench.check_identical(tmp_path, written)   # raises on any difference
    assert report["ml-100k-rs811"]["users"] == 943 and report["ml-100k-rs811"]["items"] == 1682
    assert report["ml-100k-loo"]["order"] == "identical"
    header = (tmp_path / "ml-100k-loo-seq" / "ml-100k-loo-seq.train.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id_list:token_seq\titem_id:token"
