"""What every strategy shares: the training step on target pairs, the optimizer, and evaluation.

A strategy is a LightningModule around a backbone. Subclasses say how knowledge arrives from
the source (``FineTune``) or that none does (``Scratch``); they all rank with the same
evaluator, so their numbers are comparable by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from torch import nn

from tlexp.evaluation.evaluator import EvalSet, accumulate
from tlexp.models.base import Backbone

if TYPE_CHECKING:
    from tlexp.context import RunContext


class RecStrategy(pl.LightningModule):
    """Train ``backbone`` with ``loss`` on target pairs; validate by full ranking on ``val_set``."""

    requires_source: bool = False
    requires_overlap: bool = False  # needs users present in both domains (e.g. embedding mapping)
    trains: bool = True

    def __init__(self, backbone: Backbone, loss: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, val_set: EvalSet | None = None,
                 ks: tuple[int, ...] = (5, 10, 20), eval_batch_size: int = 1024, name: str = "scratch"):
        super().__init__()
        self.backbone = backbone
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_set = val_set
        self.ks = list(ks)
        self.eval_batch_size = eval_batch_size
        self.strategy_name = name
        self._val_acc = None

    # ----- hooks the pipeline calls, in this order -----
    @classmethod
    def make_backbone(cls, ctx: RunContext) -> Backbone:
        """The model this strategy trains on the target (default: ``cfg.backbone`` on the target)."""
        return ctx.build_backbone()

    def prepare(self, ctx: RunContext) -> None:
        """Before fitting: fetch pretrained models, move weights over. Default: nothing."""

    def make_datamodule(self, ctx: RunContext) -> pl.LightningDataModule:
        """Training data for the target stage. Default: the target's (user, item) training pairs."""
        from tlexp.data.datamodule import datamodule_for

        return datamodule_for(ctx.target, self.backbone, ctx.cfg.batch_size, ctx.cfg.num_workers)

    def after_fit(self, ctx: RunContext) -> None:
        """After the best checkpoint is restored, before final evaluation. Default: nothing."""

    def extra_metrics(self, ctx: RunContext) -> dict[str, float]:
        """Metrics beyond the shared test/val segments (e.g. a teacher's).

        Default: the k-shot cold-start protocol when ``eval.kshot.shots`` is set (else none);
        subclasses that override this should merge in ``self.kshot_metrics(ctx)``.
        """
        return self.kshot_metrics(ctx)

    # ----- k-shot cold-start evaluation (tlexp/evaluation/kshot.py), the same for every strategy -----
    def kshot_shots(self, ctx: RunContext) -> list[int]:
        """The ``k`` values to evaluate: ``eval.kshot.shots`` (empty = no k-shot evaluation)."""
        from tlexp.evaluation.kshot import kshot_config

        return kshot_config(ctx.cfg).shots

    def kshot_adapter(self, ctx: RunContext) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """How this strategy uses a cold user's k support items: ``eval.kshot.adapt_steps`` plain
        gradient steps (``adapt_lr``) on the user representation; 0 steps = no adaptation."""
        from tlexp.evaluation.kshot import gradient_step_adapter, kshot_config

        conf = kshot_config(ctx.cfg)
        return gradient_step_adapter(self.backbone, self.user_vectors, conf.adapt_steps, conf.adapt_lr)

    def user_vectors(self, users: torch.Tensor, split: str = "test") -> torch.Tensor:
        """(B, d) user representations at evaluation time (strategies that represent cold users
        differently, e.g. by a mapped source embedding, override this and :meth:`score_fn`)."""
        return self.backbone.user_repr(self.eval_batch(users, split))

    def kshot_metrics(self, ctx: RunContext) -> dict[str, float]:
        """``test_cold_k<k>/<metric>_at_<K>`` for each configured ``k`` (see tlexp/evaluation/kshot.py)."""
        shots = self.kshot_shots(ctx)
        if not shots or not ctx.target.cold_users.size:
            return {}
        from tlexp.evaluation.kshot import evaluate_kshot

        self.eval()
        return evaluate_kshot(ctx.target, shots, self.kshot_adapter(ctx), self.ks, self.eval_batch_size,
                              device=self.device)

    # ----- scoring, shared by validation here and test in the pipeline -----
    def eval_batch(self, users: torch.Tensor, split: str = "test") -> dict[str, Any]:
        """The batch a backbone needs to represent ``users`` at evaluation time.

        ``split`` says which history a sequential backbone may read: the train sequence for
        ``"val"``, train + valid for ``"test"`` (never the items being predicted).
        """
        return {"user": users, "split": split}

    def score_fn(self, split: str = "test") -> Callable[[torch.Tensor], torch.Tensor]:
        """A function users -> (B, n_items) scores for ``split``, with item representations computed once."""
        items = self.backbone.item_repr()
        return lambda users: self.backbone.score(self.backbone.user_repr(self.eval_batch(users, split)), items)

    # ----- training -----
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self.backbone, batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch["user"].shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.val_set is None:
            return
        world = self.trainer.world_size if self._trainer is not None else 1
        self._val_acc = accumulate(self.val_set, self.score_fn("val"), self.ks, self.eval_batch_size,
                                   rank=self.global_rank, world_size=world, device=self.device)

    def on_validation_epoch_end(self) -> None:
        if self._val_acc is None:
            return
        acc = self._val_acc
        if self.trainer.world_size > 1:  # exact: add the shards' sums, then divide
            acc.load_tensor(self.trainer.strategy.reduce(acc.as_tensor().to(self.device), reduce_op="sum").cpu())
        metrics = acc.result(self.val_set.name)
        shown = self.val_set.name + "/ndcg_at_10"
        self.log_dict({k: v for k, v in metrics.items() if k != shown}, prog_bar=False)
        self.log(shown, metrics[shown], prog_bar=True)
        self._val_acc = None

    # ----- optimisation -----
    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer; subclasses give transferred parameters their own lr."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(self.param_groups())
        if self.scheduler_factory is None:
            return opt
        per_step = getattr(getattr(self.scheduler_factory, "func", self.scheduler_factory),
                           "wants_total_steps", False)
        sched = self.scheduler_factory(opt, total_steps=int(self.trainer.estimated_stepping_batches)) \
            if per_step else self.scheduler_factory(opt)
        interval = "step" if per_step else "epoch"
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}
