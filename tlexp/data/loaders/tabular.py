"""Bring your own data (b): an interactions table plus an optional items table, CSV/TSV/Parquet.

Configured in YAML with the column names of your files, e.g. ``conf/domain/my_shop.yaml``::

    _target_: tlexp.data.loaders.TabularLoader
    name: my_shop
    data_dir: ${paths.data_dir}
    folder: my-shop                      # relative to data_dir; or give absolute file paths
    interactions: events.csv             # .csv / .tsv / .parquet (or any text file with `sep`)
    items: products.parquet              # optional
    columns: {user: customer_id, item: sku, timestamp: ts, rating: null}
    item_columns: {item: sku, text: [title, brand], category: category}
    cleaning: {min_rating: null, k_core: 5}

Optional columns (``timestamp``, ``rating``, ``split``; ``text``, ``category``) default to
``auto``: used when a column of that name exists. ``null`` ignores them. Without a timestamp the
row order within each user is the order. Timestamps may be numbers or date strings. A ``split``
column with train/valid/test makes ``split=given`` use your own split.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tlexp.data.loaders.base import (
    FileLoader,
    join_text,
    parse_timestamps,
    plain,
    position_in_user,
    read_delimited,
    require_columns,
    to_float,
)
from tlexp.core.errors import DataError

AUTO = "auto"
SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".inter": "\t", ".dat": "\t", ".txt": "\t"}
PARQUET = (".parquet", ".pq")


def resolve_columns(given: Mapping | None, defaults: dict, where: str) -> dict:
    given = dict(plain(given) or {})
    unknown = set(given) - set(defaults)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {sorted(unknown)}; use {sorted(defaults)}")
    return {**defaults, **given}


def pick(frame: pd.DataFrame, col: Any, canonical: str) -> Any:
    """Resolve an ``auto`` optional column: the canonical name if the file has it, else None."""
    if col == AUTO:
        return canonical if canonical in frame.columns else None
    return col


def read_table(loader: FileLoader, path: Path, sep: str | None, header: bool,
               names: list[str] | None) -> pd.DataFrame:
    """CSV/TSV/text or Parquet by extension; ``sep`` overrides the separator guess."""
    if path.suffix.lower() in PARQUET:
        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a broken file
            raise DataError(f"domain '{loader.name}': cannot read Parquet file {path}: "
                            f"{str(e).splitlines()[0]}") from None
        if names:
            frame.columns = names[: len(frame.columns)]
        return frame
    sep = sep or SEPARATORS.get(path.suffix.lower(), ",")
    return read_delimited(path, loader.name, sep=sep, header=header, names=names)


class TabularLoader(FileLoader):
    """Interactions (user, item, optional timestamp/rating/split) + optional items (item, text, category)."""

    kind = "tabular"

    def __init__(self, name: str, interactions: str, items: str | None = None,
                 data_dir: str | os.PathLike = ".", folder: str = "",
                 columns: Mapping | None = None, item_columns: Mapping | None = None,
                 sep: str | None = None, header: bool = True, names: list[str] | None = None,
                 item_sep: str | None = None, item_header: bool = True, item_names: list[str] | None = None,
                 user_prefix: str = "", item_prefix: str = "", text_sep: str = ". ",
                 cleaning: Mapping | None = None):
        where = f"domain '{name}'"
        cols = resolve_columns(columns, {"user": "user", "item": "item", "timestamp": AUTO,
                                         "rating": AUTO, "split": AUTO}, f"{where}: columns")
        icols = resolve_columns(item_columns, {"item": cols["item"], "text": AUTO, "category": AUTO},
                                f"{where}: item_columns")
        super().__init__(name, data_dir, folder, cleaning, interactions=str(interactions),
                         items=None if items is None else str(items), columns=cols, item_columns=icols,
                         sep=sep, header=bool(header), names=plain(names), item_sep=item_sep,
                         item_header=bool(item_header), item_names=plain(item_names),
                         user_prefix=user_prefix, item_prefix=item_prefix, text_sep=text_sep)

    def files(self) -> list[Path]:
        o = self.options
        return [self.path(o["interactions"])] + ([self.path(o["items"])] if o["items"] else [])

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        o = self.options
        path = self.path(o["interactions"])
        raw = read_table(self, path, o["sep"], o["header"], o["names"])
        c = dict(o["columns"])
        for opt in ("timestamp", "rating", "split"):
            c[opt] = pick(raw, c[opt], opt)
        require_columns(raw, {f"columns.{k}": v for k, v in c.items()}, path, self.name)
        inter = pd.DataFrame({
            "user": o["user_prefix"] + raw[c["user"]].astype("string"),
            "item": o["item_prefix"] + raw[c["item"]].astype("string"),
        })
        if c["timestamp"]:
            inter["timestamp"] = parse_timestamps(raw[c["timestamp"]], path, c["timestamp"], self.name)
        else:  # no times: the row order within each user, not a time order
            inter["timestamp"] = position_in_user(inter["user"])
            self.ordered = False
        if c["rating"]:
            inter["rating"] = to_float(raw[c["rating"]], path, c["rating"], self.name)
        if c["split"]:
            inter["split"] = raw[c["split"]].astype(str).str.strip().str.lower()
        inter["user"] = inter["user"].astype(object)
        inter["item"] = inter["item"].astype(object)
        if not o["items"]:
            keys = inter["item"].dropna().unique()
            return inter, pd.DataFrame({"item": keys, "text": "", "category": ""})
        ipath = self.path(o["items"])
        iraw = read_table(self, ipath, o["item_sep"], o["item_header"], o["item_names"])
        ic = dict(o["item_columns"])
        ic["category"] = pick(iraw, ic["category"], "category")
        text = ic["text"]
        text = [pick(iraw, text, "text")] if text == AUTO else ([text] if isinstance(text, str) else text)
        text = [t for t in (text or []) if t]
        require_columns(iraw, {"item_columns.item": ic["item"], "item_columns.category": ic["category"],
                               **{f"item_columns.text[{t}]": t for t in text}}, ipath, self.name)
        items = pd.DataFrame({
            "item": o["item_prefix"] + iraw[ic["item"]].astype("string"),
            "text": join_text(iraw, text, o["text_sep"]) if text else "",
            "category": iraw[ic["category"]].astype(str) if ic["category"] else "",
        })
        items["item"] = items["item"].astype(object)
        return inter, items

