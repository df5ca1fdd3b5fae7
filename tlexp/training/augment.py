"""The training side of sequence augmentations: a learned mask vector and CL4SRec's contrastive term.

:class:`AugmentObjective` wraps whatever objective the strategy built (scratch, finetune, distill, ...):
within its step the backbone reads ``mask_token`` inputs as the objective's own ``mask`` parameter (a
training-only part, like a distillation projection: the recommender's parameters, and so its
checkpoints and served artifacts, are the same as without augmentation). With ``cl4srec``, batches
carry ``views`` (two augmented token sequences per user, built by the data module) and the step adds
``cl_weight`` x InfoNCE between the two views' user representations, logged as ``train/loss_cl``.

:class:`TextDropoutObjective` (``augment=text_dropout``) encodes ``variants`` word-dropped versions of
the item texts once (each through the frozen-embedding cache, keyed on its texts) and, in each epoch,
reads every item in training through one of its versions drawn from (seed, epoch); validation, test and
serving read the clean texts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tlexp.core.errors import ConfigError
from tlexp.data.augment import AugmentSettings, generator_for, word_dropout
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
        if settings.name == "mask" and any(hasattr(m, "masked_with") for m in inner.modules()):
            raise ConfigError("augment=mask feeds masked sequences to the strategy's sequence teacher too, which has "
                              "no mask vector; use augment=crop, reorder or cl4srec (its loss reads plain sequences)")
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


def item_tower(backbone: nn.Module) -> nn.Module | None:
    """The text item tower of a backbone (or of the ``base`` a wrapper adds to); None if it has none."""
    while backbone is not None and not hasattr(backbone, "item_tower"):
        backbone = getattr(backbone, "base", None)
    return getattr(backbone, "item_tower", None) if backbone is not None else None


class TextDropoutObjective(Objective):
    """``inner``'s loss with items read through word-dropped versions of their texts (training only)."""

    def __init__(self, inner: Objective, backbone: nn.Module, settings: AugmentSettings, seed: int = 0):
        super().__init__()
        tower = item_tower(backbone)
        if tower is None or not hasattr(tower, "embed_variant"):
            raise ConfigError("augment=text_dropout drops words of item texts: it needs a text backbone "
                              "(text_seq, text_two_tower); use augment=none")
        if getattr(tower, "encoder", None) is not None:
            raise ConfigError(f"augment=text_dropout needs frozen encoder embeddings; backbone.encoder.mode="
                              f"{tower.mode} encodes while training: use backbone.encoder.mode=frozen")
        self.inner, self.settings, self.seed = inner, settings, int(seed)
        tables, self.cache = [], []
        for k in range(settings.variants):
            emb, info = tower.embed_variant(word_dropout(tower.texts, settings.p, self.seed, k))
            tables.append(emb.float().cpu())
            self.cache.append(info["cache"])
        self.__dict__["_tables"] = torch.stack(tables)  # (variants, n_items, d): data, not checkpointed
        self._epoch_table: tuple[int, torch.Tensor] | None = None

    def attach(self, item_counts: torch.Tensor) -> None:
        self.inner.attach(item_counts)

    def table(self, epoch: int, like: torch.Tensor) -> torch.Tensor:
        """This epoch's text table: each item's version drawn from (seed, epoch)."""
        if self._epoch_table is None or self._epoch_table[0] != epoch:
            tables = self.__dict__["_tables"]
            pick = torch.randint(0, tables.shape[0], (tables.shape[1],), generator=generator_for(self.seed, epoch))
            chosen = tables[pick, torch.arange(tables.shape[1])]
            self._epoch_table = (epoch, chosen.to(device=like.device, dtype=like.dtype))
        return self._epoch_table[1]

    def step(self, module: TrainingModule, batch: Any) -> torch.Tensor:
        tower = item_tower(module.model.backbone)
        with tower.reading(self.table(int(module.current_epoch), tower.text_emb)):
            return self.inner.step(module, batch)


def with_augmentation(objective: Objective | None, backbone: nn.Module, settings: AugmentSettings,
                      seed: int = 0) -> Objective | None:
    """``objective`` wrapped for a sequence or text augmentation (unchanged for none / interaction_dropout)."""
    if objective is None or not settings.active:
        return objective
    if settings.on_texts:
        return TextDropoutObjective(objective, backbone, settings, seed)
    if settings.on_sequences:
        return AugmentObjective(objective, backbone, settings)
    return objective
