"""From two Domains to a Scenario: index, split, pick cold-start users, cache as Parquet.

Split protocol (RecBole's leave-one-out, by time): per user, the last interaction is the test
item, the second last the validation item, the rest train. Users with fewer than
``min_user_interactions`` stay wholly in train. On the target, a share of the *overlap* users
(present in the source too) become **cold-start users**: their whole target history is taken
out of train/valid, as in EMCDR/PTUPCDR. A share of them (``cold_valid_share``, default half) are
*validation* cold users — their whole history is their validation set, so that every choice that
matters for cold users (early stopping, a strategy's knobs, a sweep) can be made without looking at
test — and the rest are the test cold users, whose history is their test set. The source domain is
split the same way (without cold-start users) so that pretraining can early-stop on its own valid set.

Data without a time order (a loader's ``Domain.ordered`` is False: ratings files whose row order
is, e.g., by product id) get a seeded random order per user before splitting, so that "last" means
"held out at random", not "highest id". ``SPLIT_VERSION`` is part of every cached scenario's key:
a change to this code that changes what a split contains must bump it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tlexp.core.cache import cached_dir, stable_hash
from tlexp.data.domain import Domain, DomainLoader
from tlexp.core.errors import DataError

SPLITS = ("train", "valid", "test")
SPLIT_VERSION = 2  # 2: validation cold users; a random per-user order for data without time order


@dataclass
class DomainData:
    """One domain, indexed (users and items are 0..n-1) and split.

    ``users``/``items`` map an index to the original key; ``item_info`` holds text and category
    in index order. Split frames have int columns ``user``, ``item`` and ``timestamp``.
    """

    name: str
    users: np.ndarray
    item_info: pd.DataFrame
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    cold_users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))        # history = test
    valid_cold_users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # history = valid
    ordered: bool = True  # False: split in a seeded random order (no time order in the data, or split.order=random)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.item_info)

    @property
    def items(self) -> np.ndarray:
        return self.item_info["item"].to_numpy()

    def user_index(self, keys: np.ndarray) -> np.ndarray:
        """Indices of ``keys`` in this domain's users (-1 where absent)."""
        return pd.Index(self.users).get_indexer(keys)


@dataclass
class Scenario:
    """Source domain + target domain with the target's splits and cold-start users."""

    source: DomainData
    target: DomainData
    key: str = ""
    cache_hit: bool = False

    @property
    def name(self) -> str:
        return self.target.name if self.source.name == "none" else f"{self.source.name}-to-{self.target.name}"

    def overlap_users(self) -> np.ndarray:
        """Target indices of users who are also in the source domain."""
        return np.flatnonzero(self.source.user_index(self.target.users) >= 0)


