"""Building Lightning trainers from config, and fitting a strategy to its best checkpoint.

Shared by source pretraining and the target stage so that both train the same way (same
trainer config, early stopping on the validation ndcg, best checkpoint restored afterwards).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tlexp.data.datamodule import RecDataModule
from tlexp.strategies.base import RecStrategy


def build_trainer(cfg: DictConfig, *, max_epochs: int | None = None, patience: int | None = None,
                  ckpt_dir: str | Path, logger: Any = False) -> pl.Trainer:
    """A Trainer from ``cfg.trainer`` with early stopping + best checkpoint into ``ckpt_dir``."""
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    if max_epochs is not None:
        tcfg["max_epochs"] = max_epochs
    tcfg.setdefault("num_sanity_val_steps", 0)
    es = OmegaConf.to_container(cfg.callbacks.early_stopping, resolve=True)
    if patience is not None:
        es["patience"] = patience
    ck = OmegaConf.to_container(cfg.callbacks.model_checkpoint, resolve=False)
    ck["dirpath"] = str(ckpt_dir)
    ck["monitor"] = cfg.eval.monitor
    callbacks = [instantiate(es), instantiate(ck)]
    return instantiate(tcfg, callbacks=callbacks, logger=logger, default_root_dir=str(ckpt_dir))


def fit_best(trainer: pl.Trainer, module: RecStrategy, datamodule: RecDataModule) -> dict[str, Any]:
    """Fit, then load the best checkpoint's weights into ``module`` (in this process).

    Under ``ddp_spawn`` the fit happens in child processes; the checkpoint file is what survives,
    so the best weights are always read back from it.
    """
    attach = getattr(module.loss, "attach", None)
    if attach is not None and hasattr(datamodule, "item_counts"):
        attach(datamodule.item_counts)  # losses that correct for the sampling distribution
    trainer.fit(module, datamodule=datamodule)
    ckpt = trainer.checkpoint_callback
    best_path = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
    best_score = getattr(ckpt, "best_model_score", None) if ckpt is not None else None
    best_epoch = -1
    if best_path and Path(best_path).exists():
        ckpt_data = torch.load(best_path, map_location="cpu", weights_only=False)
        module.load_state_dict(ckpt_data["state_dict"])
        best_epoch = int(ckpt_data.get("epoch", -1))
    return {"best_path": best_path,
            "best_score": float(best_score) if best_score is not None else float("nan"),
            "best_epoch": best_epoch}


def scratch_dir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix)
