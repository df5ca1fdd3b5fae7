"""``finetune``: start from the source-pretrained backbone, then train on the target.

Overlap users carry their source user embedding over (matched by the global user key), towers
transfer by name, target items start fresh (unless the domains share item keys). Cold-start
users have no target training rows, so their carried embedding is all the model knows of them —
which is exactly what the cold-start segment measures.
"""

from __future__ import annotations

from typing import Any

import torch

from tlexp.context import RunContext
from tlexp.models.base import Backbone
from tlexp.strategies.base import RecStrategy


class FineTune(RecStrategy):
    """Transfer from a pretrained source backbone, optionally freezing parts and scaling their lr."""

    requires_source = True

    def __init__(self, *args: Any, carry_user_embeddings: bool = True, init_new_users: str = "mean",
                 freeze: list[str] | None = None, transfer_lr_scale: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.carry_user_embeddings = carry_user_embeddings
        self.init_new_users = init_new_users
        self.freeze = list(freeze or [])
        self.transfer_lr_scale = transfer_lr_scale
        self.transferred: list[str] = []

    def prepare(self, ctx: RunContext) -> None:
        pre = ctx.pretrained()
        ctx.reseed()  # cache hit or miss: the same random state from here on
        moved = self.transfer(pre.backbone, ctx.user_map(), ctx.item_map())
        ctx.log_params({"transfer.moved": ",".join(moved)})

    def transfer(self, source: Backbone, user_map: torch.Tensor, item_map: torch.Tensor) -> list[str]:
        """Copy what carries over from ``source``; freeze what the config says. Returns moved names."""
        if not self.carry_user_embeddings:
            user_map = torch.full_like(user_map, -1)
        self.transferred = self.backbone.transfer_from(source, user_map, item_map, self.init_new_users)
        for name, p in self.backbone.named_parameters():
            if any(name.startswith(prefix) for prefix in self.freeze):
                p.requires_grad_(False)
        return self.transferred

    def param_groups(self) -> list[dict[str, Any]]:
        moved, fresh = [], []
        for name, p in self.backbone.named_parameters():
            if p.requires_grad:
                (moved if name in self.transferred else fresh).append(p)
        rest = [p for n, p in self.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
        groups = [{"params": fresh + rest}]
        if moved:
            base_lr = getattr(self.optimizer_factory, "keywords", {}).get("lr", 1e-3)
            groups.append({"params": moved, "lr": base_lr * self.transfer_lr_scale})
        return groups