def _index_domain(domain: Domain) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Give users and items contiguous indices; order items as in the item table."""
    inter = domain.interactions
    items = domain.items.drop_duplicates("item").reset_index(drop=True)
    unknown = pd.Index(inter["item"].unique()).difference(pd.Index(items["item"]))
    if len(unknown):  # items seen in interactions but absent from the item table: no side info
        items = pd.concat([items, pd.DataFrame({"item": unknown, "text": "", "category": ""})],
                          ignore_index=True)
    users = np.sort(inter["user"].unique())
    frame = pd.DataFrame({
        "user": pd.Index(users).get_indexer(inter["user"]).astype(np.int64),
        "item": pd.Index(items["item"]).get_indexer(inter["item"]).astype(np.int64),
        "timestamp": inter["timestamp"].to_numpy(np.int64),
    })
    if "split" in inter.columns:  # a dataset's own train/valid/test assignment (split=given)
        frame["split"] = inter["split"].astype(str).to_numpy()
    # Repeated (user, item) pairs: keep the latest, as implicit-feedback protocols do.
    frame = frame.sort_values(["user", "timestamp"], kind="stable")
    frame = frame.drop_duplicates(["user", "item"], keep="last").reset_index(drop=True)
    items = items[["item", "text", "category"]].fillna("").astype(str)
    return users, items, frame


def leave_one_out(frame: pd.DataFrame, min_user_interactions: int = 3) -> dict[str, pd.DataFrame]:
    """Per user in time order: last -> test, second last -> valid, the rest -> train."""
    frame = frame.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    from_end = frame.groupby("user").cumcount(ascending=False).to_numpy()
    size = frame.groupby("user")["item"].transform("size").to_numpy()
    eligible = size >= min_user_interactions
    test = eligible & (from_end == 0)
    valid = eligible & (from_end == 1)
    train = ~(test | valid)
    return {"train": frame[train].reset_index(drop=True),
            "valid": frame[valid].reset_index(drop=True),
            "test": frame[test].reset_index(drop=True)}


def ratio_split(frame: pd.DataFrame, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
                min_user_interactions: int = 3) -> dict[str, pd.DataFrame]:
    """Per user in time order: the first ``ratios[0]`` share -> train, the next -> valid, the rest -> test."""
    frame = frame.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    pos = frame.groupby("user").cumcount().to_numpy()
    size = frame.groupby("user")["item"].transform("size").to_numpy()
    frac = pos / size
    eligible = size >= min_user_interactions
    tr, va = ratios[0], ratios[0] + ratios[1]
    test = eligible & (frac >= va)
    valid = eligible & (frac >= tr) & ~test
    train = ~(test | valid)
    return {"train": frame[train].reset_index(drop=True),
            "valid": frame[valid].reset_index(drop=True),
            "test": frame[test].reset_index(drop=True)}


def given_split(frame: pd.DataFrame, domain: str) -> dict[str, pd.DataFrame]:
    """The dataset's own split, from a ``split`` column with values train/valid/test."""
    if "split" not in frame.columns:
        raise DataError(f"domain '{domain}': split=given needs the loader to provide a 'split' column; "
                        "this dataset has no split of its own — use split=loo or split=ratio")
    bad = set(frame["split"].unique()) - set(SPLITS)
    if bad:
        raise DataError(f"domain '{domain}': unknown split value(s) {sorted(bad)} in column 'split'; "
                        f"use {list(SPLITS)}")
    frame = frame.sort_values(["user", "timestamp"], kind="stable")
    return {s: frame[frame["split"] == s].drop(columns="split").reset_index(drop=True) for s in SPLITS}


def random_order(frame: pd.DataFrame, seed: int, domain: str) -> pd.DataFrame:
    """Replace the order key of data without a time order by a seeded random one (per domain)."""
    salt = int.from_bytes(domain.encode()[:8].ljust(8, b"\0"), "little") % (2 ** 31)
    rng = np.random.default_rng([int(seed), salt])
    return frame.assign(timestamp=rng.permutation(len(frame)).astype(np.int64))


def split_domain(domain: Domain, split: dict | None = None) -> DomainData:
    """Index ``domain`` and split it by ``split['protocol']`` (loo, ratio or given)."""
    split = dict(split or {})
    users, items, frame = _index_domain(domain)
    protocol = split.get("protocol", "loo")
    ordered = bool(getattr(domain, "ordered", True))
    order = split.get("order", "auto")
    if order not in ("auto", "time", "random"):
        raise DataError(f"split.order '{order}' is unknown; use auto (time where the data has it), time or random")
    if order == "time" and not ordered and protocol != "given":
        raise DataError(f"split.order=time, but domain '{domain.name}' has no time order (no timestamps; its row "
                        "order is not a time); use split.order=auto or random")
    if (order == "random" or not ordered) and protocol != "given":  # RecBole's RO; unordered data always
        frame = random_order(frame, split.get("seed", 0), domain.name)
        ordered = ordered and order != "random"
    min_n = split.get("min_user_interactions", 3)
    if protocol == "given":
        parts = given_split(frame, domain.name)
    else:
        frame = frame.drop(columns="split", errors="ignore")
        if protocol == "loo":
            parts = leave_one_out(frame, min_n)
        elif protocol == "ratio":
            parts = ratio_split(frame, tuple(split.get("ratios", (0.8, 0.1, 0.1))), min_n)
        else:
            raise DataError(f"split.protocol '{protocol}' is unknown; use loo, ratio or given")
    return DomainData(name=domain.name, users=users, item_info=items, ordered=ordered, **parts)


