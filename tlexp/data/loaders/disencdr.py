"""DisenCDR's Amazon dual-domain pairs (``amazon-disencdr``): ID-only, implicit, leave-one-out.

A pair ``x_y`` (e.g. ``sport_cloth``) has two folders: ``x_y/`` holds domain x's interactions,
``y_x/`` domain y's; user index i is the same user in both folders (and only within the pair),
so the user key is ``disencdr:<pair>:<i>``. Files are whitespace-separated ``user item 1``.

Interactions = ``train.txt`` (row order within a user is the order) followed by the held-out
test row. ``test_file: test_original.txt`` (default) keeps every user's held-out item;
``test.txt`` is DisenCDR's reading, without held-out items that never occur in ``train.txt``.
Given split: train.txt -> train, the test file -> test; DisenCDR has no validation set, so with
``valid_from_train: true`` (default) each user's last ``train.txt`` row becomes valid (users
with at least 3 train rows; every user in these files has at least 4).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from tlexp.data.loaders.base import FileLoader, position_in_user, read_delimited, to_int64
from tlexp.core.errors import DataError


class DisenCDRLoader(FileLoader):
    """One domain of a DisenCDR pair: ``pair: sport_cloth``, ``domain: sport`` reads ``sport_cloth/``."""

    kind = "disencdr"

    def __init__(self, name: str, pair: str, domain: str, data_dir: str | os.PathLike = ".",
                 folder: str = "amazon-disencdr", test_file: str = "test_original.txt",
                 valid_from_train: bool = True, cleaning: Mapping | None = None):
        parts = str(pair).split("_")
        if len(parts) != 2 or domain not in parts:
            raise DataError(f"domain '{name}': pair '{pair}' must be '<x>_<y>' and domain '{domain}' one of x, y")
        other = parts[1] if domain == parts[0] else parts[0]
        super().__init__(name, data_dir, folder, cleaning, pair=str(pair), domain=str(domain),
                         subfolder=f"{domain}_{other}", test_file=test_file,
                         valid_from_train=bool(valid_from_train))

    def files(self) -> list[Path]:
        o = self.options
        return [self.path(f"{o['subfolder']}/train.txt"), self.path(f"{o['subfolder']}/{o['test_file']}")]

    def _read(self, path: Path) -> pd.DataFrame:
        raw = read_delimited(path, self.name, sep=r"\s+", header=False, names=["user", "item", "value"])
        if raw["value"].isna().any():
            row = int(np.flatnonzero(raw["value"].isna().to_numpy())[0])
            raise DataError(f"domain '{self.name}': {path}, data row {row + 1}: expected 3 fields 'user item 1'; "
                            "fix that row")
        return pd.DataFrame({"u": to_int64(raw["user"], path, "user", self.name, what="user index"),
                             "i": to_int64(raw["item"], path, "item", self.name, what="item index")})

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        o = self.options
        train_path, test_path = self.files()
        tr, te = self._read(train_path), self._read(test_path)
        tr["split"] = "train"
        if o["valid_from_train"]:
            from_end = tr.groupby("u").cumcount(ascending=False).to_numpy()
            size = tr.groupby("u")["i"].transform("size").to_numpy()
            tr.loc[(from_end == 0) & (size >= 3), "split"] = "valid"
        te["split"] = "test"
        rows = pd.concat([tr, te], ignore_index=True)
        rows["timestamp"] = position_in_user(rows["u"])
        inter = pd.DataFrame({"user": (f"disencdr:{o['pair']}:" + rows["u"].astype(str)).astype(object),
                              # item ids are local to each domain of a pair: namespace them so that
                              # item 0 of Sport is never mistaken for item 0 of Cloth
                              "item": (f"{o['domain']}:" + rows["i"].astype(str)).astype(object),
                              "timestamp": rows["timestamp"].to_numpy(np.int64), "split": rows["split"]})
        keys = np.array([f"{o['domain']}:{i}" for i in np.sort(rows["i"].unique())], dtype=object)
        return inter, pd.DataFrame({"item": keys, "text": "", "category": ""})
