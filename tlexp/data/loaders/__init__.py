"""Real-data loaders: one class per dataset family in ``../shared/data`` plus two generic ones.

Each is instantiated by Hydra from ``conf/domain/<name>.yaml`` and returns the canonical
:class:`tlexp.data.domain.Domain` after cleaning (``tlexp.data.cleaning``). See docs/data.md.

- :class:`TabularLoader` — bring your own CSV/TSV/Parquet (used for ``douban-book-music``).
- :class:`RecBoleLoader` — bring your own RecBole atomic files (used for ``amazon-books-movies-dense``).
- :class:`MovieLensGenreLoader` — ``movielens-100k`` cut into disjoint genre-group domains.
- :class:`ArtsOfficeLoader`, :class:`FoodKitchenLoader`, :class:`UniSRecLoader` — sequence sets.
- :class:`DisenCDRLoader` — the ``amazon-disencdr`` pairs.
"""

from tlexp.data.loaders.base import FileLoader
from tlexp.data.loaders.disencdr import DisenCDRLoader
from tlexp.data.loaders.none import NO_SOURCE, NoSource
from tlexp.data.loaders.recbole import MovieLensGenreLoader, RecBoleLoader
from tlexp.data.loaders.sequences import ArtsOfficeLoader, FoodKitchenLoader, UniSRecLoader
from tlexp.data.loaders.tabular import TabularLoader

__all__ = ["NO_SOURCE", "ArtsOfficeLoader", "DisenCDRLoader", "FileLoader", "FoodKitchenLoader",
           "MovieLensGenreLoader", "NoSource",
           "RecBoleLoader", "TabularLoader", "UniSRecLoader"]
