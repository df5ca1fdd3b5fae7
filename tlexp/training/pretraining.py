"""Models trained before the target stage — source pretraining and distillation teachers — cached.

Every transfer strategy starts from a backbone trained on a source domain. That is the expensive,
shared part of a sweep over strategies and seeds, so its weights are stored under
``<cache>/pretrain/<key>`` and reused: same source data + split + backbone + loss + optimizer +
pretraining settings + seed = same key. A teacher (pretrained on the source, then fine-tuned on
the target exactly as the ``finetune`` strategy would) is cached the same way under
``<cache>/finetune/<key>``, so that a sweep over students trains it once. Whoever asks always
loads the weights from the entry — also right after building it — so a hit and a miss give
identical runs. Both run through the one training loop (:mod:`tlexp.training.module`).

Both select their best epoch on ``val/<metric>`` of the run's monitor (``val_cold/ndcg_at_10`` ->
``val/ndcg_at_10``): a source domain has no cold users, and a stage's model serves every user.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch

from tlexp.core.cache import cached_dir, stable_hash
from tlexp.core.console import stage
from tlexp.data.datamodule import datamodule_for
from tlexp.data.reweight import ImportanceWeights, ReweightSettings, importance_weights
from tlexp.data.scenario import DomainData
from tlexp.evaluation.evaluator import make_eval_set
from tlexp.models.base import Backbone, build_backbone
from tlexp.models.recommender import Recommender
from tlexp.training.module import LossObjective, TrainingModule, Validation
from tlexp.training.settings import TrainSettings
from tlexp.training.trainer import build_trainer, fit_best
from tlexp.training.transfer import TransferSettings, lr_scales, transfer_weights

CODE_VERSION = 2  # bump when this code changes what it produces (2: backbone nodes carry their loss)
# Text-encoder settings that do not change a trained model (left out of the keys).
ENCODER_RUNTIME_KEYS = ("cache_dir", "batch_size", "num_threads", "progress")


@dataclass
class Pretrained:
    """A backbone with its trained weights loaded, and how it was obtained."""

    backbone: Backbone
    key: str
    cache_hit: bool
    meta: dict
    build_info: dict | None = None  # the backbone's tracking_info() from when it was first built
    reweighting: ImportanceWeights | None = None  # importance weights the source pairs were resampled by


@dataclass(frozen=True)
class Reweighting:
    """Pretrain on source pairs importance-resampled towards ``target`` (tlexp/data/reweight.py).

    ``scenario_key`` identifies the target's training data (the weights depend on it) in the cache key.
    """

    target: DomainData
    scenario_key: str
    settings: ReweightSettings


@dataclass(frozen=True)
class TeacherSettings:
    """How a teacher is fine-tuned on the target after its source pretraining."""

    transfer: TransferSettings
    max_epochs: int | None = None  # None: the trainer's max_epochs
    patience: int | None = None    # None: early stopping's patience


def _backbone_key(spec: Any) -> Any:
    node = dict(spec)
    encoder = node.get("encoder")
    if isinstance(encoder, dict):  # where/how fast item texts are embedded does not change the model
        node["encoder"] = {k: v for k, v in encoder.items() if k not in ENCODER_RUNTIME_KEYS}
    return node


def stage_settings(settings: TrainSettings) -> TrainSettings:
    """The run's training settings with the monitor a stage selects on: ``val/<metric>``."""
    metric = settings.monitor.partition("/")[2]
    return dataclasses.replace(settings, monitor=f"val/{metric}")


def pretrain_key(settings: TrainSettings, source_fingerprint: dict, backbone_spec: dict, seed: int,
                 reweight: Reweighting | None = None) -> str:
    parts = {"monitor": settings.monitor,
        "source": source_fingerprint, "split": settings.split, "backbone": _backbone_key(backbone_spec),
        "loss": settings.loss, "optimizer": settings.optimizer, "scheduler": settings.scheduler,
        "pretrain": settings.pretrain, "batch_size": settings.batch_size, "ks": settings.ks,
        "seed": int(seed), "code": CODE_VERSION,
    }
    if reweight is not None:  # only then: unweighted pretraining keeps the keys it always had
        parts["reweight"] = {"scenario": reweight.scenario_key, **reweight.settings.key()}
    return stable_hash(parts)


