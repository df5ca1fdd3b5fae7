"""Bring your own data (a): RecBole atomic files — ``<dataset>.inter`` / ``.item`` / ``.user``.

Each file is tab-separated with a typed header, ``field:type`` where type is ``token``,
``token_seq``, ``float`` or ``float_seq`` (an untyped header ``user_id item_id rating`` is read as
all ``token``). Example, ``conf/domain/my_recbole.yaml``::

    _target_: tlexp.data.loaders.RecBoleLoader
    name: my_recbole
    data_dir: ${paths.data_dir}
    folder: ml-1m
    dataset: ml-1m                       # file stem: ml-1m.inter, ml-1m.item, ml-1m.user
    fields: {user: user_id, item: item_id, timestamp: timestamp, rating: rating}
    text_fields: [movie_title]           # .item fields joined into the item text
    category_field: genre

``benchmark: [train, valid, test]`` reads RecBole's pre-split files ``<dataset>.train.inter`` …
instead of ``<dataset>.inter`` and makes ``split=given`` use them. The ``.user`` file, when
present, is checked (header, user field) but not otherwise used: a Domain carries no user features.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

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

TYPES = ("token", "token_seq", "float", "float_seq")
AUTO = "auto"


def read_atomic(path: Path, domain: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read one atomic file as strings; return it with columns renamed to bare field names + their types."""
    frame = read_delimited(path, domain, sep="\t", header=True)
    types: dict[str, str] = {}
    names = []
    for col in frame.columns:
        field, _, typ = str(col).partition(":")
        typ = typ or "token"
        if typ not in TYPES:
            raise DataError(f"domain '{domain}': {path}: header field '{col}' has unknown type '{typ}'; "
                            f"RecBole types are {list(TYPES)}")
        types[field] = typ
        names.append(field)
    frame.columns = names
    return frame, types


