"""How a backbone takes over what a model trained on another domain learnt (the ``transfer`` group).

Shared by every path that starts from a source model — the ``finetune`` strategy, distillation's
student and teacher, fusion, meta-learning, domain adaptation — so that "transfer" means the same
thing everywhere: weights move by name (embedding rows by user/item key, see
``Backbone.transfer_from``), overlap users carry their source embedding unless told not to,
frozen prefixes stop learning, and whatever moved learns at ``lr_scale`` times the base rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tlexp.core.errors import ConfigError
from tlexp.models.base import Backbone

NEW_USER_INITS = ("mean", "random")


@dataclass(frozen=True)
class TransferSettings:
    """``conf/transfer/default.yaml``."""

    carry_user_embeddings: bool = True   # overlap users start from their source embedding
    init_new_users: str = "mean"         # target-only users: mean of the carried rows (+ noise) or random init
    freeze: tuple[str, ...] = field(default_factory=tuple)  # parameter-name prefixes that stop learning
    lr_scale: float = 0.1                # learning-rate multiplier of transferred parameters

    def __post_init__(self) -> None:
        if self.init_new_users not in NEW_USER_INITS:
            raise ConfigError(f"transfer.init_new_users='{self.init_new_users}' is unknown; use one of "
                              f"{list(NEW_USER_INITS)} (conf/transfer/default.yaml)")
        if self.lr_scale < 0:
            raise ConfigError(f"transfer.lr_scale={self.lr_scale} must be >= 0 (conf/transfer/default.yaml)")
        object.__setattr__(self, "freeze", tuple(str(f) for f in self.freeze))


def transfer_weights(backbone: Backbone, source: Backbone, user_map: torch.Tensor, item_map: torch.Tensor,
                     settings: TransferSettings) -> list[str]:
    """Copy what carries over from ``source`` into ``backbone`` and freeze what ``settings`` says.

    ``user_map[i]``/``item_map[j]``: the source index of target user ``i`` / item ``j`` (-1: absent).
    Returns the names of the parameters that received source values (they learn at ``lr_scale``).
    """
    if not settings.carry_user_embeddings:
        user_map = torch.full_like(user_map, -1)
    moved = backbone.transfer_from(source, user_map, item_map, settings.init_new_users)
    for name, p in backbone.named_parameters():
        if any(name.startswith(prefix) for prefix in settings.freeze):
            p.requires_grad_(False)
    return moved


def lr_scales(moved: list[str], scale: float, prefix: str = "backbone.") -> dict[str, float]:
    """``{prefix + name: scale}`` for the moved parameters (names as the recommender sees them)."""
    return {f"{prefix}{name}": float(scale) for name in moved}