def _root(settings: TrainSettings, kind: str) -> Path:
    # Without the cache, still go through a directory so that hit and miss load the same way.
    return settings.cache_dir / kind if settings.use_cache else settings.scratch_dir / kind


def _module(settings: TrainSettings, backbone: Backbone, data: DomainData,
            scales: dict[str, float] | None = None) -> TrainingModule:
    return TrainingModule(Recommender(backbone), LossObjective(settings.make_loss()), settings.optimisation(scales),
                          Validation(make_eval_set(data, "valid"), settings.ks, settings.eval_batch_size,
                                     settings.monitor))


def _fit_and_save(settings: TrainSettings, module: TrainingModule, data: DomainData, path: Path, max_epochs: int,
                  patience: int, stage: str, sample_weights: Any = None, seed: int = 0) -> dict:
    trainer = build_trainer(settings, max_epochs=max_epochs, patience=patience, ckpt_dir=path / "lightning",
                            stage=stage)
    t0 = time.time()
    backbone = module.model.backbone
    data_module = datamodule_for(data, backbone, settings.batch_size, settings.num_workers,
                                 seed=seed, sample_weights=sample_weights)
    fit = fit_best(trainer, module, data_module)
    torch.save(backbone.state_dict(), path / "backbone.pt")
    for f in (path / "lightning").rglob("*.ckpt"):
        f.unlink(missing_ok=True)  # the backbone weights are all a later run needs
    return {"seconds": round(time.time() - t0, 2), "monitor": settings.monitor, "best_score": fit["best_score"],
            "best_epoch": fit["best_epoch"]}


def _load(spec: dict, data: DomainData, path: Path) -> Backbone:
    backbone = build_backbone(spec, data)
    backbone.load_state_dict(torch.load(path / "backbone.pt", map_location="cpu", weights_only=True))
    return backbone


def pretrain_source(settings: TrainSettings, source: DomainData, source_fingerprint: dict, backbone_spec: dict,
                    seed: int | None = None, reweight: Reweighting | None = None) -> Pretrained:
    """Train (or fetch from the cache) ``backbone_spec`` on the source domain.

    With ``reweight``, each epoch's source pairs are drawn with replacement in proportion to their
    importance weights towards the target; the weights and their summary are kept in the cache entry.
    """
    settings = stage_settings(settings)
    seed = int(settings.seed if seed is None else seed)
    key = pretrain_key(settings, source_fingerprint, backbone_spec, seed, reweight)
    first_build: list[dict] = []

    def build(path: Path) -> None:
        weights = None
        if reweight is not None:
            stage("pretrain", f"importance weights of {source.name}'s pairs towards {reweight.target.name}")
            found = importance_weights(source, reweight.target, reweight.settings, seed)
            np.save(path / "weights.npy", found.weights)
            (path / "reweight.json").write_text(json.dumps({"stats": found.stats, "histogram": found.histogram},
                                                           indent=1))
            weights = found.weights
        stage("pretrain", f"{backbone_spec.get('name', 'model')} on {source.name}: cache miss, training")
        pl.seed_everything(seed, workers=True, verbose=False)
        backbone = build_backbone(backbone_spec, source)
        first_build.append(backbone.tracking_info())
        module = _module(settings, backbone, source)
        meta = _fit_and_save(settings, module, source, path, int(settings.pretrain["max_epochs"]),
                             int(settings.pretrain["patience"]), "pretrain", weights, seed)
        meta = {"source": source.name, **meta, "n_users": source.n_users, "n_items": source.n_items, "seed": seed}
        (path / "meta.json").write_text(json.dumps(meta, indent=1))

    what = f"{backbone_spec.get('name', 'model')} on {source.name}"
    path, hit = cached_dir(_root(settings, "pretrain"), key, build)
    if hit:
        stage("pretrain", f"{what}: cache hit ({key}), nothing to train")
    backbone = _load(backbone_spec, source, path)
    info = first_build[0] if first_build else backbone.tracking_info()
    found = None
    if reweight is not None:
        saved = json.loads((path / "reweight.json").read_text())
        found = ImportanceWeights(np.load(path / "weights.npy"), saved["stats"], saved["histogram"])
    return Pretrained(backbone, key, hit, json.loads((path / "meta.json").read_text()), info, found)


