"""Source → target user mappings, and a recommender that represents cold-start users through one.

Used by EMCDR (a mapping fitted after training) and meta-learning (a mapping meta-learnt during
training): a cold-start user — known to the source, never seen in target training — is scored
with ``mapping(source representation)``; everyone else with the target backbone.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from tlexp.core.errors import ConfigError
from tlexp.models.base import Backbone
from tlexp.models.recommender import Recommender, ScoreFn


class Mapping(nn.Module):
    """Source → target user representation map: ``linear`` or ``mlp``.

    When the dimensions agree the map starts as the identity (a linear map with ``W = I``; an MLP
    as a residual ``x + mlp(x)`` whose last layer starts at zero), i.e. as ``finetune``'s plain
    carry-over of the source embedding, which is the natural prior to learn corrections to.
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", hidden: Sequence[int] = (128,),
                 identity_init: bool = True):
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ConfigError(f"mapping kind '{kind}' is unknown; use linear or mlp (strategy.mapping)")
        self.kind = kind
        self.residual = kind == "mlp" and identity_init and in_dim == out_dim
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
            if identity_init and in_dim == out_dim:
                with torch.no_grad():
                    self.net.weight.copy_(torch.eye(in_dim))
                    self.net.bias.zero_()
        else:
            layers: list[nn.Module] = []
            d = in_dim
            for h in hidden:
                layers += [nn.Linear(d, h), nn.Tanh()]
                d = h
            layers.append(nn.Linear(d, out_dim))
            self.net = nn.Sequential(*layers)
            if self.residual:
                nn.init.zeros_(layers[-1].weight)
                nn.init.zeros_(layers[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return x + y if self.residual else y


def source_user_reprs(source_backbone: nn.Module, user_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every target user (``user_map``: their source index, -1 if absent): the source representation
    (zeros if absent) and whether they have one."""
    has = user_map >= 0
    source_backbone.eval()
    with torch.no_grad():
        reps = source_backbone.user_repr({"user": user_map.clamp(min=0)})
    reps = torch.where(has.unsqueeze(1), reps, torch.zeros_like(reps))
    return reps.detach().clone(), has


def fit_mapping(mapping: Mapping, x: torch.Tensor, y: torch.Tensor, epochs: int = 300, lr: float = 1e-2,
                weight_decay: float = 0.0, batch_size: int = 512, val_share: float = 0.1,
                patience: int = 20, seed: int = 0) -> dict[str, float]:
    """Fit ``mapping`` so that ``mapping(x) ≈ y`` (MSE), early-stopped on a held-out share of rows.

    Returns the best validation MSE and the training MSE at that point (both per coordinate).
    """
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    perm = torch.randperm(n, generator=g)
    n_val = int(round(val_share * n)) if n >= 10 else 0
    val, tr = perm[:n_val], perm[n_val:]
    opt = torch.optim.Adam(mapping.parameters(), lr=lr, weight_decay=weight_decay)
    mse = nn.functional.mse_loss
    best, best_state, best_train, bad = float("inf"), copy.deepcopy(mapping.state_dict()), float("nan"), 0
    for _ in range(int(epochs)):
        mapping.train()
        order = tr[torch.randperm(tr.numel(), generator=g)]
        for lo in range(0, order.numel(), batch_size):
            idx = order[lo: lo + batch_size]
            opt.zero_grad()
            mse(mapping(x[idx]), y[idx]).backward()
            opt.step()
        mapping.eval()
        with torch.no_grad():
            score = mse(mapping(x[val]), y[val]).item() if n_val else mse(mapping(x[tr]), y[tr]).item()
        if score < best - 1e-9:
            best, bad, best_state = score, 0, copy.deepcopy(mapping.state_dict())
            with torch.no_grad():
                best_train = mse(mapping(x[tr]), y[tr]).item()
        else:
            bad += 1
            if bad >= patience:
                break
    mapping.load_state_dict(best_state)
    mapping.eval()
    return {"map_val_mse": best, "map_train_mse": best_train, "map_users": float(n)}


class MappedColdUsers(Recommender):
    """Cold-start users (a source representation, no target training rows) are represented by
    ``mapping(source representation)``; everyone else by the target backbone.

    ``mapping`` may be None until there is one (EMCDR fits it after training).
    """

    def __init__(self, backbone: Backbone, src_user: torch.Tensor, has_source: torch.Tensor,
                 has_train: torch.Tensor, mapping: Mapping | None = None):
        super().__init__(backbone)
        self.register_buffer("src_user", src_user, persistent=False)
        self.register_buffer("use_mapped", has_source & ~has_train, persistent=False)
        self.mapping = mapping

    @staticmethod
    def has_train_rows(train_users: np.ndarray, n_users: int) -> torch.Tensor:
        """(n_users,) bool: which users have target training rows."""
        has = torch.zeros(n_users, dtype=torch.bool)
        has[torch.from_numpy(np.unique(train_users))] = True
        return has

    def mapped_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """``mapping(source representation)`` of ``users``."""
        return self.mapping(self.src_user.to(users.device)[users])

    def user_vectors(self, users: torch.Tensor, split: str = "test") -> torch.Tensor:
        z = self.backbone.user_repr(self.eval_batch(users, split))
        if self.mapping is None:
            return z
        mapped = self.use_mapped.to(users.device)[users]
        if mapped.any():
            z = z.clone()
            z[mapped] = self.mapped_vectors(users[mapped]).to(z.dtype)
        return z

    def score_fn(self, split: str = "test") -> ScoreFn:
        items = self.backbone.item_repr()
        return lambda users: self.backbone.score(self.user_vectors(users, split), items)
