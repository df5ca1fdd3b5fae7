"""Lightning trainers from the run's settings, and fitting a training module to its best checkpoint.

Shared by source pretraining, teacher training and the target stage, so that all of them train
the same way: same trainer config, early stopping on the configured monitor, best checkpoint
restored afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate

from tlexp.core.signals import last_interrupt
from tlexp.training.callbacks import EpochFaultPoint, QuietThirdParty, RandomState, StageProgressBar
from tlexp.training.module import TrainingModule
from tlexp.training.settings import TrainSettings


def build_trainer(settings: TrainSettings, *, max_epochs: int | None = None, patience: int | None = None,
                  ckpt_dir: str | Path, logger: Any = False, stage: str = "target") -> pl.Trainer:
    """A Trainer from ``trainer`` with early stopping + best and last checkpoints (into ``ckpt_dir``) on
    the monitor, the random state in every checkpoint (exact resume) and a fault point per epoch."""
    tcfg = dict(settings.trainer)
    if max_epochs is not None:
        tcfg["max_epochs"] = max_epochs
    tcfg.setdefault("num_sanity_val_steps", 0)
    es = dict(settings.early_stopping)
    if patience is not None:
        es["patience"] = patience
    ck = dict(settings.checkpoint)
    ck["dirpath"] = str(ckpt_dir)
    ck["monitor"] = settings.monitor
    es["monitor"] = settings.monitor
    callbacks = [instantiate(es), instantiate(ck), RandomState(), EpochFaultPoint(stage), QuietThirdParty()]
    if tcfg.get("enable_progress_bar", True):
        callbacks.append(StageProgressBar(stage))
    return instantiate(tcfg, callbacks=callbacks, logger=logger, default_root_dir=str(ckpt_dir))


def fit_best(trainer: pl.Trainer, module: TrainingModule, datamodule: pl.LightningDataModule,
             ckpt_path: str | Path | None = None) -> dict[str, Any]:
    """Fit (from ``ckpt_path`` when resuming), then load the best checkpoint's weights into ``module``.

    Under ``ddp_spawn`` the fit happens in child processes; the checkpoint file is what survives,
    so the best weights are always read back from it. Under ``ddp`` every process reads it, and
    they wait for each other before anyone may delete it.
    """
    counts = getattr(datamodule, "item_counts", None)
    if counts is not None:
        module.objective.attach(counts)  # losses that correct for the sampling distribution
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except SystemExit:
        # Lightning turns Ctrl-C into sys.exit(1) and SIGTERM into SIGTERMException (a SystemExit):
        # either way the fit was interrupted; say so, as everywhere else
        if trainer.interrupted or trainer.received_sigterm:
            raise last_interrupt() from None
        raise
    ckpt = trainer.checkpoint_callback
    best_path = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
    best_score = getattr(ckpt, "best_model_score", None) if ckpt is not None else None
    best_epoch = 0  # none
    if best_path and Path(best_path).exists():
        ckpt_data = torch.load(best_path, map_location="cpu", weights_only=False)
        module.load_state_dict(ckpt_data["state_dict"])
        best_epoch = int(ckpt_data.get("epoch", -1)) + 1  # counted from 1, as on the progress bar
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return {"best_path": best_path,
            "best_score": float(best_score) if best_score is not None else float("nan"),
            "best_epoch": best_epoch}
