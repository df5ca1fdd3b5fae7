"""The canonical record of one platform's data.

Every loader — the synthetic world, the real-data families, bring-your-own files — ends in a
:class:`Domain`. Everything downstream (splitting, caching, training) only sees this shape, so a
new data source is one new loader and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from tlexp.core.errors import DataError

INTERACTION_COLUMNS = ("user", "item", "timestamp")
ITEM_COLUMNS = ("item", "text", "category")


@dataclass
class Domain:
    """One platform: who interacted with what, when; and what the items are.

    ``interactions`` has columns ``user`` (global user key, a string, shared across domains so
    that overlap users match), ``item`` (item key, a string), ``timestamp`` (int64; any order key
    works — real data without times uses the position in the user's sequence, and says whether
    that position is a real order with ``ordered``) and optionally
    ``rating``. ``items`` has ``item``, ``text`` and ``category`` (empty strings where unknown).
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    ordered: bool = True  # False: ``timestamp`` is only the file's row order (no time order is known)

    def __post_init__(self) -> None:
        missing = [c for c in INTERACTION_COLUMNS if c not in self.interactions.columns]
        if missing:
            raise DataError(f"domain '{self.name}': interactions lack column(s) {missing}; "
                            f"a loader must produce {list(INTERACTION_COLUMNS)}")
        missing = [c for c in ITEM_COLUMNS if c not in self.items.columns]
        if missing:
            raise DataError(f"domain '{self.name}': items lack column(s) {missing}; "
                            f"a loader must produce {list(ITEM_COLUMNS)}")
        if self.interactions.empty:
            raise DataError(f"domain '{self.name}' has no interactions; check the loader's filters "
                            "(rating threshold, k-core) or the input file")

    @property
    def n_users(self) -> int:
        return int(self.interactions["user"].nunique())

    @property
    def n_items(self) -> int:
        return len(self.items)


class DomainLoader(Protocol):
    """What a ``source``/``target`` config instantiates to.

    ``fingerprint()`` returns a JSON-able description of everything that determines the loaded
    data (config, and for files their size and mtime), so that processed scenarios can be cached
    and invalidated when an input changes.
    """

    name: str

    def load(self) -> Domain: ...

    def fingerprint(self) -> dict: ...