class RecBoleLoader(FileLoader):
    """Interactions from ``.inter`` (or benchmark split files), items from ``.item``."""

    kind = "recbole"

    def __init__(self, name: str, dataset: str, data_dir: str | os.PathLike = ".", folder: str = "",
                 inter_file: str | None = None, item_file: str | None = AUTO, user_file: str | None = None,
                 fields: Mapping | None = None, text_fields: list[str] | None = None,
                 category_field: str | None = None, benchmark: list[str] | None = None,
                 user_prefix: str = "", item_prefix: str = "", text_sep: str = ". ",
                 cleaning: Mapping | None = None):
        f = {"user": "user_id", "item": "item_id", "timestamp": AUTO, "rating": AUTO}
        given = dict(plain(fields) or {})
        unknown = set(given) - set(f)
        if unknown:
            raise DataError(f"domain '{name}': fields: unknown key(s) {sorted(unknown)}; use {sorted(f)}")
        f.update(given)
        super().__init__(name, data_dir, folder, cleaning, dataset=str(dataset), inter_file=inter_file,
                         item_file=item_file, user_file=user_file, fields=f, text_fields=plain(text_fields),
                         category_field=category_field, benchmark=plain(benchmark),
                         user_prefix=user_prefix, item_prefix=item_prefix, text_sep=text_sep)

    # -- files ----------------------------------------------------------------------------------
    def inter_paths(self) -> list[tuple[str | None, Path]]:
        o = self.options
        if o["benchmark"]:
            return [(part, self.path(f"{o['dataset']}.{part}.inter")) for part in o["benchmark"]]
        return [(None, self.path(o["inter_file"] or f"{o['dataset']}.inter"))]

    def item_path(self) -> Path | None:
        o = self.options
        if o["item_file"] == AUTO:  # optional: used when it exists
            p = self.path(f"{o['dataset']}.item", required=False)
            return p if p.is_file() else None
        return self.path(o["item_file"]) if o["item_file"] else None

    def files(self) -> list[Path]:
        o = self.options
        out = [p for _, p in self.inter_paths()]
        ip = self.item_path()
        if ip is not None:
            out.append(ip)
        if o["user_file"]:
            out.append(self.path(o["user_file"]))
        return out

    # -- reading --------------------------------------------------------------------------------
    def read_interactions(self) -> pd.DataFrame:
        o, f = self.options, dict(self.options["fields"])
        parts = []
        for part, path in self.inter_paths():
            raw, types = read_atomic(path, self.name)
            ts = f["timestamp"] if f["timestamp"] != AUTO else ("timestamp" if "timestamp" in types else None)
            rt = f["rating"] if f["rating"] != AUTO else ("rating" if "rating" in types else None)
            require_columns(raw, {"fields.user": f["user"], "fields.item": f["item"], "fields.timestamp": ts,
                                  "fields.rating": rt}, path, self.name)
            frame = pd.DataFrame({"user": o["user_prefix"] + raw[f["user"]].astype("string"),
                                  "item": o["item_prefix"] + raw[f["item"]].astype("string")})
            if ts:
                frame["timestamp"] = parse_timestamps(raw[ts], path, ts, self.name)
            if rt:
                frame["rating"] = to_float(raw[rt], path, rt, self.name)
            if part is not None:
                frame["split"] = part if part in ("train", "valid", "test") else str(part)
            parts.append(frame)
        inter = pd.concat(parts, ignore_index=True)
        if "timestamp" not in inter.columns:  # no times: the row order within each user, not a time order
            inter["timestamp"] = position_in_user(inter["user"])
            self.ordered = False
        inter["user"] = inter["user"].astype(object)
        inter["item"] = inter["item"].astype(object)
        if o["user_file"]:
            upath = self.path(o["user_file"])
            uraw, _ = read_atomic(upath, self.name)
            require_columns(uraw, {"fields.user": f["user"]}, upath, self.name)
        return inter

    def read_items(self, inter: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """The canonical item table and the raw .item frame (for subclasses that filter on fields)."""
        o, f = self.options, self.options["fields"]
        path = self.item_path()
        if path is None:
            return pd.DataFrame({"item": inter["item"].dropna().unique(), "text": "", "category": ""}), None
        raw, types = read_atomic(path, self.name)
        cat = o["category_field"]
        text = o["text_fields"]
        if text is None:  # default: every text-like field except the category
            text = [k for k, t in types.items() if t == "token_seq" and k not in (cat, f["item"])]
        require_columns(raw, {"fields.item": f["item"], "category_field": cat,
                              **{f"text_fields[{t}]": t for t in text}}, path, self.name)
        items = pd.DataFrame({
            "item": (o["item_prefix"] + raw[f["item"]].astype("string")).astype(object),
            "text": join_text(raw, text, o["text_sep"]) if text else "",
            "category": raw[cat].fillna("").astype(str) if cat else "",
        })
        return items, raw

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        inter = self.read_interactions()
        items, _ = self.read_items(inter)
        return inter, items


# The three genre groups of MovieLens "domains" and the tie order. See MovieLensGenreLoader.
ML_GENRE_GROUPS: dict[str, list[str]] = {
    "action": ["Action", "Adventure", "Sci-Fi", "Fantasy", "Thriller", "Crime", "Mystery", "Horror",
               "Film-Noir", "War", "Western"],
    "comedy": ["Comedy", "Romance", "Children's", "Animation", "Musical"],
    "drama": ["Drama", "Documentary"],
}
ML_TIE_ORDER = ["drama", "comedy", "action"]


def assign_genre_group(genres: pd.Series, groups: Mapping[str, list[str]], tie_order: list[str]) -> pd.Series:
    """Each movie -> exactly one group: the group holding most of its genre labels; ties go to the
    group that comes first in ``tie_order``. Movies with no label in any group get None."""
    labels = genres.fillna("").astype(str).str.split()
    scores = pd.DataFrame({g: labels.map(lambda ls, gs=set(members): sum(x in gs for x in ls))
                           for g, members in groups.items()})
    order = [g for g in tie_order if g in scores.columns] + [g for g in scores.columns if g not in tie_order]
    scores = scores[order]
    best = scores.idxmax(axis=1)  # idxmax takes the first maximum: the tie order
    return best.where(scores.max(axis=1) > 0, None)


class MovieLensGenreLoader(RecBoleLoader):
    """MovieLens (RecBole atomic files) cut into genre-group domains with disjoint item sets.

    Assignment rule (documented in docs/data.md): a movie belongs to the group that holds most of
    its genre labels — ``action`` = Action, Adventure, Sci-Fi, Fantasy, Thriller, Crime, Mystery,
    Horror, Film-Noir, War, Western; ``comedy`` = Comedy, Romance, Children's, Animation, Musical;
    ``drama`` = Drama, Documentary — and a tie goes to drama, then comedy, then action. Movies
    labelled only ``unknown`` (2 in ml-100k) belong to no group. Users are shared by all groups.
    """

    kind = "movielens-genre"

    def __init__(self, name: str, group: str, genre_field: str = "class",
                 groups: Mapping | None = None, tie_order: list[str] | None = None, **kwargs):
        super().__init__(name, category_field=kwargs.pop("category_field", genre_field), **kwargs)
        groups = plain(groups) or ML_GENRE_GROUPS
        if group not in groups:
            raise DataError(f"domain '{name}': group '{group}' is not one of {sorted(groups)}; "
                            "fix `group` in its yaml")
        self.options.update(group=group, genre_field=genre_field, groups=groups,
                            tie_order=plain(tie_order) or ML_TIE_ORDER)

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        o = self.options
        inter = self.read_interactions()
        items, raw = self.read_items(inter)
        if raw is None:
            raise DataError(f"domain '{self.name}': genre domains need the .item file "
                            f"({o['dataset']}.item in {self.root}) with field '{o['genre_field']}'")
        require_columns(raw, {"genre_field": o["genre_field"]}, self.item_path(), self.name)
        group = assign_genre_group(raw[o["genre_field"]], o["groups"], o["tie_order"]).to_numpy()
        items = items[group == o["group"]]
        inter = inter[inter["item"].isin(pd.Index(items["item"])).to_numpy()]
        return inter.reset_index(drop=True), items.reset_index(drop=True)