def make_cold_start(target: DomainData, source: DomainData, share: float, seed: int,
                    valid_share: float = 0.5) -> DomainData:
    """Hide the whole target history of ``share`` of the overlap users; of those, ``valid_share`` get it
    as their validation set (validation cold users), the others as their test set."""
    if not 0.0 <= valid_share <= 1.0:
        raise DataError(f"split.cold_valid_share={valid_share} must be between 0 and 1")
    overlap = np.flatnonzero(source.user_index(target.users) >= 0)
    n_cold = int(round(share * overlap.size))
    if n_cold == 0:
        return target
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(overlap, size=n_cold, replace=False))
    valid_cold = np.sort(rng.choice(cold, size=int(round(valid_share * n_cold)), replace=False))
    test_cold = np.setdiff1d(cold, valid_cold)

    def history(users: np.ndarray) -> pd.DataFrame:
        rows = pd.concat([df[df["user"].isin(users)] for df in (target.train, target.valid, target.test)])
        return rows.sort_values(["user", "timestamp"], kind="stable")

    is_cold = lambda df: df["user"].isin(cold).to_numpy()
    return DomainData(
        name=target.name, users=target.users, item_info=target.item_info,
        train=target.train[~is_cold(target.train)].reset_index(drop=True),
        valid=pd.concat([target.valid[~is_cold(target.valid)], history(valid_cold)]).reset_index(drop=True),
        test=pd.concat([target.test[~is_cold(target.test)], history(test_cold)]).reset_index(drop=True),
        cold_users=test_cold.astype(np.int64), valid_cold_users=valid_cold.astype(np.int64), ordered=target.ordered,
    )


def _save(dd: DomainData, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"user": dd.users.astype(str)}).to_parquet(path / "users.parquet")
    dd.item_info.to_parquet(path / "items.parquet")
    for s in SPLITS:
        getattr(dd, s).to_parquet(path / f"{s}.parquet")
    pd.DataFrame({"user": dd.cold_users}).to_parquet(path / "cold_users.parquet")
    pd.DataFrame({"user": dd.valid_cold_users}).to_parquet(path / "valid_cold_users.parquet")
    (path / "name.txt").write_text(dd.name)
    (path / "ordered.txt").write_text("1" if dd.ordered else "0")


def _load(path: Path) -> DomainData:
    return DomainData(
        name=(path / "name.txt").read_text(),
        users=pd.read_parquet(path / "users.parquet")["user"].to_numpy(dtype=object),
        item_info=pd.read_parquet(path / "items.parquet"),
        cold_users=pd.read_parquet(path / "cold_users.parquet")["user"].to_numpy(np.int64),
        valid_cold_users=pd.read_parquet(path / "valid_cold_users.parquet")["user"].to_numpy(np.int64),
        ordered=(path / "ordered.txt").read_text() == "1",
        **{s: pd.read_parquet(path / f"{s}.parquet") for s in SPLITS},
    )


def empty_domain(name: str) -> DomainData:
    """A domain with no users, items or interactions: the source of the target-only protocol."""
    pairs = pd.DataFrame({"user": pd.Series(dtype=np.int64), "item": pd.Series(dtype=np.int64),
                          "timestamp": pd.Series(dtype=np.int64)})
    return DomainData(name=name, users=np.array([], dtype=object),
                      item_info=pd.DataFrame({"item": pd.Series(dtype=object), "text": pd.Series(dtype=object),
                                              "category": pd.Series(dtype=object)}),
                      train=pairs, valid=pairs.copy(), test=pairs.copy())


def build_scenario(source: DomainLoader, target: DomainLoader, split: dict,
                   cache_dir: str | Path | None = None) -> Scenario:
    """Load, index and split both domains; cached under ``cache_dir`` by a hash of their inputs."""
    if source.name == target.name:
        raise DataError(f"source and target are both '{source.name}'; pick two different domains "
                        f"(e.g. source=ecommerce target=social)")
    split = dict(split)
    key = stable_hash({"source": source.fingerprint(), "target": target.fingerprint(),
                       "split": split, "format": 2, "split_version": SPLIT_VERSION})

    def build(path: Path) -> None:
        src = empty_domain(source.name) if source.name == "none" else split_domain(source.load(), split)
        tgt = split_domain(target.load(), split)
        tgt = make_cold_start(tgt, src, split.get("cold_user_share", 0.2), split.get("seed", 0),
                              split.get("cold_valid_share", 0.5))
        _save(src, path / "source")
        _save(tgt, path / "target")
        (path / "meta.json").write_text(json.dumps({"source": source.name, "target": target.name,
                                                    "split": split}, indent=1))

    if cache_dir is None:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            return Scenario(_load(Path(tmp) / "source"), _load(Path(tmp) / "target"), key, False)
    path, hit = cached_dir(Path(cache_dir) / "scenarios", key, build)
    return Scenario(_load(path / "source"), _load(path / "target"), key, hit)
