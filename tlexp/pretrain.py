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
from tlexp.data.datamodule import datamodule_for
from tlexp.data.scenario import DomainData
from tlexp.evaluation.evaluator import make_eval_set
from tlexp.models.base import Backbone
from tlexp.strategies.scratch import Scratch
from tlexp.training import build_trainer, fit_best

CODE_VERSION = 1  # bump when pretraining code changes what it produces
# Text-encoder settings that do not change a trained model (left out of the pretraining key).
ENCODER_RUNTIME_KEYS = ("cache_dir", "batch_size", "num_threads", "progress")


@dataclass
class Pretrained:
    """A source backbone with its weights loaded, and how it was obtained."""

    backbone: Backbone
    key: str
    cache_hit: bool
    meta: dict
    build_info: dict | None = None  # the backbone's tracking_info() from when it was first built


def pretrain_key(cfg: DictConfig, source_fingerprint: dict, backbone_cfg: DictConfig | None = None,
                 seed: int | None = None) -> str:
    res = lambda node: OmegaConf.to_container(node, resolve=True) if node is not None else None
    pre = res(cfg.pretrain)
    pre.pop("use_cache", None)
    backbone = res(backbone_cfg if backbone_cfg is not None else cfg.backbone)
    encoder = backbone.get("encoder") if isinstance(backbone, dict) else None
    if isinstance(encoder, dict):  # where/how fast item texts are embedded does not change the model
        backbone["encoder"] = {k: v for k, v in encoder.items() if k not in ENCODER_RUNTIME_KEYS}
    return stable_hash({
        "source": source_fingerprint, "split": res(cfg.split),
        "backbone": backbone,
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

    first_build: list[dict] = []

    def build(path: Path) -> None:
        pl.seed_everything(seed, workers=True, verbose=False)
        backbone = build_backbone(backbone_cfg, source)
        first_build.append(backbone.tracking_info())
        sched = instantiate(cfg.scheduler) if cfg.scheduler else None
        module = Scratch(backbone, instantiate(cfg.loss), instantiate(cfg.optimizer), sched,
                         val_set=make_eval_set(source, "valid"), ks=list(cfg.eval.ks),
                         eval_batch_size=cfg.eval.batch_size, name="pretrain")
        trainer = build_trainer(cfg, max_epochs=cfg.pretrain.max_epochs, patience=cfg.pretrain.patience,
                                ckpt_dir=path / "lightning")
        t0 = time.time()
        fit = fit_best(trainer, module, datamodule_for(source, backbone, cfg.batch_size, cfg.num_workers))
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
    info = first_build[0] if first_build else backbone.tracking_info()
    return Pretrained(backbone, key, hit, json.loads((path / "meta.json").read_text()), info)


def finetune_key(cfg: DictConfig, scenario_key: str, pre_key: str, settings: dict, seed: int) -> str:
    res = lambda node: OmegaConf.to_container(node, resolve=True) if node is not None else None
    return stable_hash({"scenario": scenario_key, "pretrain": pre_key, "settings": settings,
                        "loss": res(cfg.loss), "optimizer": res(cfg.optimizer), "scheduler": res(cfg.scheduler),
                        "batch_size": cfg.batch_size, "ks": list(cfg.eval.ks), "seed": seed,
                        "code": CODE_VERSION})


def finetune_target(cfg: DictConfig, source: DomainData, target: DomainData, scenario_key: str,
                    source_fingerprint: dict, backbone_cfg: DictConfig, settings: dict | None = None,
                    seed: int | None = None) -> tuple[Pretrained, Pretrained]:
    """Pretrain ``backbone_cfg`` on ``source`` (cached), then fine-tune it on ``target`` (cached too).

    This is how a distillation teacher is made: the same recipe as the ``finetune`` strategy, but
    cached like pretraining, because a sweep over students (loss weights, sizes, seeds of the
    student) must not retrain the teacher. ``settings`` holds the fine-tuning knobs
    (``carry_user_embeddings``, ``init_new_users``, ``freeze``, ``transfer_lr_scale``,
    ``max_epochs``, ``patience``); the cache key covers them, the scenario (source + target +
    split), the pretraining key, loss, optimizer, batch size and seed. Returns (pretrained on the
    source, fine-tuned on the target).
    """
    from tlexp.strategies.finetune import FineTune  # strategies import this module's callers

    seed = int(cfg.seed if seed is None else seed)
    settings = dict(settings or {})
    max_epochs = settings.pop("max_epochs", None)
    max_epochs = int(max_epochs if max_epochs is not None else cfg.trainer.max_epochs)
    patience = settings.pop("patience", None)
    patience = int(patience if patience is not None else cfg.callbacks.early_stopping.patience)
    knobs = {"carry_user_embeddings": bool(settings.get("carry_user_embeddings", True)),
             "init_new_users": str(settings.get("init_new_users", "mean")),
             "freeze": list(settings.get("freeze", []) or []),
             "transfer_lr_scale": float(settings.get("transfer_lr_scale", 1.0))}
    pre = pretrain_source(cfg, source, source_fingerprint, backbone_cfg, seed)
    # pre.key already covers the backbone (without encoder runtime settings) and the source side
    key = finetune_key(cfg, scenario_key, pre.key, {**knobs, "max_epochs": max_epochs, "patience": patience}, seed)

    def build(path: Path) -> None:
        import pandas as pd

        pl.seed_everything(seed, workers=True, verbose=False)
        sched = instantiate(cfg.scheduler) if cfg.scheduler else None
        module = FineTune(build_backbone(backbone_cfg, target), instantiate(cfg.loss), instantiate(cfg.optimizer),
                          sched, val_set=make_eval_set(target, "valid"), ks=list(cfg.eval.ks),
                          eval_batch_size=cfg.eval.batch_size, name="teacher", **knobs)
        pl.seed_everything(seed, workers=True, verbose=False)
        user_map = torch.from_numpy(source.user_index(target.users)).long()
        item_map = torch.from_numpy(pd.Index(source.items).get_indexer(target.items)).long()
        module.transfer(pre.backbone, user_map, item_map)
        trainer = build_trainer(cfg, max_epochs=max_epochs, patience=patience, ckpt_dir=path / "lightning")
        t0 = time.time()
        fit = fit_best(trainer, module, datamodule_for(target, module.backbone, cfg.batch_size, cfg.num_workers))
        torch.save(module.backbone.state_dict(), path / "backbone.pt")
        for f in (path / "lightning").rglob("*.ckpt"):
            f.unlink()
        meta = {"source": source.name, "target": target.name, "seconds": round(time.time() - t0, 2),
                "best_val_ndcg_at_10": fit["best_score"], "best_epoch": fit["best_epoch"],
                "pretrain_key": pre.key, "seed": seed}
        (path / "meta.json").write_text(json.dumps(meta, indent=1))

    use_cache = bool(cfg.pretrain.get("use_cache", True))
    root = Path(cfg.paths.cache_dir) / "finetune" if use_cache else Path(cfg.paths.output_dir) / "finetune"
    path, hit = cached_dir(root, key, build)
    backbone = build_backbone(backbone_cfg, target)
    backbone.load_state_dict(torch.load(path / "backbone.pt", map_location="cpu"))
    return pre, Pretrained(backbone, key, hit, json.loads((path / "meta.json").read_text()))
