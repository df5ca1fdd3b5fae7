"""What every file-backed loader shares: path resolution, file fingerprints, cleaning, clear errors.

A concrete loader implements :meth:`FileLoader.files` (the input files, so a changed file
changes the cache key) and :meth:`FileLoader.read` (raw canonical frames). :meth:`load` then
cleans the interactions (``tlexp.data.cleaning``), keeps the item table consistent and returns
the :class:`Domain`. Everything a user can get wrong is raised as one-line :class:`DataError`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlexp.data.cleaning import CleaningConfig, clean_interactions
from tlexp.data.domain import Domain
from tlexp.core.errors import DataError

log = logging.getLogger(__name__)

DATA_DIR_HINT = "set TLEXP_DATA_DIR (or paths.data_dir=...) to the folder that holds the datasets"


def plain(obj: Any) -> Any:
    """OmegaConf containers (Hydra passes them to constructors) -> plain Python, for hashing/JSON."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def file_info(path: Path) -> dict:
    """Size and mtime (ns) of one input file: what makes a cached scenario stale."""
    st = path.stat()
    return {"path": str(path), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def position_in_user(users: pd.Series) -> np.ndarray:
    """0, 1, 2, ... per user in row order: the order key of data without timestamps."""
    return users.groupby(users, sort=False).cumcount().to_numpy(np.int64)


class FileLoader:
    """Base of the real-data loaders (Hydra-instantiated from ``conf/domain/<name>.yaml``).

    ``data_dir`` is the datasets root (``paths.data_dir``), ``folder`` the dataset's folder inside
    it (may be empty when the file paths are absolute or relative to ``data_dir``).
    """

    kind = "file"
    version = 1

    def __init__(self, name: str, data_dir: str | os.PathLike = ".", folder: str = "",
                 cleaning: Mapping | None = None, **options: Any):
        self.name = str(name)
        self.data_dir = Path(os.path.normpath(os.path.abspath(Path(str(data_dir)).expanduser())))
        self.folder = str(folder or "")
        self.cleaning = CleaningConfig.from_dict(plain(cleaning), where=f"domain '{self.name}': cleaning")
        self.options = plain(options)
        self.last_cleaning: dict[str, int] | None = None
        # False once read() finds no time order (no timestamps, rows in file order): the split then
        # orders each user's rows at random (tlexp.data.scenario.random_order)
        self.ordered = True

    # -- paths ---------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.data_dir / self.folder if self.folder else self.data_dir

    def path(self, rel: str | os.PathLike, required: bool = True) -> Path:
        """Resolve an input file (absolute, or relative to the dataset folder); check it exists."""
        p = Path(str(rel)).expanduser()
        if not p.is_absolute():
            p = self.root / p
        if required:
            if not self.root.is_dir():
                raise DataError(f"domain '{self.name}': data folder {self.root} not found; {DATA_DIR_HINT}"
                                f" (it must contain '{self.folder or p.parent.name}/')")
            if not p.is_file():
                raise DataError(f"domain '{self.name}': input file {p} not found; check the file name in "
                                f"conf/domain/{self.name}.yaml or {DATA_DIR_HINT}")
        return p

    # -- to implement --------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Every input file (resolved, checked to exist)."""
        raise NotImplementedError

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Raw canonical frames: interactions (user, item, timestamp[, rating][, split]) and items
        (item, text, category). Keys are strings."""
        raise NotImplementedError

    # -- the DomainLoader protocol ---------------------------------------------------------------
    def config(self) -> dict:
        return {"name": self.name, "folder": self.folder, "cleaning": self.cleaning.as_dict(), **self.options}

    def fingerprint(self) -> dict:
        return {"kind": f"{type(self).__module__}.{type(self).__qualname__}", "version": self.version,
                "config": self.config(), "files": [file_info(p) for p in self.files()]}

    def load(self) -> Domain:
        inter, items = self.read()
        where = ", ".join(p.name for p in self.files())
        inter, counts = clean_interactions(inter, self.cleaning, self.name, where)
        self.last_cleaning = counts
        items = finish_items(items)
        if self.cleaning.k_core_item > 1 or self.cleaning.k_core_user > 1:
            # k-core is a statement about the catalogue too: drop the items it filtered out
            items = items[items["item"].isin(inter["item"].unique())]
        inter = inter.assign(user=inter["user"].astype(str), item=inter["item"].astype(str),
                             timestamp=inter["timestamp"].astype(np.int64))
        cols = [c for c in ("user", "item", "timestamp", "rating", "split") if c in inter.columns]
        log.info("domain %s: %d interactions, %d users, %d items", self.name, len(inter),
                 inter["user"].nunique(), len(items))
        return Domain(name=self.name, interactions=inter[cols].reset_index(drop=True),
                      items=items.reset_index(drop=True), ordered=self.ordered)

    def cleaning_counts(self) -> dict[str, int]:
        """Counts removed by each cleaning step (loads the domain if it was not loaded yet)."""
        if self.last_cleaning is None:
            self.load()
        return dict(self.last_cleaning or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r})"


def finish_items(items: pd.DataFrame) -> pd.DataFrame:
    """Items with string item/text/category (empty where unknown), one row per item key."""
    out = pd.DataFrame({"item": items["item"]})
    for c in ("text", "category"):
        out[c] = items[c] if c in items.columns else ""
    out = out[out["item"].notna()]
    out = out.assign(item=out["item"].astype(str), text=out["text"].fillna("").astype(str).str.strip(),
                     category=out["category"].fillna("").astype(str).str.strip())
    return out[out["item"].str.strip() != ""].drop_duplicates("item")


def join_text(frame: pd.DataFrame, columns: Iterable[str], sep: str = ". ") -> pd.Series:
    """Join non-empty text columns into one string per row (e.g. title + category + brand)."""
    parts = [frame[c].fillna("").astype(str).str.strip() for c in columns]
    if not parts:
        return pd.Series("", index=frame.index)
    out = parts[0]
    for p in parts[1:]:
        out = out.where(p == "", out.where(out == "", out + sep) + p)
    return out


def read_delimited(path: Path, domain: str, sep: str = "\t", header: bool | int = True,
                   names: list[str] | None = None, comment: str | None = None) -> pd.DataFrame:
    """Read a delimited text file as strings; malformed rows become a DataError naming the line."""
    try:
        return pd.read_csv(path, sep=sep, header=0 if header is True else (None if header is False else header),
                           names=names, dtype=str, keep_default_na=False, na_values=[""],
                           quoting=csv.QUOTE_NONE if sep in ("\t", r"\s+") else csv.QUOTE_MINIMAL,
                           comment=comment, skip_blank_lines=True,
                           engine="python" if len(sep) > 1 and sep != r"\s+" else "c")
    except pd.errors.ParserError as e:
        raise DataError(f"domain '{domain}': malformed row in {path}: {str(e).strip().splitlines()[-1]}; "
                        "fix or remove that line") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"domain '{domain}': input file {path} is empty") from None
    except UnicodeDecodeError as e:
        raise DataError(f"domain '{domain}': {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def to_int64(values: pd.Series, path: Path, column: str, domain: str, what: str = "number") -> np.ndarray:
    """Parse a column of numbers (ints or floats) to int64; a bad cell names the file, column and row."""
    num = pd.to_numeric(values, errors="coerce")
    bad = num.isna() & values.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"domain '{domain}': {path}, column '{column}', data row {row + 1}: "
                        f"{values.iloc[row]!r} is not a {what}; fix that row")
    if num.isna().any():
        row = int(np.flatnonzero(num.isna().to_numpy())[0])
        raise DataError(f"domain '{domain}': {path}, column '{column}', data row {row + 1} is empty; "
                        f"fill it or drop the row")
    return num.to_numpy(np.float64).astype(np.int64)


def to_float(values: pd.Series, path: Path, column: str, domain: str) -> np.ndarray:
    num = pd.to_numeric(values, errors="coerce")
    bad = num.isna() & values.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"domain '{domain}': {path}, column '{column}', data row {row + 1}: "
                        f"{values.iloc[row]!r} is not a number; fix that row")
    if num.isna().any():
        row = int(np.flatnonzero(num.isna().to_numpy())[0])
        raise DataError(f"domain '{domain}': {path}, column '{column}', data row {row + 1} is empty "
                        "(a missing field?); fill it or drop the row")
    return num.to_numpy(np.float64)


def require_columns(frame: pd.DataFrame, wanted: Mapping[str, str | None], path: Path, domain: str) -> None:
    """Every configured column name must exist: name the option, the file and the columns present."""
    for option, col in wanted.items():
        if col is not None and col not in frame.columns:
            raise DataError(f"domain '{domain}': column '{col}' ({option}) not found in {path}; its columns are "
                            f"{list(frame.columns)} — fix {option} in conf/domain/{domain}.yaml")


def parse_timestamps(values: pd.Series, path: Path, column: str, domain: str) -> np.ndarray:
    """Numbers (Unix seconds, or any order key) or date strings (ISO etc.) -> int64 order keys."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return (values.astype("datetime64[ns]").astype(np.int64) // 10**9).to_numpy(np.int64)
    num = pd.to_numeric(values, errors="coerce")
    if num.notna().all():
        return num.to_numpy(np.float64).astype(np.int64)
    if num.notna().any():  # mostly numbers: the odd one out is a malformed cell
        return to_int64(values, path, column, domain, what="number (timestamp)")
    dt = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    if dt.isna().any():
        row = int(np.flatnonzero(dt.isna().to_numpy())[0])
        raise DataError(f"domain '{domain}': {path}, column '{column}', data row {row + 1}: "
                        f"{values.iloc[row]!r} is neither a number nor a date; fix that row")
    return (dt.astype("datetime64[ns, UTC]").astype(np.int64) // 10**9).to_numpy(np.int64)
