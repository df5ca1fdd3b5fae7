"""``itemknn``: item-based kNN with cosine similarity and shrinkage — a strong target-only baseline.

``sim(i, j) = x_i·x_j / (‖x_i‖‖x_j‖ + shrink)`` between the items' columns of the target's training
interactions, each item keeping its ``neighbours`` most similar items; a user scores ``x_u S``.
Sparse, so it fits any catalogue on a CPU. ``neighbours`` and ``shrink`` are chosen on validation
from the configured lists. Cold-start users (no training history) get the items' popularity.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from tlexp.core.errors import ConfigError
from tlexp.evaluation.plan import Candidate
from tlexp.models.item_item import ItemItemRecommender, interaction_matrix, knn_weights
from tlexp.strategies.base import Built, StrategyInputs
from tlexp.strategies.popular import Popular


@dataclass(frozen=True)
class ItemKNNSettings:
    neighbours: tuple[int, ...] = (50, 200)     # candidates, chosen on validation
    shrink: tuple[float, ...] = (0.0, 10.0, 100.0)

    def __post_init__(self) -> None:
        if not self.neighbours or min(self.neighbours) < 1 or not self.shrink or min(self.shrink) < 0:
            raise ConfigError(f"strategy.neighbours={list(self.neighbours)} must be positive and strategy.shrink="
                              f"{list(self.shrink)} non-negative, e.g. neighbours=[100] shrink=[10]")


class ItemKNN(Popular):
    """Cosine item-item neighbourhoods on the target; neighbourhood size and shrinkage chosen on validation."""

    Settings = ItemKNNSettings

    def build(self, inputs: StrategyInputs) -> Built:
        t = inputs.target
        self.x = interaction_matrix(t.train["user"].to_numpy(), t.train["item"].to_numpy(), t.n_users, t.n_items)
        s = self.settings
        model = ItemItemRecommender(inputs.backbone, self.x, knn_weights(self.x, s.neighbours[0], s.shrink[0]))
        return Built(model)

    def candidates(self, built: Built) -> list[Candidate]:
        model: ItemItemRecommender = built.model  # type: ignore[assignment]
        s = self.settings
        return [Candidate(f"neighbours={k},shrink={h:g}",
                          lambda k=k, h=h: model.set_weights(knn_weights(self.x, k, h)),
                          {"itemknn.neighbours": str(k), "itemknn.shrink": f"{h:g}"})
                for k, h in itertools.product(s.neighbours, s.shrink)]