def finetune_key(settings: TrainSettings, scenario_key: str, pre_key: str, knobs: dict, seed: int) -> str:
    return stable_hash({"scenario": scenario_key, "pretrain": pre_key, "settings": knobs, "monitor": settings.monitor,
                        "loss": settings.loss, "optimizer": settings.optimizer, "scheduler": settings.scheduler,
                        "batch_size": settings.batch_size, "ks": settings.ks, "seed": seed, "code": CODE_VERSION})


def finetune_teacher(settings: TrainSettings, source: DomainData, target: DomainData, scenario_key: str,
                     source_fingerprint: dict, backbone_spec: dict, teacher: TeacherSettings,
                     seed: int | None = None) -> tuple[Pretrained, Pretrained]:
    """Pretrain ``backbone_spec`` on ``source`` (cached), then fine-tune it on ``target`` (cached too).

    The same recipe as the ``finetune`` strategy, cached like pretraining: the key covers the
    scenario (source + target + split), the pretraining key, the transfer knobs, epochs and
    patience, loss, optimizer, batch size and seed. Returns (pretrained on the source, fine-tuned).
    """
    settings = stage_settings(settings)
    seed = int(settings.seed if seed is None else seed)
    max_epochs = int(teacher.max_epochs if teacher.max_epochs is not None else settings.max_epochs)
    patience = int(teacher.patience if teacher.patience is not None else settings.patience)
    t = teacher.transfer
    knobs = {"carry_user_embeddings": t.carry_user_embeddings, "init_new_users": t.init_new_users,
             "freeze": list(t.freeze), "transfer_lr_scale": t.lr_scale, "max_epochs": max_epochs, "patience": patience}
    pre = pretrain_source(settings, source, source_fingerprint, backbone_spec, seed)
    key = finetune_key(settings, scenario_key, pre.key, knobs, seed)

    def build(path: Path) -> None:
        stage("teacher", f"{backbone_spec.get('name', 'model')} fine-tuned on {target.name}: cache miss, training")
        pl.seed_everything(seed, workers=True, verbose=False)
        backbone = build_backbone(backbone_spec, target)
        pl.seed_everything(seed, workers=True, verbose=False)
        user_map = torch.from_numpy(source.user_index(target.users)).long()
        item_map = torch.from_numpy(pd.Index(source.items).get_indexer(target.items)).long()
        moved = transfer_weights(backbone, pre.backbone, user_map, item_map, t)
        module = _module(settings, backbone, target, lr_scales(moved, t.lr_scale))
        meta = _fit_and_save(settings, module, target, path, max_epochs, patience, "teacher")
        meta = {"source": source.name, "target": target.name, **meta, "pretrain_key": pre.key, "seed": seed}
        (path / "meta.json").write_text(json.dumps(meta, indent=1))

    what = f"teacher {backbone_spec.get('name', 'model')} fine-tuned on {target.name}"
    path, hit = cached_dir(_root(settings, "finetune"), key, build)
    if hit:
        stage("teacher", f"{what}: cache hit ({key}), nothing to train")
    return pre, Pretrained(_load(backbone_spec, target, path), key, hit, json.loads((path / "meta.json").read_text()))
