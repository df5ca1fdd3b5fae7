"""``popular``: rank items by their number of target training interactions. No training."""

from __future__ import annotations

import numpy as np

from tlexp.context import RunContext
from tlexp.models.base import Backbone
from tlexp.models.popularity import Popularity
from tlexp.strategies.base import RecStrategy


class Popular(RecStrategy):
    """The sanity floor: the pipeline evaluates it without fitting."""

    trains = False

    @classmethod
    def make_backbone(cls, ctx: RunContext) -> Backbone:
        t = ctx.target
        return Popularity(t.n_users, np.bincount(t.train["item"].to_numpy(), minlength=t.n_items))
