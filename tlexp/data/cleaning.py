"""Interaction cleaning shared by every real-data loader, configured per domain or preset.

Steps, in this order (each optional, each logged with the number of rows it removed):

1. ``drop_missing`` — rows whose user or item key is missing or empty;
2. ``dedupe`` — repeated (user, item) pairs: keep the latest (largest timestamp, then the later
   row), as implicit-feedback protocols do;
3. ``min_rating`` — keep rows with ``rating >= min_rating`` (explicit ratings -> implicit feedback);
4. ``k_core`` — iteratively drop users with fewer than ``k_core.user`` and items with fewer than
   ``k_core.item`` interactions until both hold (an int means the same k for both).

The returned counts go to ``tlexp data describe`` so that a paper's statistics table can say
exactly what was removed. An empty result raises :class:`DataError` naming the step and the file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import pandas as pd

from tlexp.core.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleaningConfig:
    """What to clean; ``conf/domain/*.yaml`` holds it under ``cleaning:``."""

    drop_missing: bool = True
    dedupe: bool = True
    min_rating: float | None = None
    k_core_user: int = 0
    k_core_item: int = 0

    @classmethod
    def from_dict(cls, cfg: Mapping | None, where: str = "cleaning") -> CleaningConfig:
        cfg = dict(cfg or {})
        known = {"drop_missing", "dedupe", "min_rating", "k_core"}
        unknown = set(cfg) - known
        if unknown:
            raise DataError(f"{where}: unknown key(s) {sorted(unknown)}; use {sorted(known)}")
        k = cfg.get("k_core")
        if k is None:
            ku = ki = 0
        elif isinstance(k, Mapping):
            bad = set(k) - {"user", "item"}
            if bad:
                raise DataError(f"{where}.k_core: unknown key(s) {sorted(bad)}; use user and item")
            ku, ki = int(k.get("user") or 0), int(k.get("item") or 0)
        else:
            ku = ki = int(k)
        mr = cfg.get("min_rating")
        return cls(drop_missing=bool(cfg.get("drop_missing", True)), dedupe=bool(cfg.get("dedupe", True)),
                   min_rating=None if mr is None else float(mr), k_core_user=ku, k_core_item=ki)

    def as_dict(self) -> dict:
        return asdict(self)


def _k_core(df: pd.DataFrame, k_user: int, k_item: int) -> pd.DataFrame:
    """Iterate user/item count filters to a fixed point (no dense matrices: value counts only)."""
    while True:
        n = len(df)
        if k_user > 1:
            size = df.groupby("user", sort=False)["item"].transform("size")
            df = df[size.to_numpy() >= k_user]
        if k_item > 1:
            size = df.groupby("item", sort=False)["user"].transform("size")
            df = df[size.to_numpy() >= k_item]
        if len(df) == n or df.empty:
            return df


def clean_interactions(df: pd.DataFrame, cfg: CleaningConfig, domain: str,
                       where: str = "") -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply ``cfg`` to canonical interactions; return the cleaned frame and the removed counts.

    ``where`` names the input file(s) for error messages.
    """
    src = f" ({where})" if where else ""
    counts: dict[str, int] = {"rows": int(len(df))}

    def step(name: str, before: int, after: pd.DataFrame, fix: str) -> pd.DataFrame:
        counts[name] = int(before - len(after))
        if counts[name]:  # a step that removed nothing is not news
            log.info("domain %s: cleaning step %s removed %d of %d rows", domain, name, counts[name], before)
        if after.empty and before:
            raise DataError(f"domain '{domain}'{src}: no interactions left after cleaning step '{name}'; {fix}")
        return after

    if cfg.drop_missing:
        bad = df["user"].isna() | df["item"].isna()
        bad |= (df["user"].astype(str).str.strip() == "") | (df["item"].astype(str).str.strip() == "")
        df = step("missing_ids", len(df), df[~bad.to_numpy()],
                  "every row lacks a user or item id — check the column names in the domain's yaml")
    if cfg.dedupe:
        before = len(df)
        df = df.sort_values(["user", "timestamp"], kind="stable")
        df = df.drop_duplicates(["user", "item"], keep="last")
        df = step("duplicates", before, df, "this cannot happen")
    if cfg.min_rating is not None:
        if "rating" not in df.columns:
            raise DataError(f"domain '{domain}'{src}: cleaning.min_rating={cfg.min_rating} needs a rating "
                            "column, but this domain has none; remove cleaning.min_rating or map a rating column")
        df = step("below_min_rating", len(df), df[df["rating"].to_numpy() >= cfg.min_rating],
                  f"lower cleaning.min_rating (now {cfg.min_rating}) or set it to null")
    if cfg.k_core_user > 1 or cfg.k_core_item > 1:
        df = step("k_core", len(df), _k_core(df, cfg.k_core_user, cfg.k_core_item),
                  f"lower cleaning.k_core (now user={cfg.k_core_user}, item={cfg.k_core_item})")
    if df.empty:
        raise DataError(f"domain '{domain}'{src}: the input has no interactions; check the file")
    counts["kept"] = int(len(df))
    return df.reset_index(drop=True), counts
