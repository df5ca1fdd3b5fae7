"""The one training loop: a LightningModule around a recommender and a pluggable objective.

Source pretraining, a distillation teacher's training and every strategy's target training all
run through :class:`TrainingModule`; what differs between them is data (the model, the
:class:`Objective`, learning-rate scales per parameter), never the loop. Validation ranks all
items for the validation users once per epoch (the run's evaluation plan hands over what to
evaluate), and logs ``<split>/<metric>_at_<k>`` so that early stopping and checkpointing can
watch the configured monitor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from torch import nn

from tlexp.core.errors import TlexpError
from tlexp.evaluation.evaluator import EvalSet, accumulate
from tlexp.models.recommender import Recommender
from tlexp.training.regularize import Regularizer

if TYPE_CHECKING:
    from tlexp.training.privacy import PrivateTraining

# A recommendation loss lives around 0.1-10 (a softmax over thousands of items: ~ln(n)); a loss beyond
# this, or not finite, means training diverged: the run stops instead of reporting garbage.
MAX_LOSS = 1e6


class TrainingDiverged(TlexpError):
    """The training loss became non-finite or exploded."""


class Objective(nn.Module):
    """How a training batch becomes a loss. Holds training-only parts (distillation projections,
    domain classifiers, a frozen teacher) so that the recommender keeps only what is served."""

    def step(self, module: TrainingModule, batch: Any) -> torch.Tensor:
        """The loss of one batch; log with ``module.log_train``. ``module.model`` is the recommender."""
        raise NotImplementedError

    def attach(self, item_counts: torch.Tensor) -> None:
        """Receive the training data's item counts (losses that correct for the sampling distribution)."""


class LossObjective(Objective):
    """The recommendation loss on the recommender's backbone: pretraining, scratch, finetune, EMCDR.

    Objectives that add terms to a recommendation loss (distillation, meta-learning, adaptation)
    subclass it and override :meth:`step`; the loss receives the item counts through :meth:`attach`.
    """

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def attach(self, item_counts: torch.Tensor) -> None:
        attach = getattr(self.loss, "attach", None)
        if attach is not None:
            attach(item_counts)

    def step(self, module: TrainingModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.loss(module.model.backbone, batch)
        module.log_train("train/loss", loss, batch_size=batch["user"].shape[0], prog_bar=True)
        return loss


@dataclass
class Validation:
    """What a training run validates on after each epoch (from the run's evaluation plan)."""

    eval_set: EvalSet
    ks: list[int]
    batch_size: int = 1024
    shown: str = "val/ndcg_at_10"  # the monitor: the value on the progress bar
    # more validation keys from the ranking metrics and the model (the plan's k-shot and combined keys)
    extra: Callable[[Recommender, dict[str, float]], dict[str, float]] | None = None


@dataclass
class Optimisation:
    """How parameters are optimised: an optimizer factory (a Hydra partial taking param groups), an
    optional scheduler factory, and learning-rate multipliers for named parameters of the model.

    ``lr_scales`` maps names in ``model.named_parameters()`` to a multiplier of the base learning
    rate (transferred weights learn slower, meta-learned ones at their own rate); everything else,
    the objective's parameters included, learns at the base rate. Frozen parameters
    (``requires_grad=False``) are left out.
    """

    optimizer: Callable[..., torch.optim.Optimizer]
    scheduler: Callable[..., Any] | None = None
    lr_scales: Mapping[str, float] = field(default_factory=dict)

    @property
    def base_lr(self) -> float:
        return float(getattr(self.optimizer, "keywords", {}).get("lr", 1e-3))


class EpochMeans:
    """Batch-size-weighted epoch means of training values, computed as Lightning computes its own
    ``on_epoch`` means (float32 running sum of ``value * batch_size``, an integer count; summed over
    processes, then divided), so that handing over the result once changes no bit of it."""

    def __init__(self) -> None:
        self._sums: dict[str, list] = {}  # name -> [sum, count, prog_bar]

    @staticmethod
    def usable(trainer: pl.Trainer) -> bool:
        """Whether the epoch's last batch is known in advance (else values go to Lightning per batch)."""
        return math.isfinite(trainer.num_training_batches) and trainer.max_steps in (-1, None)

    @property
    def pending(self) -> bool:
        return bool(self._sums)

    def add(self, name: str, value: torch.Tensor | float, batch_size: int, prog_bar: bool) -> None:
        v = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.get_default_dtype())
        if v.numel() != 1:
            raise ValueError(f"log_train({name!r}) needs one number, got a tensor of shape {tuple(v.shape)}")
        v = v.squeeze()
        if v.dtype not in (torch.float32, torch.float64):
            v = v.to(torch.get_default_dtype())
        entry = self._sums.get(name)
        if entry is None:
            entry = self._sums[name] = [torch.tensor(0.0, dtype=torch.get_default_dtype(), device=v.device),
                                        torch.tensor(0, device=v.device), prog_bar]
        entry[0] = entry[0] + v * batch_size
        entry[1] = entry[1] + batch_size

    def flush(self, reduce: Callable[..., torch.Tensor] | None = None) -> list[tuple[str, torch.Tensor, bool]]:
        """``(name, mean, prog_bar)`` for every value of the epoch, summed over processes by ``reduce``."""
        out = []
        for name, (total, count, prog_bar) in self._sums.items():
            if reduce is not None:
                total, count = reduce(total.clone(), reduce_op="sum"), reduce(count.clone(), reduce_op="sum")
            out.append((name, total / count, prog_bar))
        self._sums = {}
        return out


