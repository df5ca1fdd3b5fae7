"""``adapt``: train on the target while aligning target and source representations (DANN, MMD, CORAL).

The target backbone trains on target pairs as usual (initialised from the source-pretrained
backbone like ``finetune`` by default, ``init=scratch`` for a random start). Alongside each target
batch comes an *unlabeled* source batch: source (user, item) pairs, of which only the
representations are used — the frozen source-pretrained backbone's user and item vectors. The
alignment loss pulls the distribution of the target backbone's user (and/or item) representations
towards the source's:

* ``dann`` — a domain classifier per representation kind behind a gradient reversal layer whose
  coefficient warms up from 0 to 1 over ``warmup_epochs`` (``2/(1+exp(-γp)) - 1``);
* ``mmd`` — multi-kernel maximum mean discrepancy;
* ``coral`` — covariance alignment;
* ``reweight`` — alignment by resampling instead of a loss: the source model is pretrained on source
  pairs drawn in proportion to importance weights ``p_target(x)/p_source(x)`` from a domain classifier
  (tlexp/data/reweight.py; logged as ``pretrain/reweight_*`` and the artifact
  ``pretrain_reweight.json``), and the unlabeled source batches here are drawn by the same weights,
  so ``train/domain_acc`` measures how separable the target is from the *reweighted* source;
* ``none`` — no alignment (the ablation: the same model, loaders and logging).

Nothing here needs shared users, which is the point: with little or no user overlap, finetune's
embedding carry-over has almost nothing to carry, while the source's representation geometry can
still be matched. Logged per epoch: ``train/align_loss``, ``train/rec_loss``,
``train/domain_acc`` (the DANN classifier's accuracy; for mmd/coral/none a probe classifier on
detached representations, so that every method reports how separable the domains are — 0.5 is
chance, i.e. aligned) and ``train/dann_lambda``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader

from tlexp.core.errors import ConfigError
from tlexp.data.datamodule import EvalTrigger, PairDataset, keep_batch
from tlexp.data.reweight import EpochWeightedSampler
from tlexp.data.scenario import Scenario
from tlexp.models.alignment import DomainClassifier, coral, dann_lambda, domain_adversarial_loss, mmd
from tlexp.models.recommender import Recommender
from tlexp.strategies.base import Built, FromSource, Need, SourceModel, StrategyInputs
from tlexp.training.module import LossObjective, TrainingModule
from tlexp.training.transfer import lr_scales, transfer_weights

METHODS = ("dann", "mmd", "coral", "reweight", "none")
# adapt.weight=null takes the method's weight: the best of {0.1, 0.3, 1} on data=low_overlap, seed 0
# (docs/meta_adapt_emcdr.md). The losses live on different scales, so one shared number cannot fit all.
DEFAULT_WEIGHTS = {"dann": 0.3, "mmd": 0.1, "coral": 1.0, "reweight": 0.0, "none": 0.0}
KINDS = ("user", "item")


@dataclass(frozen=True)
class AdaptSettings:
    """``adapt.*`` (conf/strategy/adapt.yaml)."""

    method: str = "dann"
    weight: float | None = None
    align_on: tuple[str, ...] = ("user", "item")
    init: str = "pretrained"
    warmup_epochs: int = 10
    gamma: float = 10.0
    classifier_hidden: tuple[int, ...] = ()
    source_batch_size: int | None = None
    align_batch: int | None = 256

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"adapt.method '{self.method}' is unknown; use one of {list(METHODS)}")
        bad = set(self.align_on) - set(KINDS)
        if bad or not self.align_on:
            raise ConfigError(f"adapt.align_on {list(self.align_on)}: use a non-empty subset of {list(KINDS)}")
        if self.init not in ("pretrained", "scratch"):
            raise ConfigError(f"adapt.init '{self.init}' is unknown; use pretrained or scratch")

    @property
    def weight_used(self) -> float:
        return float(DEFAULT_WEIGHTS[self.method] if self.weight is None else self.weight)


class AdaptDataModule(pl.LightningDataModule):
    """Batches of ``{"target": target pairs, "source": source pairs}``; an epoch is one pass over the target."""

    def __init__(self, target: pl.LightningDataModule, source: PairDataset, source_batch_size: int,
                 source_weights: np.ndarray | None = None, seed: int = 0):
        super().__init__()
        self.target, self.source, self.source_batch_size = target, source, source_batch_size
        self.source_weights, self.seed = source_weights, int(seed)
        self.item_counts = getattr(target, "item_counts", None)

    def train_dataloader(self) -> CombinedLoader:
        if self.source_weights is not None:  # source pairs drawn by their importance weights
            source = DataLoader(self.source, batch_size=self.source_batch_size, collate_fn=keep_batch,
                                sampler=EpochWeightedSampler(self.source_weights, self.seed))
        else:
            source = DataLoader(self.source, batch_size=self.source_batch_size, shuffle=True, collate_fn=keep_batch)
        return CombinedLoader({"target": self.target.train_dataloader(), "source": source}, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        return DataLoader(EvalTrigger(), batch_size=1)


class AdaptObjective(LossObjective):
    """The target loss plus ``weight`` × the alignment loss between source and target representations.

    Holds the frozen source representations and one domain classifier per aligned kind (DANN's
    adversary, or a probe on detached representations that only measures separability).
    """

    def __init__(self, loss: nn.Module, settings: AdaptSettings, src_user: torch.Tensor, src_item: torch.Tensor):
        super().__init__(loss)
        self.method, self.weight, self.align_on = settings.method, settings.weight_used, list(settings.align_on)
        self.warmup_epochs, self.gamma = int(settings.warmup_epochs), float(settings.gamma)
        self.align_batch = int(settings.align_batch) if settings.align_batch else None
        self.register_buffer("src_user", src_user, persistent=False)
        self.register_buffer("src_item", src_item, persistent=False)
        dim = src_user.shape[-1]
        self.classifiers = nn.ModuleDict({kind: DomainClassifier(dim, list(settings.classifier_hidden))
                                          for kind in self.align_on})

    def dann_coeff(self, module: TrainingModule) -> float:
        """The reversal coefficient now: DANN's warm-up over ``warmup_epochs`` epochs of batches."""
        return dann_lambda(module.global_step / max(module.steps_per_epoch * self.warmup_epochs, 1), self.gamma)

    def representations(self, model: Recommender, kind: str, target: dict,
                        source: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(source rows, target rows) of one representation kind for this pair of batches.

        Only the first ``align_batch`` rows of each (shuffled) batch are compared: MMD's kernel
        matrix grows with the square of the rows, and a few hundred rows estimate it well.
        """
        n = self.align_batch
        src = {k: v[:n] for k, v in source.items()} if n else source
        tgt = {k: v[:n] if torch.is_tensor(v) and v.dim() else v for k, v in target.items()} if n else target
        if kind == "user":
            return self.src_user[src["user"]], model.backbone.user_repr(tgt)
        return self.src_item[src["item"]], model.backbone.item_repr(tgt["item"])

    def step(self, module: TrainingModule, batch: dict[str, Any]) -> torch.Tensor:
        model = module.model
        target, source = batch["target"], batch["source"]
        rec = self.loss(model.backbone, target)
        coeff = self.dann_coeff(module) if self.method == "dann" else 0.0
        align = torch.zeros((), device=rec.device)
        probe = torch.zeros((), device=rec.device)
        accs = []
        for kind in self.align_on:
            s, t = self.representations(model, kind, target, source)
            if self.method == "dann":
                loss, acc = domain_adversarial_loss(self.classifiers[kind], s, t, coeff)
                align = align + loss
            else:
                if self.method == "mmd":
                    align = align + mmd(s, t)
                elif self.method == "coral":
                    align = align + coral(s, t, scale_free=True)
                loss, acc = domain_adversarial_loss(self.classifiers[kind], s.detach(), t.detach(), 0.0)
                probe = probe + loss
            accs.append(acc)
            module.log_train(f"train/domain_acc_{kind}", acc, batch_size=t.shape[0])
        total = rec + self.weight * align + probe
        n = int(target["user"].shape[0])
        module.log_train("train/loss", total, batch_size=n, prog_bar=True)
        module.log_train("train/rec_loss", rec, batch_size=n)
        module.log_train("train/align_loss", align, batch_size=n)
        module.log_train("train/domain_acc", torch.stack(accs).mean(), batch_size=n, prog_bar=True)
        module.log_train("train/dann_lambda", coeff, batch_size=n)
        return total


class Adapt(FromSource):
    """Target training plus a source/target representation alignment loss."""

    Settings = AdaptSettings
    settings_node = "adapt"

    def needs(self, scenario: Scenario) -> list[Need]:
        return [SourceModel(reweight=self.settings.method == "reweight")]

    def build(self, inputs: StrategyInputs) -> Built:
        s = self.settings
        pre = inputs.models["source"].backbone
        moved = transfer_weights(inputs.backbone, pre, inputs.user_map(), inputs.item_map(), self.transfer) \
            if s.init == "pretrained" else []
        src = inputs.source
        pre.eval()
        with torch.no_grad():
            try:
                src_user = pre.user_repr({"user": torch.arange(src.n_users), "split": "test"}).detach()
                src_item = pre.item_repr().detach()
            except (KeyError, TypeError) as err:
                raise ConfigError(f"adapt needs per-user source representations from backbone "
                                  f"'{getattr(pre, 'name', '?')}' ({err}); use an ID backbone such as "
                                  "backbone=two_tower") from err
        objective = AdaptObjective(inputs.make_loss(), s, src_user, src_item)
        source_pairs = PairDataset(torch.tensor(src.train["user"].to_numpy()),
                                   torch.tensor(src.train["item"].to_numpy()))
        inputs.log.log_params({"transfer.moved": ",".join(moved), "adapt.source_pairs": len(source_pairs),
                               "adapt.weight_used": objective.weight})
        found = inputs.models["source"].model.reweighting
        data = AdaptDataModule(inputs.pairs(), source_pairs, int(s.source_batch_size or inputs.batch_size),
                               None if found is None else found.weights, inputs.seed)
        return Built(Recommender(inputs.backbone), objective, data, lr_scales(moved, self.transfer.lr_scale))
