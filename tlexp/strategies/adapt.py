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
* ``none`` — no alignment (the ablation: the same model, loaders and logging).

Nothing here needs shared users, which is the point: with little or no user overlap, finetune's
embedding carry-over has almost nothing to carry, while the source's representation geometry can
still be matched. Logged per epoch: ``train/align_loss``, ``train/rec_loss``,
``train/domain_acc`` (the DANN classifier's accuracy; for mmd/coral/none a probe classifier on
detached representations, so that every method reports how separable the domains are — 0.5 is
chance, i.e. aligned) and ``train/dann_lambda``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader

from tlexp.context import RunContext
from tlexp.data.datamodule import EvalTrigger, PairDataset, datamodule_for, keep_batch
from tlexp.errors import ConfigError
from tlexp.strategies.alignment import DomainClassifier, coral, dann_lambda, domain_adversarial_loss, mmd
from tlexp.strategies.finetune import FineTune

METHODS = ("dann", "mmd", "coral", "none")
# adapt.weight=null takes the method's weight: the best of {0.1, 0.3, 1} on data=low_overlap, seed 0
# (docs/meta_adapt_emcdr.md). The losses live on different scales, so one shared number cannot fit all.
DEFAULT_WEIGHTS = {"dann": 0.3, "mmd": 0.1, "coral": 1.0, "none": 0.0}
KINDS = ("user", "item")


class AdaptDataModule(pl.LightningDataModule):
    """Batches of ``{"target": target pairs, "source": source pairs}``; an epoch is one pass over the target."""

    def __init__(self, target: pl.LightningDataModule, source: PairDataset, source_batch_size: int):
        super().__init__()
        self.target, self.source, self.source_batch_size = target, source, source_batch_size
        self.item_counts = getattr(target, "item_counts", None)

    def train_dataloader(self) -> CombinedLoader:
        source = DataLoader(self.source, batch_size=self.source_batch_size, shuffle=True, collate_fn=keep_batch)
        return CombinedLoader({"target": self.target.train_dataloader(), "source": source}, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        return DataLoader(EvalTrigger(), batch_size=1)


class Adapt(FineTune):
    """Target training plus a source/target representation alignment loss."""

    def __init__(self, *args: Any, method: str = "dann", weight: float | None = None,
                 align_on: Sequence[str] = ("user", "item"),
                 init: str = "pretrained", warmup_epochs: int = 10, gamma: float = 10.0,
                 classifier_hidden: Sequence[int] = (), source_batch_size: int | None = None,
                 align_batch: int | None = 256, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if method not in METHODS:
            raise ConfigError(f"adapt.method '{method}' is unknown; use one of {list(METHODS)}")
        bad = set(align_on) - set(KINDS)
        if bad or not align_on:
            raise ConfigError(f"adapt.align_on {list(align_on)}: use a non-empty subset of {list(KINDS)}")
        if init not in ("pretrained", "scratch"):
            raise ConfigError(f"adapt.init '{init}' is unknown; use pretrained or scratch")
        weight = DEFAULT_WEIGHTS[method] if weight is None else weight
        self.method, self.weight, self.align_on, self.init = method, float(weight), list(align_on), init
        self.warmup_epochs, self.gamma = int(warmup_epochs), float(gamma)
        self.classifier_hidden = list(classifier_hidden)
        self.source_batch_size = source_batch_size
        self.align_batch = int(align_batch) if align_batch else None
        self.classifiers = nn.ModuleDict()
        self.source_pairs: PairDataset | None = None
        self.register_buffer("src_user", torch.zeros(0), persistent=False)
        self.register_buffer("src_item", torch.zeros(0), persistent=False)

    def prepare(self, ctx: RunContext) -> None:
        pre = ctx.pretrained()
        ctx.reseed()
        moved = self.transfer(pre.backbone, ctx.user_map(), ctx.item_map()) if self.init == "pretrained" else []
        src = ctx.source
        pre.backbone.eval()
        with torch.no_grad():
            try:
                self.src_user = pre.backbone.user_repr({"user": torch.arange(src.n_users), "split": "test"}).detach()
                self.src_item = pre.backbone.item_repr().detach()
            except (KeyError, TypeError) as err:
                raise ConfigError(f"adapt needs per-user source representations from backbone "
                                  f"'{ctx.cfg.backbone.get('name', '?')}' ({err}); use an ID backbone such as "
                                  "backbone=two_tower") from err
        dim = self.src_user.shape[-1]
        for kind in self.align_on:  # the DANN adversary, or a probe that only measures separability
            self.classifiers[kind] = DomainClassifier(dim, self.classifier_hidden)
        self.source_pairs = PairDataset(torch.tensor(src.train["user"].to_numpy()),
                                        torch.tensor(src.train["item"].to_numpy()))
        ctx.log_params({"transfer.moved": ",".join(moved), "adapt.source_pairs": len(self.source_pairs),
                        "adapt.weight_used": self.weight})

    def make_datamodule(self, ctx: RunContext) -> pl.LightningDataModule:
        target = datamodule_for(ctx.target, self.backbone, ctx.cfg.batch_size, ctx.cfg.num_workers)
        return AdaptDataModule(target, self.source_pairs, int(self.source_batch_size or ctx.cfg.batch_size))

    def dann_coeff(self) -> float:
        """The reversal coefficient now: DANN's warm-up over ``warmup_epochs`` epochs of batches."""
        per_epoch = max(int(self.trainer.num_training_batches), 1) if self._trainer is not None else 1
        return dann_lambda(self.global_step / max(per_epoch * self.warmup_epochs, 1), self.gamma)

    def representations(self, kind: str, target: dict, source: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(source rows, target rows) of one representation kind for this pair of batches.

        Only the first ``align_batch`` rows of each (shuffled) batch are compared: MMD's kernel
        matrix grows with the square of the rows, and a few hundred rows estimate it well.
        """
        n = self.align_batch
        src = {k: v[:n] for k, v in source.items()} if n else source
        tgt = {k: v[:n] if torch.is_tensor(v) and v.dim() else v for k, v in target.items()} if n else target
        if kind == "user":
            return self.src_user[src["user"]], self.backbone.user_repr(tgt)
        return self.src_item[src["item"]], self.backbone.item_repr(tgt["item"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        target, source = batch["target"], batch["source"]
        rec = self.loss(self.backbone, target)
        coeff = self.dann_coeff() if self.method == "dann" else 0.0
        align = torch.zeros((), device=rec.device)
        probe = torch.zeros((), device=rec.device)
        accs = []
        for kind in self.align_on:
            s, t = self.representations(kind, target, source)
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
            self.log(f"train/domain_acc_{kind}", acc, on_step=False, on_epoch=True, batch_size=t.shape[0])
        total = rec + self.weight * align + probe
        n = int(target["user"].shape[0])
        self.log("train/loss", total, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/rec_loss", rec, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/align_loss", align, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/domain_acc", torch.stack(accs).mean(), on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=n)
        self.log("train/dann_lambda", coeff, on_step=False, on_epoch=True, batch_size=n)
        return total
