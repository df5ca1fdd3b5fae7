"""ID two-tower model (matrix factorisation with optional MLP towers)."""

from __future__ import annotations

import torch
from torch import nn

from tlexp.data.scenario import DomainData
from tlexp.models.base import Backbone


def mlp(dim: int, layers: list[int], dropout: float) -> nn.Module:
    """A tower: Linear-ReLU-Dropout blocks ending back at ``layers[-1]`` (identity if no layers)."""
    if not layers:
        return nn.Identity()
    mods: list[nn.Module] = []
    d = dim
    for i, h in enumerate(layers):
        mods.append(nn.Linear(d, h))
        if i < len(layers) - 1:
            mods += [nn.ReLU(), nn.Dropout(dropout)]
        d = h
    return nn.Sequential(*mods)


class TwoTower(Backbone):
    """User and item ID embeddings, each through its own tower, scored by dot product.

    With ``item_bias`` every item also learns a scalar bias (a learnt popularity prior): the item
    representation gets the bias as one more coordinate and the user representation a constant 1,
    so the score stays a plain dot product — for every loss, the evaluator and every strategy.
    """

    name = "two_tower"

    def __init__(self, data: DomainData, dim: int = 64, tower_layers: list[int] | None = None,
                 dropout: float = 0.0, init_std: float = 0.1, item_bias: bool = False, name: str = "two_tower"):
        super().__init__()
        self.n_users, self.n_items = data.n_users, data.n_items
        self.user_emb = nn.Embedding(self.n_users, dim)
        self.item_emb = nn.Embedding(self.n_items, dim)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.normal_(self.item_emb.weight, std=init_std)
        layers = list(tower_layers or [])
        self.user_tower = mlp(dim, layers, dropout)
        self.item_tower = mlp(dim, layers, dropout)
        self.dropout = nn.Dropout(dropout)
        self.item_bias = nn.Embedding(self.n_items, 1) if item_bias else None
        if self.item_bias is not None:
            nn.init.zeros_(self.item_bias.weight)

    def user_repr(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u = self.user_tower(self.dropout(self.user_emb(batch["user"])))
        return u if self.item_bias is None else torch.cat([u, torch.ones_like(u[:, :1])], -1)

    def item_repr(self, items: torch.Tensor | None = None) -> torch.Tensor:
        e = self.item_emb.weight if items is None else self.item_emb(items)
        v = self.item_tower(self.dropout(e))
        if self.item_bias is None:
            return v
        b = self.item_bias.weight if items is None else self.item_bias(items)
        return torch.cat([v, b.view(*v.shape[:-1], 1)], -1)

    def transfer_from(self, source: Backbone, user_map: torch.Tensor, item_map: torch.Tensor,
                      init_new_users: str = "mean") -> list[str]:
        """Towers by name; embedding rows by user/item key (new users: mean of carried rows or random)."""
        moved = []
        src = source.state_dict()
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.startswith(("user_tower", "item_tower")) and name in src \
                        and src[name].shape == param.shape:
                    param.copy_(src[name])
                    moved.append(name)
            tables = [(self.user_emb, user_map, src["user_emb.weight"]),
                      (self.item_emb, item_map, src["item_emb.weight"])]
            if self.item_bias is not None and "item_bias.weight" in src:
                tables.append((self.item_bias, item_map, src["item_bias.weight"]))
            for table, mapping, src_table in tables:
                if src_table.shape[1] != table.weight.shape[1]:
                    continue
                have = mapping >= 0
                if not have.any():
                    continue
                table.weight[have] = src_table[mapping[have]]
                if table is self.user_emb and init_new_users == "mean" and (~have).any():
                    mean = src_table[mapping[have]].mean(0)
                    noise = torch.randn_like(table.weight[~have]) * 0.01
                    table.weight[~have] = mean + noise
                moved.append(next(f"{n}.weight" for n, m in self.named_children() if m is table))
        return moved
