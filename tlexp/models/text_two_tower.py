"""``text_two_tower``: user-ID tower and a text item tower (encoder + adaptor), scored by cosine.

The item side needs no item IDs, so items that never appear in training (new catalogue entries,
a target domain's items) are scored from their text; the user side is an ID embedding, moved by
user key on transfer (overlap users carry their source vector, as in :class:`TwoTower`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlexp.data.scenario import DomainData
from tlexp.models.base import Backbone
from tlexp.models.text_encoder import TextItemTower, item_texts
from tlexp.models.two_tower import mlp


class TextTwoTower(Backbone):
    """User embeddings (+ optional MLP) against text-derived item vectors."""

    name = "text_two_tower"

    def __init__(self, data: DomainData, encoder: Mapping[str, Any] | None = None, adaptor: Any = None,
                 dim: int = 64, tower_layers: list[int] | None = None, dropout: float = 0.0,
                 init_std: float = 0.1, temperature: float = 0.07, name: str = "text_two_tower"):
        super().__init__()
        self.n_users, self.n_items = data.n_users, data.n_items
        self.temperature = float(temperature)
        self.user_emb = nn.Embedding(self.n_users, dim)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        self.user_tower = mlp(dim, list(tower_layers or []), dropout)
        self.dropout = nn.Dropout(dropout)
        self.item_tower = TextItemTower(item_texts(data.item_info), encoder or {}, dim, adaptor)

    def user_repr(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.user_tower(self.dropout(self.user_emb(batch["user"])))

    def item_repr(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_tower(items)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return F.normalize(users, dim=-1) @ F.normalize(items, dim=-1).T / self.temperature

    def score_factors(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(users, dim=-1) / self.temperature, F.normalize(items, dim=-1)

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return super().score_pairs(F.normalize(users, dim=-1), F.normalize(items, dim=-1)) / self.temperature

    def transfer_from(self, source: Backbone, user_map: torch.Tensor, item_map: torch.Tensor,
                      init_new_users: str = "mean") -> list[str]:
        """Item tower and user tower by name; user rows by user key (new users: mean of carried rows)."""
        src = source.state_dict()
        moved = []
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name == "user_emb.weight" or name not in src or src[name].shape != param.shape:
                    continue
                param.copy_(src[name])
                moved.append(name)
            table = src.get("user_emb.weight")
            have = user_map >= 0
            if table is not None and table.shape[1] == self.user_emb.weight.shape[1] and have.any():
                w = self.user_emb.weight
                w[have] = table[user_map[have]]
                if init_new_users == "mean" and (~have).any():
                    w[~have] = table[user_map[have]].mean(0) + torch.randn_like(w[~have]) * 0.01
                moved.append("user_emb.weight")
        return moved

    def tracking_info(self) -> dict[str, dict]:
        return self.item_tower.tracking_info()

    def export(self, directory: Path) -> list[Path]:
        return self.item_tower.export(directory)