class TrainingModule(pl.LightningModule):
    """Train ``model`` by ``objective``; validate by full ranking; optimise as ``optimisation`` says."""

    def __init__(self, model: Recommender, objective: Objective, optimisation: Optimisation,
                 validation: Validation | None = None, regularizer: Regularizer | None = None,
                 privacy: PrivateTraining | None = None):
        super().__init__()
        self.model = model
        self.objective = objective
        self.optimisation = optimisation
        self.validation = validation
        self.regularizer = regularizer
        # DP-SGD (training/privacy.py): per-example gradients, clipped and noised by Opacus's optimizer,
        # so this loop steps the optimizer itself
        self.privacy = privacy
        self.automatic_optimization = privacy is None
        self._val_acc = None
        self._epoch_means = EpochMeans()

    # ----- training -----
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.privacy is not None:
            loss, n = self.privacy.step(self.model, self.objective, self.optimizers(), batch)
            self._check_finite(loss)
            self.log_train("train/loss", loss, batch_size=max(n, 1), prog_bar=True)
            return loss
        loss = self.objective.step(self, batch)
        if self.regularizer is not None:  # named terms (L2-SP, L1, L2), logged unweighted
            terms = self.regularizer.terms(self.model)
            for name, term in terms.items():
                self.log_train(f"train/reg_{name}", term.detach(), 1)
            loss = loss + self.regularizer.weighted(terms)
        self._check_finite(loss)
        return loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if not math.isfinite(value) or abs(value) > MAX_LOSS:
            raise TrainingDiverged(
                f"the training loss is {value:.3g} at epoch {self.current_epoch}, step {self.global_step}: training "
                f"diverged (limit {MAX_LOSS:g}); lower optimizer.lr (now {self.optimisation.base_lr:g}) or check the "
                "loss settings — nothing from this run was cached")

    def on_train_epoch_end(self) -> None:
        if self.privacy is not None:  # the privacy spent so far, per epoch
            self.log("privacy/epsilon", self.privacy.epsilon(), on_step=False, on_epoch=True)

    def log_train(self, name: str, value: torch.Tensor | float, batch_size: int, prog_bar: bool = False) -> None:
        """An epoch-level training value (mean over the epoch's batches, weighted by ``batch_size``),
        averaged over data-parallel processes.

        Lightning's ``self.log`` costs ~1.5 ms a call here (it moves its whole result collection
        each time): a tenth of a small model's step. So the epoch's weighted sums are kept in
        :class:`EpochMeans` and handed to Lightning once, after the epoch's last batch — the same
        float32 arithmetic as Lightning's mean reduction, so the logged values are bit-identical.
        Where the last batch cannot be known (an iterable loader, ``max_steps``), every value goes
        to ``self.log`` as before.
        """
        if self._trainer is None or not self._epoch_means.usable(self.trainer):
            self.log(name, value, on_step=False, on_epoch=True, prog_bar=prog_bar, batch_size=int(batch_size),
                     sync_dist=True)
            return
        self._epoch_means.add(name, value, int(batch_size), prog_bar)

    def on_train_epoch_start(self) -> None:
        self._epoch_means = EpochMeans()  # nothing carried over from an epoch cut short

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._epoch_means.pending and batch_idx + 1 >= self.trainer.num_training_batches:
            reduce = self.trainer.strategy.reduce if self.trainer.world_size > 1 else None
            for name, mean, prog_bar in self._epoch_means.flush(reduce):
                # already averaged over processes: "max" of equal values keeps it exact, where a mean
                # of them might not be
                self.log(name, mean, on_step=False, on_epoch=True, prog_bar=prog_bar, batch_size=1,
                         sync_dist=True, reduce_fx="max")

    @property
    def steps_per_epoch(self) -> int:
        return max(int(self.trainer.num_training_batches), 1) if self._trainer is not None else 1

    # ----- validation: every process ranks its shard of users, the sums are added exactly -----
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        v = self.validation
        if v is None:
            return
        world = self.trainer.world_size if self._trainer is not None else 1
        self._val_acc = accumulate(v.eval_set, self.model.score_fn("val"), v.ks, v.batch_size,
                                   rank=self.global_rank, world_size=world, device=self.device)

    def on_validation_epoch_end(self) -> None:
        if self._val_acc is None:
            return
        acc = self._val_acc
        if self.trainer.world_size > 1:  # exact: add the shards' sums, then divide
            acc.load_tensor(self.trainer.strategy.reduce(acc.as_tensor().to(self.device), reduce_op="sum").cpu())
        metrics = acc.result(self.validation.eval_set.name)
        if self.validation.extra is not None:
            metrics.update(self.validation.extra(self.model, metrics))
        shown = self.validation.shown
        rest = {k: v for k, v in metrics.items() if k != shown}
        if shown in metrics and self._log_directly(rest):
            pass
        else:
            self.log_dict(rest, prog_bar=False)
        if shown in metrics:
            self.log(shown, metrics[shown], prog_bar=True)
        self._val_acc = None

    def _log_directly(self, metrics: dict[str, float]) -> bool:
        """Hand the validation metrics nothing watches straight to the run's loggers; False if it can't.

        ``self.log`` costs ~1.5 ms a call and grows with the number of keys already logged (it walks
        its whole result collection), and a validation epoch has ~80 keys: ~0.1 s an epoch for values
        that only the MLflow run needs. Only the monitor (early stopping, checkpoints, the progress
        bar) goes through ``self.log``. What Lightning would have sent is reproduced exactly: the
        float32 value of each number (``self.log`` makes a float32 tensor of it, and a mean over one
        value is that value) at Lightning's step for epoch-level metrics (``_batches_that_stepped``).
        Not during the sanity check (Lightning logs nothing then) and not with tensor values.
        """
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking or not all(isinstance(v, float) for v in metrics.values()):
            return False
        if not trainer.loggers or trainer.global_rank != 0:
            return True  # nothing would be recorded: Lightning's loggers log on rank 0 only
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        values = torch.tensor(list(metrics.values()), dtype=torch.float32).tolist()
        for logger in trainer.loggers:
            logger.log_metrics(dict(zip(metrics, values, strict=True)), step=step)
        return True

    # ----- optimisation -----
    def param_groups(self) -> list[dict[str, Any]]:
        """One group at the base learning rate, then one per distinct multiplier in ``lr_scales``."""
        scales = self.optimisation.lr_scales
        base_lr = self.optimisation.base_lr
        by_scale: dict[float, list[nn.Parameter]] = {}
        base: list[nn.Parameter] = []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (by_scale.setdefault(float(scales[name]), []) if name in scales else base).append(p)
        base += [p for p in self.objective.parameters() if p.requires_grad]
        return [{"params": base}] + [{"params": ps, "lr": base_lr * s} for s, ps in by_scale.items()]

    def configure_optimizers(self) -> Any:
        opt = self.optimisation.optimizer(self.param_groups())
        if self.privacy is not None:
            opt = self.privacy.optimizer(opt)
        factory = self.optimisation.scheduler
        if factory is None:
            return opt
        per_step = getattr(getattr(factory, "func", factory), "wants_total_steps", False)
        sched = factory(opt, total_steps=int(self.trainer.estimated_stepping_batches)) if per_step else factory(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step" if per_step else "epoch"}}
