"""``ease``: EASE (Steck, WWW 2019), a closed-form item-item model — a strong target-only baseline.

``B = I - P diag(1/diag(P))``, ``P = (XᵀX + λI)⁻¹`` from the target's training interactions; a user
scores ``x_u B``. No training loop, no source: a non-transfer baseline that every transfer strategy
is compared against. The regularisation ``λ`` is chosen on validation from ``strategy.reg`` (each
value is one dense ``n_items²`` solve: catalogues above ``strategy.max_items`` are refused, use
``itemknn`` there). Cold-start users (no training history) get the items' popularity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlexp.core.errors import ConfigError
from tlexp.evaluation.plan import Candidate
from tlexp.models.item_item import ItemItemRecommender, ease_weights, interaction_matrix
from tlexp.strategies.base import Built, StrategyInputs
from tlexp.strategies.popular import Popular


@dataclass(frozen=True)
class EASESettings:
    reg: tuple[float, ...] = (50.0, 200.0, 500.0, 1000.0)  # λ candidates, chosen on validation
    max_items: int = 25000                                  # refuse larger catalogues (dense n_items² solve)

    def __post_init__(self) -> None:
        if not self.reg or min(self.reg) <= 0:
            raise ConfigError(f"strategy.reg={list(self.reg)} must be positive regularisation values, e.g. [200,500]")


class EASE(Popular):
    """Closed-form item-item regression on the target; λ chosen on validation."""

    Settings = EASESettings

    def build(self, inputs: StrategyInputs) -> Built:
        t = inputs.target
        if t.n_items > self.settings.max_items:
            raise ConfigError(f"strategy=ease: the target '{t.name}' has {t.n_items} items, above strategy.max_items="
                              f"{self.settings.max_items} (EASE solves a dense n_items x n_items system); use "
                              "strategy=itemknn, or raise strategy.max_items if memory allows")
        self.x = interaction_matrix(t.train["user"].to_numpy(), t.train["item"].to_numpy(), t.n_users, t.n_items)
        model = ItemItemRecommender(inputs.backbone, self.x, np.zeros((t.n_items, t.n_items), dtype=np.float32))
        self.solved: dict[float, np.ndarray] = {}
        inputs.log.log_params({"ease.reg_candidates": ",".join(f"{r:g}" for r in self.settings.reg)})
        return Built(model)

    def candidates(self, built: Built) -> list[Candidate]:
        model: ItemItemRecommender = built.model  # type: ignore[assignment]

        def use(reg: float) -> None:
            if reg not in self.solved:
                self.solved = {reg: ease_weights(self.x, reg)}  # keep one dense matrix at a time
            model.set_weights(self.solved[reg])

        return [Candidate(f"reg={r:g}", lambda r=r: use(r), {"ease.reg": f"{r:g}"}) for r in self.settings.reg]
