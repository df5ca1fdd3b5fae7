"""The backbone interface every recommender model implements.

A backbone turns a batch of users into vectors and items into vectors; a strategy never needs
to know more. ID models look users up by index; sequential models (later) read the user's history
from extra batch keys; text models compute item vectors from item text. Scoring is a dot product
unless a backbone overrides :meth:`score`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


class Backbone(nn.Module):
    """Base class: user representations, item representations, scores."""

    name: str = "backbone"
    n_users: int
    n_items: int
    needs_history: bool = False  # True: trains on per-user item sequences (see tlexp.data.datamodule)

    def user_repr(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, d) representations for ``batch['user']`` (and any extra keys the backbone needs)."""
        raise NotImplementedError

    def item_repr(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """(len(items), d) representations; all items when ``items`` is None."""
        raise NotImplementedError

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, N) scores of every user against every item."""
        return users @ items.T

    def score_factors(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, v)`` with ``score(users, items) == u @ v.T``: the score as a plain product, so a server
        can precompute (and compress) the item side once (tlexp/serving/quantize.py). A backbone that
        overrides :meth:`score` overrides this too, or its score is not factorised."""
        return users, items

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B,) or (B, M) scores of aligned user/item representations."""
        if items.dim() == users.dim() + 1:
            return (users.unsqueeze(-2) * items).sum(-1)
        return (users * items).sum(-1)

    def training_pairs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries (P, d), positive items (P,)) a loss trains on.

        ID backbones: one query per (user, item) pair. Sequential backbones override it to return
        one query per sequence position with the next item as its positive, so that every loss
        works with every backbone.
        """
        return self.user_repr(batch), batch["item"]

    def tracking_info(self) -> dict[str, dict]:
        """What a run should record about how this backbone was built: ``{"tags": {}, "metrics": {}}``.

        Text backbones report whether item embeddings came from the cache and how long encoding took.
        """
        return {"tags": {}, "metrics": {}}

    def export(self, directory: Path) -> list[Path]:
        """Write parts of the model worth keeping apart from the checkpoint (e.g. LoRA adapters).

        Returns the written paths; the pipeline logs them as run artifacts. Default: nothing.
        """
        return []

    def transfer_from(self, source: Backbone, user_map: torch.Tensor, item_map: torch.Tensor,
                      init_new_users: str = "mean") -> list[str]:
        """Copy what carries over from a backbone trained on another domain.

        ``user_map[i]`` is the source index of target user ``i`` (-1 if absent); likewise
        ``item_map``. The default copies every parameter whose name and shape match; ID backbones
        override it to move embedding rows by key. Returns the names of parameters that received
        transferred values (they may get their own learning rate).
        """
        own = self.state_dict()
        moved = []
        with torch.no_grad():
            for name, value in source.state_dict().items():
                if name in own and own[name].shape == value.shape:
                    own[name].copy_(value)
                    moved.append(name)
        return moved

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


# Keys of a backbone config that describe how it is trained, not what it is (conf/backbone/*.yaml).
TRAINING_KEYS = ("loss",)


def backbone_name(spec: Mapping[str, Any]) -> str:
    """A backbone config's ``name`` (else its class name)."""
    name = spec.get("name")
    return str(name) if name else str(spec.get("_target_", "backbone")).rsplit(".", 1)[-1]


def build_backbone(spec: Mapping[str, Any], data: Any) -> Backbone:
    """The backbone a config node describes (a Hydra partial of a :class:`Backbone`), sized for ``data``
    (a :class:`tlexp.data.scenario.DomainData`)."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    for key in TRAINING_KEYS:
        node.pop(key, None)
    return instantiate(node)(data=data)


def query_users(batch: dict[str, torch.Tensor], n_queries: int) -> torch.Tensor:
    """The user of each training query of :meth:`Backbone.training_pairs`: the batch's users, or, for
    sequence batches, each non-padding position's user (row-major, target >= 0)."""
    target = batch.get("target")
    if target is not None and target.dim() == 2:
        users = batch["user"].unsqueeze(1).expand_as(target)[target >= 0]
    else:
        users = batch["user"]
    if users.numel() != n_queries:
        raise ValueError(f"cannot match {n_queries} training queries to users ({users.numel()})")
    return users
