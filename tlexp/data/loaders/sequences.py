"""Loaders for the cross-domain *sequence* datasets: one line per user, items in order, no times.

- :class:`ArtsOfficeLoader` — URLLM's Amazon Arts ↔ Office set (``amazon-arts-office``).
- :class:`FoodKitchenLoader` — C2DSR/LLMCDSR's Amazon Food ↔ Kitchen set (``amazon-food-kitchen``).
- :class:`UniSRecLoader` — UniSRec's downstream format (``amazon-scientific``).

Timestamps are positions in the user's sequence. Each dataset ships its own split; the loaders
add it as a ``split`` column so that ``split=given`` reproduces the published protocol.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from tlexp.data.loaders.base import FileLoader, join_text, read_delimited, require_columns, to_int64
from tlexp.core.errors import DataError


def _lines(path: Path, domain: str) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"domain '{domain}': {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


# ----------------------------------------------------------------------------------------------
class ArtsOfficeLoader(FileLoader):
    """URLLM ``amazon-arts-office``: one domain (``arts`` or ``office``) of the dual-domain sequences.

    Each user has two lines ``user_index <TAB> n <TAB> item|k|k ...`` sharing the first ``n``
    tokens (an interleaved Arts+Office history); the last token of each line is a held-out
    target. Interactions of this domain = its items among the history (order = position) plus
    the line targets (line 1's at position ``n``, line 2's at ``n + 1``). User keys are the
    Amazon reviewer IDs of ``Dualuser_dict.json`` (so they match ``amazon-scientific``).
    Given split: history -> train; a target -> the split of the file it came from
    (``train_F2`` users 0-7,999, ``valid_F2`` 9,000-9,576, ``test_F2`` 8,000-8,999).
    Item text: ``title. attribute`` (category path words + brand, as shipped; they cannot be
    told apart, so ``category`` stays empty).
    """

    kind = "urllm-arts-office"
    ITEM_FILES = {"arts": "item_listA_F.csv", "office": "item_listO_AA_F.csv"}

    def __init__(self, name: str, domain: str, data_dir: str | os.PathLike = ".",
                 folder: str = "amazon-arts-office", users_file: str = "Dualuser_dict.json",
                 item_file: str | None = None,
                 sequence_files: Mapping | None = None, cleaning: Mapping | None = None):
        if domain not in self.ITEM_FILES:
            raise DataError(f"domain '{name}': domain '{domain}' must be one of {sorted(self.ITEM_FILES)}")
        seq = dict(sequence_files or {"train": "train_F2.txt", "valid": "valid_F2.txt", "test": "test_F2.txt"})
        super().__init__(name, data_dir, folder, cleaning, domain=domain, users_file=users_file,
                         item_file=item_file or self.ITEM_FILES[domain], sequence_files=seq)

    def files(self) -> list[Path]:
        o = self.options
        return ([self.path(o["users_file"]), self.path(o["item_file"])]
                + [self.path(f) for f in o["sequence_files"].values()])

    def read_items(self) -> pd.DataFrame:
        path = self.path(self.options["item_file"])
        raw = read_delimited(path, self.name, sep=",", header=True)
        require_columns(raw, {"item_file column idAfter": "idAfter", "item_file column item_title": "item_title",
                              "item_file column item_attribute": "item_attribute"}, path, self.name)
        ids = to_int64(raw["idAfter"], path, "idAfter", self.name, what="global item id")
        return pd.DataFrame({"item": ids.astype(str), "text": join_text(raw, ["item_title", "item_attribute"]),
                             "category": "", "gid": ids})

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        o = self.options
        upath = self.path(o["users_file"])
        try:
            reviewers = json.loads(upath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"domain '{self.name}': {upath} is not a JSON list of reviewer IDs ({e}); "
                            "restore the file") from None
        if not isinstance(reviewers, list):
            raise DataError(f"domain '{self.name}': {upath} must hold a JSON list of reviewer IDs")
        items = self.read_items()
        mine = set(items["gid"].tolist())
        us, its, ts, sp = [], [], [], []
        for split, fname in o["sequence_files"].items():
            path = self.path(fname)
            lines = _lines(path, self.name)
            if len(lines) % 2:
                raise DataError(f"domain '{self.name}': {path} has {len(lines)} lines; every user must have "
                                "exactly 2 consecutive lines — restore the file")
            for j in range(0, len(lines), 2):
                (n1, l1), (n2, l2) = lines[j], lines[j + 1]
                a, b = self._parse(path, n1, l1), self._parse(path, n2, l2)
                if a[0] != b[0] or a[1] != b[1] or a[2][:-1] != b[2][:-1]:
                    raise DataError(f"domain '{self.name}': {path} lines {n1}-{n2}: the two lines of a user must "
                                    "share user, length and history (all but the last token); restore the file")
                u, n, seq = a
                if not 0 <= u < len(reviewers):
                    raise DataError(f"domain '{self.name}': {path} line {n1}: user index {u} is outside "
                                    f"{upath.name} (0..{len(reviewers) - 1})")
                user = str(reviewers[u])
                for k, i in enumerate(seq[:-1]):
                    if i in mine:
                        us.append(user), its.append(i), ts.append(k), sp.append("train")
                for k, i in ((n, seq[-1]), (n + 1, b[2][-1])):
                    if i in mine:
                        us.append(user), its.append(i), ts.append(k), sp.append(split)
        inter = pd.DataFrame({"user": pd.Series(us, dtype=object),
                              "item": pd.Series(np.asarray(its, dtype=np.int64).astype(str), dtype=object),
                              "timestamp": np.asarray(ts, dtype=np.int64), "split": sp})
        return inter, items.drop(columns="gid")

    def _parse(self, path: Path, lineno: int, line: str) -> tuple[int, int, list[int]]:
        cells = line.rstrip("\r\n").rstrip("\t").split("\t")
        try:
            u, n = int(cells[0]), int(cells[1])
            seq = [int(tok.split("|", 1)[0]) for tok in cells[2:]]
        except (ValueError, IndexError):
            bad = next((c for c in cells if not c.split("|", 1)[0].strip().isdigit()), cells[0] if cells else "")
            raise DataError(f"domain '{self.name}': {path} line {lineno}: expected 'user <TAB> n <TAB> item|k|k ...', "
                            f"found field {bad!r}; fix or restore that line") from None
        if len(seq) != n + 1:
            raise DataError(f"domain '{self.name}': {path} line {lineno}: length field says {n} + 1 tokens, "
                            f"found {len(seq)}; fix or restore that line")
        return u, n, seq


# ----------------------------------------------------------------------------------------------
class FoodKitchenLoader(FileLoader):
    """C2DSR/LLMCDSR ``amazon-food-kitchen``: one domain (``food`` = A or ``kitchen`` = B).

    Sequence files ``uid <TAB> id,id,...`` over one global item space; an item's domain is the
    items file it is listed in. User ids are local to each file and no raw reviewer IDs exist,
    so the user key is ``<prefix><file tag>:<uid>`` — users of ``train_overlap``/``valid``/``test``
    are in both domains (the overlap), ``train_A``/``train_B`` users in one. Given split: the
    last item of a ``valid``/``test`` line is that line's target (valid/test); everything else
    is train. Item keys are ASINs, text is the product title.
    """

    kind = "c2dsr-food-kitchen"
    ITEM_FILES = {"food": "items_A_food.tsv", "kitchen": "items_B_kitchen.tsv"}
    SEQUENCES = {"A": "train_A.txt", "B": "train_B.txt", "overlap": "train_overlap.txt",
                 "valid": "valid.txt", "test": "test.txt"}

    def __init__(self, name: str, domain: str, data_dir: str | os.PathLike = ".",
                 folder: str = "amazon-food-kitchen", item_file: str | None = None,
                 sequence_files: Mapping | None = None, user_prefix: str = "foodkitchen:",
                 cleaning: Mapping | None = None):
        if domain not in self.ITEM_FILES:
            raise DataError(f"domain '{name}': domain '{domain}' must be one of {sorted(self.ITEM_FILES)}")
        super().__init__(name, data_dir, folder, cleaning, domain=domain,
                         item_file=item_file or self.ITEM_FILES[domain],
                         sequence_files=dict(sequence_files or self.SEQUENCES), user_prefix=user_prefix)

    def files(self) -> list[Path]:
        o = self.options
        return [self.path(o["item_file"])] + [self.path(f) for f in o["sequence_files"].values()]

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        o = self.options
        ipath = self.path(o["item_file"])
        raw = read_delimited(ipath, self.name, sep="\t", header=True)
        require_columns(raw, {"item_file column global_item_id": "global_item_id", "item_file column asin": "asin",
                              "item_file column title": "title"}, ipath, self.name)
        gids = to_int64(raw["global_item_id"], ipath, "global_item_id", self.name, what="global item id")
        asin = raw["asin"].astype(str).to_numpy()
        lookup = pd.Series(asin, index=gids)
        items = pd.DataFrame({"item": asin, "text": raw["title"].fillna("").astype(str), "category": ""})
        frames = []
        for tag, fname in o["sequence_files"].items():
            path = self.path(fname)
            us, its, pos, last = [], [], [], []
            for lineno, line in _lines(path, self.name):
                cells = line.strip().split("\t")
                try:
                    if len(cells) != 2:
                        raise ValueError
                    seq = [int(x) for x in cells[1].split(",")]
                except ValueError:
                    raise DataError(f"domain '{self.name}': {path} line {lineno}: expected "
                                    f"'uid <TAB> id,id,...' with integer item ids, found {line[:60]!r}; "
                                    "fix or restore that line") from None
                us.extend([cells[0]] * len(seq))
                its.extend(seq)
                pos.extend(range(len(seq)))
                last.extend([False] * (len(seq) - 1) + [True])
            f = pd.DataFrame({"user": f"{o['user_prefix']}{tag}:" + pd.Series(us, dtype=object),
                              "gid": np.asarray(its, dtype=np.int64), "timestamp": np.asarray(pos, dtype=np.int64)})
            is_target = np.asarray(last, dtype=bool) & (tag in ("valid", "test"))
            f["split"] = np.where(is_target, tag, "train")
            frames.append(f)
        inter = pd.concat(frames, ignore_index=True)
        inter = inter[inter["gid"].isin(lookup.index).to_numpy()]
        inter = inter.assign(item=lookup.reindex(inter["gid"].to_numpy()).to_numpy())
        return inter.drop(columns="gid").reset_index(drop=True), items


# ----------------------------------------------------------------------------------------------
class UniSRecLoader(FileLoader):
    """UniSRec downstream format (``amazon-scientific``): ``<d>.{train,valid,test}.inter`` with
    ``user_id:token  item_id_list:token_seq  item_id:token`` rows, ``<d>.text``, ``<d>.item2index``
    and ``<d>.user2index``.

    The full sequence of a user is rebuilt as: the first item of the earliest train prefix, then
    the train targets in time order (the train file lists each user's prefixes longest first),
    then the valid target, then the test target — the leave-one-out split the files encode,
    offered as ``split=given``. User keys are Amazon reviewer IDs, item keys ASINs; text is the
    shipped ``title. categories. brand.`` string and ``category`` the categories part.
    """

    kind = "unisrec"

    def __init__(self, name: str, dataset: str, data_dir: str | os.PathLike = ".", folder: str = "",
                 cleaning: Mapping | None = None):
        super().__init__(name, data_dir, folder, cleaning, dataset=str(dataset))

    def _file(self, suffix: str) -> Path:
        return self.path(f"{self.options['dataset']}.{suffix}")

    def files(self) -> list[Path]:
        return [self._file(s) for s in ("train.inter", "valid.inter", "test.inter", "text",
                                        "item2index", "user2index")]

    def _index(self, suffix: str) -> pd.Series:
        path = self._file(suffix)
        raw = read_delimited(path, self.name, sep="\t", header=False, names=["key", "index"])
        idx = to_int64(raw["index"], path, "index", self.name, what="integer index")
        return pd.Series(raw["key"].astype(str).to_numpy(), index=idx)

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        items_by_idx, users_by_idx = self._index("item2index"), self._index("user2index")
        parts = []
        for split in ("train", "valid", "test"):
            path = self._file(f"{split}.inter")
            raw = read_delimited(path, self.name, sep="\t", header=True)
            raw.columns = [str(c).split(":")[0] for c in raw.columns]
            require_columns(raw, {"user_id": "user_id", "item_id_list": "item_id_list", "item_id": "item_id"},
                            path, self.name)
            f = pd.DataFrame({
                "u": to_int64(raw["user_id"], path, "user_id", self.name, what="user index"),
                "i": to_int64(raw["item_id"], path, "item_id", self.name, what="item index"),
                "first": raw["item_id_list"].fillna("").str.split(" ", n=1).str[0],
                "hist_len": raw["item_id_list"].fillna("").str.count(" ") + 1,
                "split": split,
            })
            # train lists each user's prefixes longest first: reverse row order = time order
            f["rank"] = (f.groupby("u").cumcount(ascending=False) if split == "train"
                         else pd.Series(0, index=f.index))
            parts.append(f)
        tr, va, te = parts
        n_train = tr.groupby("u").size()
        va["rank"] = n_train.reindex(va["u"]).fillna(0).to_numpy(np.int64)
        te["rank"] = n_train.reindex(te["u"]).fillna(0).to_numpy(np.int64) + 1
        rows = pd.concat([tr, va, te], ignore_index=True)
        rows["timestamp"] = rows["rank"].to_numpy(np.int64) + 1
        # the first item: head of the history of each user's earliest row (which must have length 1)
        earliest = rows.sort_values(["u", "timestamp"], kind="stable").drop_duplicates("u")
        if (earliest["hist_len"] != 1).any():
            bad = earliest[earliest["hist_len"] != 1].iloc[0]
            raise DataError(f"domain '{self.name}': {self.root}: the earliest row of user index {bad['u']} has "
                            f"a history of {bad['hist_len']} items, expected 1 — the train file must list each "
                            "user's prefixes longest first (UniSRec layout); restore the files")
        firsts = pd.DataFrame({"u": earliest["u"].to_numpy(),
                               "i": to_int64(earliest["first"], self._file("train.inter"), "item_id_list",
                                             self.name, what="item index"),
                               "timestamp": 0, "split": "train"})
        rows = pd.concat([firsts, rows[["u", "i", "timestamp", "split"]]], ignore_index=True)
        for col, lookup, what in (("u", users_by_idx, "user2index"), ("i", items_by_idx, "item2index")):
            missing = ~rows[col].isin(lookup.index)
            if missing.any():
                raise DataError(f"domain '{self.name}': index {int(rows.loc[missing.idxmax(), col])} is not in "
                                f"{self._file(what)}; restore the file")
        inter = pd.DataFrame({"user": lookup_values(users_by_idx, rows["u"]),
                              "item": lookup_values(items_by_idx, rows["i"]),
                              "timestamp": rows["timestamp"].to_numpy(np.int64), "split": rows["split"].to_numpy()})
        # items: every indexed item, with its text
        tpath = self._file("text")
        text = read_delimited(tpath, self.name, sep="\t", header=True)
        text.columns = [str(c).split(":")[0] for c in text.columns]
        require_columns(text, {"item_id": "item_id", "text": "text"}, tpath, self.name)
        t = text.drop_duplicates("item_id").set_index("item_id")["text"].fillna("").str.strip()
        keys = items_by_idx.sort_index().to_numpy()
        full = t.reindex(keys).fillna("").to_numpy()
        parts3 = pd.Series(full).str.rstrip(". ").str.rsplit(". ", n=2)
        category = parts3.map(lambda p: p[1] if isinstance(p, list) and len(p) == 3 else "")
        items = pd.DataFrame({"item": keys, "text": full, "category": category.to_numpy()})
        return inter, items


def lookup_values(lookup: pd.Series, idx: pd.Series) -> np.ndarray:
    return lookup.reindex(idx.to_numpy()).to_numpy(dtype=object)
