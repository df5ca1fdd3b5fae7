"""``scratch``: train on the target domain only — the no-transfer baseline."""

from __future__ import annotations

from tlexp.models.recommender import Recommender
from tlexp.strategies.base import Built, Strategy, StrategyInputs
from tlexp.training.module import LossObjective


class Scratch(Strategy):
    """No knowledge from the source. Cold-start users keep their untrained initial embedding."""

    def build(self, inputs: StrategyInputs) -> Built:
        return Built(Recommender(inputs.backbone), LossObjective(inputs.make_loss()), inputs.pairs())
