"""What training takes from a run's config, read once into one plain object.

Groups that are *instantiated* (loss, optimizer, scheduler, trainer, callbacks) stay as resolved
config mappings, so that Hydra builds the objects and cache keys hash exactly what was
configured; everything else is a typed field. Training code (pretraining, teachers, the target
stage) reads this object, never the run's whole config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tlexp.training.module import Optimisation


def _plain(node: Any, resolve: bool = True) -> Any:
    return OmegaConf.to_container(node, resolve=resolve) if isinstance(node, DictConfig) else node


@dataclass
class TrainSettings:
    loss: dict
    optimizer: dict
    scheduler: dict | None
    trainer: dict
    early_stopping: dict
    checkpoint: dict
    split: dict                    # the split protocol (it determines a source domain's training data)
    pretrain: dict                 # max_epochs, patience (use_cache is not part of a model's identity)
    batch_size: int
    num_workers: int
    ks: list[int]
    eval_batch_size: int
    monitor: str
    seed: int
    cache_dir: Path
    scratch_dir: Path              # where uncached builds go (pretrain.use_cache=false)
    use_cache: bool = True
    reweight: dict = field(default_factory=dict)  # pretrain.reweight* (not part of the pretraining key unless on)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TrainSettings:
        pretrain = _plain(cfg.pretrain)
        use_cache = bool(pretrain.pop("use_cache", True))
        reweight = {k: pretrain.pop(k) for k in [k for k in pretrain if k.startswith("reweight")]}
        return cls(
            loss=_plain(cfg.loss), optimizer=_plain(cfg.optimizer),
            scheduler=_plain(cfg.scheduler) if cfg.scheduler else None,
            trainer=_plain(cfg.trainer),
            early_stopping=_plain(cfg.callbacks.early_stopping),
            checkpoint=_plain(cfg.callbacks.model_checkpoint, resolve=False),
            split=_plain(cfg.split), pretrain=pretrain,
            batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers),
            ks=[int(k) for k in cfg.eval.ks], eval_batch_size=int(cfg.eval.batch_size), monitor=str(cfg.eval.monitor),
            seed=int(cfg.seed), cache_dir=Path(cfg.paths.cache_dir), scratch_dir=Path(cfg.paths.output_dir),
            use_cache=use_cache, reweight=reweight,
        )

    # ----- objects, built by Hydra from the configured nodes -----
    def make_loss(self) -> nn.Module:
        return instantiate(self.loss)

    def optimisation(self, lr_scales: dict[str, float] | None = None) -> Optimisation:
        scheduler = instantiate(self.scheduler) if self.scheduler else None
        return Optimisation(instantiate(self.optimizer), scheduler, dict(lr_scales or {}))

    @property
    def max_epochs(self) -> int:
        return int(self.trainer.get("max_epochs", 1))

    @property
    def patience(self) -> int:
        return int(self.early_stopping.get("patience", 3))
