"""``emcdr``: embedding and mapping (Man et al., IJCAI 2017), the classic cross-domain cold-start baseline.

1. a source backbone is trained on the source domain (the cached pretraining every transfer
   strategy shares) and a target backbone on the target domain, independently (the Lightning fit,
   exactly like ``scratch``);
2. a mapping ``f`` (linear or MLP, :class:`Mapping`) is fitted on the **overlap users that have
   target training data**: ``f(source representation) ≈ target representation`` (MSE), with a
   held-out tenth of them for early stopping;
3. cold-start users — overlap users with no target history — are scored with their mapped source
   representation ``f(s_u)``; everyone else with the target backbone as trained.

Mapping happens at the level of user *representations* (``Backbone.user_repr``), so it works for
any backbone whose users have a source representation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tlexp.context import RunContext
from tlexp.errors import ConfigError
from tlexp.strategies.base import RecStrategy


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


def source_user_reprs(ctx: RunContext, source_backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """For every target user: their source representation (zeros if absent) and whether they have one."""
    user_map = ctx.user_map()
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


class MappedColdUsers:
    """Mixin: cold-start users (known to the source, unseen in target training) are represented by
    ``self.mapping`` of their source representation; everyone else by the target backbone.

    The host registers the buffers ``src_user`` (n_users, d_src) and ``use_mapped`` (n_users,) and
    sets ``mapping`` (None until there is one) — see :meth:`init_source_users`.
    """

    def init_source_users(self, ctx: RunContext, source_backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill ``src_user``/``use_mapped``; returns (has a source representation, has target training rows)."""
        self.src_user, has_src = source_user_reprs(ctx, source_backbone)
        has_train = torch.zeros(ctx.target.n_users, dtype=torch.bool)
        has_train[torch.from_numpy(np.unique(ctx.target.train["user"].to_numpy()))] = True
        self.use_mapped = has_src & ~has_train
        return has_src, has_train

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

    def score_fn(self, split: str = "test") -> Callable[[torch.Tensor], torch.Tensor]:
        items = self.backbone.item_repr()
        return lambda users: self.backbone.score(self.user_vectors(users, split), items)


class EMCDR(MappedColdUsers, RecStrategy):
    """Target backbone trained alone; cold-start users scored with mapped source representations."""

    requires_source = True

    def __init__(self, *args: Any, mapping: str = "linear", hidden: Sequence[int] = (128,),
                 map_epochs: int = 300, map_lr: float = 1e-2, map_weight_decay: float = 0.0,
                 map_batch_size: int = 512, map_val_share: float = 0.1, map_patience: int = 20, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.mapping_kind, self.hidden = mapping, list(hidden)
        self.map_cfg = {"epochs": map_epochs, "lr": map_lr, "weight_decay": map_weight_decay,
                        "batch_size": map_batch_size, "val_share": map_val_share, "patience": map_patience}
        self.mapping: Mapping | None = None
        self.register_buffer("src_user", torch.zeros(0), persistent=False)
        self.register_buffer("use_mapped", torch.zeros(0, dtype=torch.bool), persistent=False)

    def prepare(self, ctx: RunContext) -> None:
        from lightning.pytorch.utilities.seed import isolate_rng

        # The random state is left as it was (pretraining may or may not run): the target model
        # then trains exactly as ``scratch`` does with the same seed, which is EMCDR's definition.
        with isolate_rng():
            pre = ctx.pretrained()
        has_src, has_train = self.init_source_users(ctx, pre.backbone)
        self.train_overlap = torch.nonzero(has_src & has_train).squeeze(1)
        if self.train_overlap.numel() < 2:
            raise ConfigError(f"emcdr needs overlap users with target training data to learn its mapping; "
                              f"{ctx.source.name} -> {ctx.target.name} has {self.train_overlap.numel()} — "
                              "pick a scenario with shared users (tlexp data describe)")
        ctx.log_params({"emcdr.train_overlap_users": int(self.train_overlap.numel()),
                        "emcdr.mapped_users": int(self.use_mapped.sum())})

    def after_fit(self, ctx: RunContext) -> None:
        """Learn the mapping on overlap training users, from the best target backbone."""
        self.backbone.eval()
        users = self.train_overlap.to(self.device)
        with torch.no_grad():
            y = self.backbone.user_repr(self.eval_batch(users, "test")).detach().cpu()
        x = self.src_user[self.train_overlap.to(self.src_user.device)].cpu()
        ctx.reseed(1)
        mapping = Mapping(x.shape[1], y.shape[1], self.mapping_kind, self.hidden)
        stats = fit_mapping(mapping, x, y, seed=int(ctx.cfg.seed), **self.map_cfg)
        self.mapping = mapping.to(self.device)
        ctx.log_metrics({f"emcdr/{k}": v for k, v in stats.items()})
