"""What a strategy may use while it prepares, trains and reports: the run's context.

Strategies never read files or know where caches live; they ask the context for a pretrained
source backbone, for the user/item correspondence between domains, or to log something. That
keeps the pipeline's stage order in one place (``pipeline.py``) while every strategy can still
take what it needs (one pretrained model, a teacher, several sources, source batches...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from omegaconf import DictConfig

from tlexp.data.scenario import DomainData, Scenario
from tlexp.models.base import Backbone
from tlexp.pretrain import Pretrained, build_backbone, pretrain_source


@dataclass
class RunContext:
    cfg: DictConfig
    scenario: Scenario
    source_fingerprint: dict
    run: Any = None  # TrackedRun, or None outside a tracked run (tests, scripts)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def source(self) -> DomainData:
        return self.scenario.source

    @property
    def target(self) -> DomainData:
        return self.scenario.target

    def reseed(self, offset: int = 0) -> None:
        """Reset all RNGs to the run's seed: what follows does not depend on cache hits before it."""
        pl.seed_everything(int(self.cfg.seed) + offset, workers=True, verbose=False)

    def build_backbone(self, backbone_cfg: DictConfig | None = None, data: DomainData | None = None) -> Backbone:
        return build_backbone(backbone_cfg if backbone_cfg is not None else self.cfg.backbone,
                              data if data is not None else self.target)

    def pretrained(self, backbone_cfg: DictConfig | None = None, tag: str = "pretrain") -> Pretrained:
        """The backbone trained on the source domain (from the cache when possible), logged under ``tag``."""
        import time

        t0 = time.time()
        pre = pretrain_source(self.cfg, self.source, self.source_fingerprint, backbone_cfg)
        self.timings[f"time/{tag}_s"] = time.time() - t0
        self.set_tags({f"{tag}_cache": "hit" if pre.cache_hit else "miss", f"{tag}_key": pre.key})
        self.log_metrics({f"{tag}/val_ndcg_at_10": pre.meta["best_val_ndcg_at_10"],
                          f"{tag}/best_epoch": pre.meta["best_epoch"], f"{tag}/seconds": pre.meta["seconds"]})
        return pre

    def user_map(self, source: DomainData | None = None) -> torch.Tensor:
        """For each target user, its index in ``source`` (-1 if the user is not there)."""
        source = source if source is not None else self.source
        return torch.from_numpy(source.user_index(self.target.users)).long()

    def item_map(self, source: DomainData | None = None) -> torch.Tensor:
        """For each target item, its index in ``source`` (-1 if absent; domains rarely share items)."""
        source = source if source is not None else self.source
        return torch.from_numpy(pd.Index(source.items).get_indexer(self.target.items)).long()

    # ----- tracking (no-ops without a run) -----
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log_metrics(metrics, step)

    def log_params(self, params: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log_params(params)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.set_tags(tags)
