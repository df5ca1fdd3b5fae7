"""Source-domain pretraining, cached by a hash of everything that determines its result.

Every transfer strategy starts from a backbone trained on the source domain. Pretraining is the
expensive, shared part of a sweep over strategies and seeds, so its weights are stored under
``outputs/cache/pretrain/<key>`` and reused: same source data + split + backbone + loss +
optimizer + pretraining settings + seed = same key. The target stage always loads the weights
from that file — also right after pretraining — so a cache hit and a miss give identical runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tlexp.cache import cached_dir, stable_hash
from tlexp.data.datamodule import RecDataModule
from tlexp.data.scenario import DomainData
from tlexp.evaluation.evaluator import make_eval_set
from tlexp.models.base import Backbone
from tlexp.strategies.scratch import Scratch
from tlexp.training import build_trainer, fit_best

CODE_VERSION = 1  # bump when pretraining code changes what it produces


@dataclass
class Pretrained:
    """A source backbone with its weights loaded, and how it was obtained."""

    backbone: Backbone
    key: str
    cache_hit: bool
    meta: dict


def pretrain_key(cfg: DictConfig, source_fingerprint: dict, backbone_cfg: DictConfig | None = None,
                 seed: int | None = None) -> str:
    res = lambda node: OmegaConf.to_container(node, resolve=True) if node is not None else None
    pre = res(cfg.pretrain)
    pre.pop("use_cache", None)
    return stable_hash({
        "source": source_fingerprint, "split": res(cfg.split),
        "backbone": res(backbone_cfg if backbone_cfg is not None else cfg.backbone),
        "loss": res(cfg.loss), "optimizer": res(cfg.optimizer), "scheduler": res(cfg.scheduler),
        "pretrain": pre, "batch_size": cfg.batch_size, "ks": list(cfg.eval.ks),
        "seed": int(cfg.seed if seed is None else seed), "code": CODE_VERSION,
    })


def build_backbone(backbone_cfg: DictConfig, data: DomainData) -> Backbone:
    return instantiate(backbone_cfg)(data=data)


def pretrain_source(cfg: DictConfig, source: DomainData, source_fingerprint: dict,
                    backbone_cfg: DictConfig | None = None, seed: int | None = None) -> Pretrained:
    """Train (or fetch from the cache) ``backbone_cfg`` on the source domain."""
    backbone_cfg = backbone_cfg if backbone_cfg is not None else cfg.backbone
    seed = int(cfg.seed if seed is None else seed)
    key = pretrain_key(cfg, source_fingerprint, backbone_cfg, seed)

    def build(path: Path) -> None:
        pl.seed_everything(seed, workers=True, verbose=False)
        backbone = build_backbone(backbone_cfg, source)
        sched = instantiate(cfg.scheduler) if cfg.scheduler else None
        module = Scratch(backbone, instantiate(cfg.loss), instantiate(cfg.optimizer), sched,
                         val_set=make_eval_set(source, "valid"), ks=list(cfg.eval.ks),
                         eval_batch_size=cfg.eval.batch_size, name="pretrain")
        trainer = build_trainer(cfg, max_epochs=cfg.pretrain.max_epochs, patience=cfg.pretrain.patience,
                                ckpt_dir=path / "lightning")
        t0 = time.time()
        fit = fit_best(trainer, module, RecDataModule(source, cfg.batch_size, cfg.num_workers))
        torch.save(module.backbone.state_dict(), path / "backbone.pt")
        for f in (path / "lightning").rglob("*.ckpt"):
            f.unlink()  # the backbone weights are all a later run needs
        meta = {"source": source.name, "seconds": round(time.time() - t0, 2),
                "best_val_ndcg_at_10": fit["best_score"], "best_epoch": fit["best_epoch"],
                "n_users": source.n_users, "n_items": source.n_items, "seed": seed}
        (path / "meta.json").write_text(json.dumps(meta, indent=1))

    use_cache = bool(cfg.pretrain.get("use_cache", True))
    root = Path(cfg.paths.cache_dir) / "pretrain"
    if not use_cache:  # still go through a directory so that hit and miss load the same way
        root = Path(cfg.paths.output_dir) / "pretrain"
    path, hit = cached_dir(root, key, build)
    backbone = build_backbone(backbone_cfg, source)
    backbone.load_state_dict(torch.load(path / "backbone.pt", map_location="cpu"))
    return Pretrained(backbone, key, hit, json.loads((path / "meta.json").read_text()))
