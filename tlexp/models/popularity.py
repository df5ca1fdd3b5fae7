"""Popularity "backbone": every user gets the same scores, the items' training counts."""

from __future__ import annotations

import numpy as np
import torch

from tlexp.models.base import Backbone


class Popularity(Backbone):
    """Scores = number of training interactions of the item. No parameters, no training."""

    name = "popular"

    def __init__(self, n_users: int, item_counts: np.ndarray):
        super().__init__()
        self.n_users, self.n_items = n_users, int(item_counts.size)
        self.register_buffer("counts", torch.as_tensor(item_counts, dtype=torch.float32).unsqueeze(1))

    def user_repr(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.ones(batch["user"].shape[0], 1, device=self.counts.device)

    def item_repr(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.counts if items is None else self.counts[items]
