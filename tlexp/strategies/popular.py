"""``popular``: rank items by their number of target training interactions. No training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tlexp.data.scenario import DomainData
from tlexp.models.base import Backbone
from tlexp.models.popularity import Popularity
from tlexp.models.recommender import Recommender
from tlexp.strategies.base import Built, Strategy, StrategyInputs


class Popular(Strategy):
    """The sanity floor: evaluated as built, without fitting."""

    trains = False

    def make_backbone(self, target: DomainData, build: Callable[[Any], Backbone]) -> Backbone:
        return Popularity(target.n_users, np.bincount(target.train["item"].to_numpy(), minlength=target.n_items))

    def build(self, inputs: StrategyInputs) -> Built:
        return Built(Recommender(inputs.backbone))
