"""The training side of sequence augmentations: a learned mask vector and CL4SRec's contrastive term.

:class:`AugmentObjective` wraps whatever objective the strategy built (scratch, finetune, distill, ...):
within its step the backbone reads ``mask_token`` inputs as the objective's own ``mask`` parameter (a
training-only part, like a distillation projection: the recommender's parameters, and so its
checkpoints and served artifacts, are the same as without augmentation). With ``cl4srec``, batches
carry ``views`` (two augmented token sequences per user, built by the data module) and the step adds
``cl_weight`` x InfoNCE between the two views' user representations, logged as ``train/loss_cl``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tlexp.core.errors import ConfigError
from tlexp.data.augment import AugmentSettings
from tlexp.data.datamodule import trim_padding
from tlexp.models.losses import info_nce
from tlexp.training.module import Objective, TrainingModule


def sequential_part(backbone: nn.Module) -> nn.Module | None:
    """The sequence model inside a backbone (itself, or the ``base`` a wrapper such as fusion adds to)."""
    while backbone is not None and not hasattr(backbone, "masked_with"):
        backbone = getattr(backbone, "base", None)
    return backbone


class AugmentObjective(Objective):
    """``inner``'s loss with the mask vector lent to the model, plus the contrastive term (cl4srec)."""

    def __init__(self, inner: Objective, backbone: nn.Module, settings: AugmentSettings):
        super().__init__()
        seq = sequential_part(backbone)
        if seq is None:
            raise ConfigError(f"augment={settings.name} needs a sequence backbone (sasrec, text_seq); use augment=none")
        self.inner, self.settings = inner, settings
        self.mask = nn.Parameter(torch.randn(seq.dim) * 0.02) if settings.uses_mask else None

    def attach(self, item_counts: torch.Tensor) -> None:
        self.inner.attach(item_counts)

    def step(self, module: TrainingModule, batch: Any) -> torch.Tensor:
        seq = sequential_part(module.model.backbone)
        views = batch.pop("views", None) if isinstance(batch, dict) else None
        with seq.masked_with(self.mask):
            loss = self.inner.step(module, batch)
            if views is not None:
                z = [self.view_repr(seq, views[:, i]) for i in range(2)]
                cl = info_nce(z[0], z[1], self.settings.cl_temperature)
                module.log_train("train/loss_cl", cl.detach(), batch_size=views.shape[0])
                loss = loss + self.settings.cl_weight * cl
        return loss

    @staticmethod
    def view_repr(seq: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """(B, d): the model's user representation of each view (its output at the last position)."""
        tokens = trim_padding({"seq": tokens}, seq.pad_token)["seq"]
        return seq.sequence_repr(tokens)[:, -1]


def with_augmentation(objective: Objective | None, backbone: nn.Module, settings: AugmentSettings) -> Objective | None:
    """``objective`` wrapped for a sequence augmentation (unchanged for none / interaction_dropout)."""
    if objective is None or not (settings.active and settings.on_sequences):
        return objective
    return AugmentObjective(objective, backbone, settings)
