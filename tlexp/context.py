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
        backbone = build_backbone(backbone_cfg if backbone_cfg is not None else self.cfg.backbone,
                                  data if data is not None else self.target)
        self.log_build_info(backbone.tracking_info())
        return backbone

    def log_build_info(self, info: dict | None, prefix: str = "") -> None:
        """Record how a backbone was built (e.g. text-embedding cache hit, encode seconds).

        ``prefix`` goes before each tag name and after ``time/`` in metric names, so that the
        source model's build (``pretrain_``) and the target model's do not overwrite each other.
        """
        if not info:
            return
        self.set_tags({f"{prefix}{k}": v for k, v in info.get("tags", {}).items()})
        metrics = {}
        for k, v in info.get("metrics", {}).items():
            group, _, name = k.rpartition("/")
            metrics[f"{group}/{prefix}{name}" if group else f"{prefix}{name}"] = v
        self.log_metrics(metrics)

    def pretrained(self, backbone_cfg: DictConfig | None = None, tag: str = "pretrain") -> Pretrained:
        """The backbone trained on the source domain (from the cache when possible), logged under ``tag``."""
        import time

        t0 = time.time()
        pre = pretrain_source(self.cfg, self.source, self.source_fingerprint, backbone_cfg)
        self.timings[f"time/{tag}_s"] = time.time() - t0
        self.set_tags({f"{tag}_cache": "hit" if pre.cache_hit else "miss", f"{tag}_key": pre.key})
        self.log_build_info(getattr(pre, "build_info", None), prefix=f"{tag}_")
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

    # ----- more models and domains than the scenario's one source (distill, fusion) -----
    def group_config(self, group: str, name: str) -> DictConfig:
        """``conf/<group>/<name>.yaml``, resolved against this run's config (``${world}``, ``${paths...}``).

        Lets a strategy name extra domains or backbones by their config name (``fusion.sources=
        [news,social]``, ``strategy.teacher.backbone=two_tower_large``) without a Hydra group per use.
        """
        import copy

        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf, open_dict

        from tlexp.config import config_dir, register_resolvers
        from tlexp.errors import ConfigError

        if not (config_dir() / group / f"{name}.yaml").exists():
            choices = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
            raise ConfigError(f"no {group} config named '{name}' in {config_dir() / group}; choose one of {choices}")
        register_resolvers()
        # A backbone file is a `_global_` package that may override other groups (text_seq sets
        # `override /loss: sampled_ce`), which only composes inside the primary config's defaults
        # list; compose that with the one choice and take the group's node.
        kwargs = ({"config_name": "config", "overrides": [f"{group}={name}"]} if group == "backbone"
                  else {"config_name": f"{group}/{name}"})
        if GlobalHydra.instance().is_initialized():  # inside `tlexp run`: Hydra already knows conf/
            composed = compose(**kwargs)
        else:
            with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
                composed = compose(**kwargs)
        node = composed[group] if group in composed else composed
        host = copy.deepcopy(self.cfg)
        with open_dict(host):
            host["_extra_"] = node
        return OmegaConf.create(OmegaConf.to_container(host["_extra_"], resolve=True))

    def backbone_config(self, node: Any) -> DictConfig:
        """A backbone config from a config node, or from a name in ``conf/backbone/`` (a string)."""
        from omegaconf import OmegaConf

        if isinstance(node, str):
            return self.group_config("backbone", node)
        return node if isinstance(node, DictConfig) else OmegaConf.create(node)

    def domain_data(self, name: str) -> tuple[DomainData, dict]:
        """An extra source domain by its ``conf/domain`` name, split like the run's source; and its fingerprint.

        The scenario's own source is returned as is. Another domain is loaded and split through
        the scenario cache (paired with this run's target, whose split does not change: only the
        ``.source`` side is used), so a second run finds it cached.
        """
        from hydra.utils import instantiate

        from tlexp.data.scenario import build_scenario

        if name == self.source.name:
            return self.source, self.source_fingerprint
        loader = instantiate(self.group_config("domain", name))
        if loader.name == self.target.name:
            from tlexp.errors import ConfigError

            raise ConfigError(f"source domain '{name}' is the run's target; pick another source domain")
        extra = build_scenario(loader, instantiate(self.cfg.target), dict(self.cfg.split), self.cfg.paths.cache_dir)
        return extra.source, loader.fingerprint()

    def pretrained_on(self, source: DomainData, fingerprint: dict, backbone_cfg: DictConfig | None = None,
                      tag: str = "pretrain") -> Pretrained:
        """Like :meth:`pretrained`, for any source domain (e.g. one of several fusion sources)."""
        import time

        t0 = time.time()
        pre = pretrain_source(self.cfg, source, fingerprint, backbone_cfg)
        self.timings[f"time/{tag}_s"] = time.time() - t0
        self.set_tags({f"{tag}_cache": "hit" if pre.cache_hit else "miss", f"{tag}_key": pre.key})
        self.log_metrics({f"{tag}/val_ndcg_at_10": pre.meta["best_val_ndcg_at_10"],
                          f"{tag}/best_epoch": pre.meta["best_epoch"], f"{tag}/seconds": pre.meta["seconds"]})
        return pre

    def teacher(self, backbone_cfg: DictConfig, settings: dict | None = None, tag: str = "teacher") -> Pretrained:
        """``backbone_cfg`` pretrained on the source, then fine-tuned on the target; both cached.

        Logged like pretraining: ``<tag>_pretrain_cache`` / ``<tag>_cache`` tags (hit or miss) and
        the source and target validation ndcg of what was trained.
        """
        import time

        from tlexp.pretrain import finetune_target

        t0 = time.time()
        pre, fine = finetune_target(self.cfg, self.source, self.target, self.scenario.key, self.source_fingerprint,
                                    backbone_cfg, settings)
        self.timings[f"time/{tag}_s"] = time.time() - t0
        self.set_tags({f"{tag}_pretrain_cache": "hit" if pre.cache_hit else "miss",
                       f"{tag}_cache": "hit" if fine.cache_hit else "miss", f"{tag}_key": fine.key})
        self.log_metrics({f"{tag}/pretrain_val_ndcg_at_10": pre.meta["best_val_ndcg_at_10"],
                          f"{tag}/val_ndcg_at_10": fine.meta["best_val_ndcg_at_10"],
                          f"{tag}/best_epoch": fine.meta["best_epoch"], f"{tag}/seconds": fine.meta["seconds"]})
        return fine
