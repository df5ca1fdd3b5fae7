"""From a config to a built model: scenario, strategy, the stages it declared, the target backbone.

Shared by ``tlexp run`` (:mod:`tlexp.pipeline.run`) and ``tlexp recommend`` (which rebuilds a
logged run's model the same way before loading its weights), so that both construct exactly the
same thing. This is the one place that turns the run's config into the typed settings and inputs
strategies receive.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
import typing
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from tlexp.core.config import domain_spec
from tlexp.core.faults import fault_point
from tlexp.core.errors import ConfigError
from tlexp.data.loaders.none import NO_SOURCE
from tlexp.data.scenario import DomainData, Scenario, build_scenario
from tlexp.evaluation.plan import EvalSettings, KShotSettings
from tlexp.models.base import Backbone, build_backbone
from tlexp.strategies.base import Built, Need, SourceModel, Strategy, StrategyInputs, Teacher, Trained
from tlexp.tracking.run import RunLog
from tlexp.training.augment import with_augmentation
from tlexp.training.pretraining import Reweighting, finetune_teacher, pretrain_source
from tlexp.data.augment import AugmentSettings
from tlexp.data.reweight import ReweightSettings
from tlexp.training.privacy import PrivacySettings, loss_problem
from tlexp.training.regularize import RegularizeSettings
from tlexp.training.settings import TrainSettings
from tlexp.training.transfer import TransferSettings

log = logging.getLogger(__name__)


# ----- data -----
def load_scenario(cfg: DictConfig) -> tuple[Scenario, dict]:
    """Instantiate the source/target loaders and build (or fetch) the processed scenario."""
    source, target = instantiate(cfg.source), instantiate(cfg.target)
    split = OmegaConf.to_container(cfg.split, resolve=True)  # plain lists: the scenario's meta.json is JSON
    scenario = build_scenario(source, target, split, cfg.paths.cache_dir)
    return scenario, source.fingerprint()


def extra_source(cfg: DictConfig, scenario: Scenario, source_fp: dict, name: str) -> tuple[DomainData, dict]:
    """A source domain by its ``conf/domain`` name, split like the run's source; and its fingerprint.

    The scenario's own source is returned as is. Another domain is split through the scenario
    cache paired with this run's target (only its source side is used), so a second run finds it.
    """
    if name == scenario.source.name:
        return scenario.source, source_fp
    host = copy.deepcopy(cfg)  # the domain file's ${world}, ${paths...} resolve against this run
    with open_dict(host):
        host["_extra_"] = domain_spec(name)
    loader = instantiate(OmegaConf.to_container(host["_extra_"], resolve=True))
    if loader.name == scenario.target.name:
        raise ConfigError(f"source domain '{name}' is the run's target; pick another source domain")
    extra = build_scenario(loader, instantiate(cfg.target), OmegaConf.to_container(cfg.split, resolve=True),
                           cfg.paths.cache_dir)
    return extra.source, loader.fingerprint()


def check_scenario(strategy: Strategy, scenario: Scenario) -> None:
    if scenario.source.name == NO_SOURCE and (strategy.uses_source or strategy.requires_overlap
                                              or strategy.needs(scenario)):
        raise ConfigError(f"strategy={strategy.name} transfers from a source domain, but source=none; name a source "
                          f"(e.g. source=ecommerce) or use a strategy that needs none: popular, scratch, ease, itemknn")
    n_overlap = int(scenario.overlap_users().size)
    if strategy.requires_overlap and n_overlap == 0:
        raise ConfigError(f"strategy '{strategy.name}' needs users present in both domains, but "
                          f"{scenario.source.name} and {scenario.target.name} share none; pick a scenario with "
                          f"overlap users or a strategy that does not need them (e.g. adapt, scratch)")
    if strategy.uses_source and n_overlap == 0:
        log.warning("no overlap users between %s and %s: only shared weights transfer, no user embeddings",
                    scenario.source.name, scenario.target.name)


# ----- checks before any work -----
# (key, kind, lowest allowed value, the file that sets it)
CHECKS = (("seed", int, None, "conf/config.yaml"), ("batch_size", int, 1, "conf/config.yaml"),
          ("num_workers", int, 0, "conf/config.yaml"), ("trainer.max_epochs", int, 1, "conf/trainer/default.yaml"),
          ("pretrain.max_epochs", int, 1, "conf/pretrain/default.yaml"),
          ("pretrain.patience", int, 0, "conf/pretrain/default.yaml"),
          ("callbacks.early_stopping.patience", int, 0, "conf/callbacks/default.yaml"),
          ("optimizer.lr", float, 0.0, "conf/optimizer/"), ("optimizer.weight_decay", float, 0.0, "conf/optimizer/"),
          ("split.min_user_interactions", int, 1, "conf/split/"), ("split.cold_user_share", float, 0.0, "conf/split/"),
          ("split.cold_valid_share", float, 0.0, "conf/split/"))


def regularize_settings(cfg: DictConfig) -> RegularizeSettings:
    """``regularize.*`` as typed settings (configs logged before the group existed: all terms off)."""
    node = cfg.get("regularize")
    if node is None:
        return RegularizeSettings()
    return parse_settings(RegularizeSettings, OmegaConf.to_container(node, resolve=True), "regularize")


def reweight_settings(node: dict) -> ReweightSettings:
    """``pretrain.reweight_*`` as :class:`ReweightSettings` (features, degree, clip)."""
    names = {"reweight_features": "features", "reweight_degree": "degree", "reweight_clip": "clip"}
    return parse_settings(ReweightSettings, {names[k]: v for k, v in node.items() if k in names},
                          "pretrain.reweight_* (conf/pretrain/default.yaml)")


def privacy_settings(cfg: DictConfig) -> PrivacySettings:
    """``privacy.*`` as typed settings (configs logged before the group existed: not private)."""
    node = cfg.get("privacy")
    if node is None:
        return PrivacySettings()
    return parse_settings(PrivacySettings, OmegaConf.to_container(node, resolve=True), "privacy")


# What DP-SGD (training/privacy.py) has been verified with: the strategies' classes and the backbones' classes
PRIVATE_STRATEGIES = ("tlexp.strategies.finetune.FineTune", "tlexp.strategies.scratch.Scratch")
PRIVATE_BACKBONES = ("tlexp.models.two_tower.TwoTower",)


def check_privacy(cfg: DictConfig, strategy: Strategy) -> PrivacySettings:
    """``privacy.*``, refusing (one line each, before any run is recorded) what DP-SGD here cannot protect."""
    privacy = privacy_settings(cfg)
    if not privacy.dp:
        return privacy
    kind = f"{type(strategy).__module__}.{type(strategy).__qualname__}"
    if kind not in PRIVATE_STRATEGIES:
        raise ConfigError(f"privacy.dp=true is verified for strategy=finetune and strategy=scratch only (the target "
                          f"fit is what is private); strategy={strategy.name} is not supported: pick one of those")
    spec = strategy.backbone_spec() or cfg.backbone
    target = str((spec or {}).get("_target_", ""))
    if target not in PRIVATE_BACKBONES:
        raise ConfigError(f"privacy.dp=true is verified for backbone=two_tower (and its _small/_large presets) only; "
                          f"backbone={(spec or {}).get('name', target)} is not supported")
    problem = loss_problem(TrainSettings.from_config(cfg).make_loss())
    if problem:
        raise ConfigError(problem)
    refused = (
        (regularize_settings(cfg).active, "regularize.* terms are not clipped per example; drop the regularize "
                                          "overrides"),
        (augment_settings(cfg).active, "augment=* subsamples the data on top of the Poisson sampling the accountant "
                                       "assumes; use augment=none"),
        (bool(cfg.get("scheduler")), "learning-rate schedulers are not stepped by the private loop; "
                                     "use scheduler=none"),
        (cfg.trainer.get("gradient_clip_val") is not None, "trainer.gradient_clip_val clips the batch gradient, "
                                                           "privacy.max_grad_norm clips each example's; drop "
                                                           "trainer.gradient_clip_val"),
        (int(cfg.trainer.get("devices", 1) or 1) * int(cfg.trainer.get("num_nodes", 1) or 1) > 1
         or "ddp" in str(cfg.trainer.get("strategy", "")), "data-parallel training is not supported; use trainer=cpu "
                                                           "or trainer=gpu with one device"),
        (int(cfg.trainer.get("accumulate_grad_batches", 1) or 1) != 1, "trainer.accumulate_grad_batches is not "
                                                                        "supported; raise batch_size instead"),
        (bool(cfg.get("resume")), "the accountant's history is not checkpointed, so a resumed run would under-report "
                                  "ε; start a new run"),
    )
    for bad, why in refused:
        if bad:
            raise ConfigError(f"privacy.dp=true: {why}")
    return privacy


def augment_settings(cfg: DictConfig) -> AugmentSettings:
    """``augment.*`` as typed settings (configs logged before the group existed: none)."""
    node = cfg.get("augment")
    if node is None:
        return AugmentSettings()
    return parse_settings(AugmentSettings, OmegaConf.to_container(node, resolve=True), "augment")


def augmented(built: Built, strategy: Strategy, inputs: StrategyInputs) -> Built:
    """A sequence or text augmentation's training side (mask vector, contrastive term, text variants)
    around the strategy's objective; refused in one line where the strategy trains on batches of its own."""
    settings = inputs.augment
    if built.objective is None or not (settings.active and (settings.on_sequences or settings.on_texts)):
        return built
    train_set = getattr(built.datamodule, "train_set", None)
    if settings.on_sequences and getattr(train_set, "augment", None) is None:
        raise ConfigError(f"augment={settings.name} augments the target's training sequences, which "
                          f"strategy={strategy.name} wraps in batches of its own; use it with scratch, finetune, "
                          "distill, fusion or emcdr, or use augment=none")
    objective = with_augmentation(built.objective, built.model.backbone, settings, inputs.seed)
    if settings.on_texts:
        inputs.log.set_tags({"augment_text_cache": ",".join(objective.cache)})
    return dataclasses.replace(built, objective=objective)


def validate_config(cfg: DictConfig) -> None:
    """Types and ranges of the values every run depends on, checked before any work: one line each."""
    for key, kind, low, where in CHECKS:
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key}: {str(err).splitlines()[0]} ({where})") from None
        if value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or value == int(value))
        if not ok:
            raise ConfigError(f"{key}={value!r} must be a{'n integer' if kind is int else ' number'} ({where}); "
                              f"e.g. {key}={1 if kind is int else 0.001}")
        strict = key == "optimizer.lr"
        if low is not None and (value <= low if strict else value < low):
            raise ConfigError(f"{key}={value} must be {'>' if strict else '>='} {low} ({where})")
        if key.endswith("_share") and value > 1:
            raise ConfigError(f"{key}={value} must be between 0 and 1 ({where})")
    eval_settings(cfg)  # eval.ks, eval.monitor, eval.combine, eval.kshot
    regularize_settings(cfg)
    augment_settings(cfg)
    privacy_settings(cfg)
    if cfg.strategy.get("name") is None:
        raise ConfigError("strategy.name is missing (conf/strategy/<name>.yaml must set name)")


def check_splits(scenario: Scenario, split: DictConfig) -> None:
    """A domain whose training, validation or test split is empty cannot be trained, selected or
    evaluated: say why, in one line (the source too: its pretraining selects on its validation split)."""
    for side, t in (("target", scenario.target), ("source", scenario.source)):
        if side == "source" and t.name == NO_SOURCE:  # the target-only protocol
            continue
        for part in ("train", "valid", "test"):
            if len(getattr(t, part)) == 0:
                raise ConfigError(f"the {side} '{t.name}' has no {part} interactions with split.protocol="
                                  f"{split.get('protocol')} and split.min_user_interactions="
                                  f"{split.get('min_user_interactions')}: lower split.min_user_interactions (users "
                                  "with fewer interactions stay wholly in train)")


# ----- typed settings -----
def parse_settings(cls: type, node: Any, where: str) -> Any:
    """``node`` (a config mapping) as an instance of the dataclass ``cls``, type-checked.

    Unknown keys, values of the wrong type and the dataclass's own checks become one-line
    ConfigErrors naming ``where`` (the config node and its file) and the field.
    """
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    node = dict(node or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(node) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; the settings are {sorted(known)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in node.items():
        values[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` as ``hint`` says (dataclasses, tuples, optionals, scalars); ConfigError if it cannot be."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        if hint is Any or type(None) in args:
            return None
        raise ConfigError(f"{where} must be set (got null)")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return parse_settings(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, e.g. [..], got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and value != int(value)):
            raise ConfigError(f"{where} must be a{'n integer' if hint is int else ' number'}, got {value!r}")
        return hint(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def make_strategy(cfg: DictConfig) -> Strategy:
    """The configured strategy with its typed settings (and the ``transfer`` group if it takes it)."""
    node = cfg.strategy
    target = node.get("_target_")
    name = str(node.get("name") or "strategy")
    where = f"strategy '{name}' (conf/strategy/{name}.yaml)"
    if not target:
        raise ConfigError(f"{where} has no _target_; name the strategy class, e.g. tlexp.strategies.finetune.FineTune")
    try:
        cls = get_class(str(target))
    except Exception as err:  # noqa: BLE001 - Hydra's ImportError wrapper
        raise ConfigError(f"{where}: cannot import _target_ '{target}' ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"{where}: _target_ '{target}' is not a tlexp Strategy subclass")
    settings_node = cls.settings_node
    try:
        raw = cfg[settings_node] if settings_node != "strategy" else node
        settings_cfg = OmegaConf.to_container(raw, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {err}") from None
    settings_cfg = {k: v for k, v in settings_cfg.items() if k not in ("_target_", "name")} \
        if settings_node == "strategy" else settings_cfg
    settings = parse_settings(cls.Settings, settings_cfg, settings_node)
    transfer = parse_settings(TransferSettings, cfg.transfer, "transfer") if cls.uses_transfer else None
    return cls(name, settings, transfer)


def eval_settings(cfg: DictConfig) -> EvalSettings:
    node = OmegaConf.to_container(cfg.eval, resolve=True)
    kshot = node.pop("kshot", None) or {}
    settings = parse_settings(EvalSettings, node, "eval")
    return dataclasses.replace(settings, kshot=parse_settings(KShotSettings, kshot, "eval.kshot"))


# ----- the declared stages -----
def train_needs(cfg: DictConfig, needs: list[Need], scenario: Scenario, source_fp: dict, settings: TrainSettings,
                log_to: RunLog, timings: dict[str, float]) -> dict[str, Trained]:
    """Train (or fetch from the cache) every model a strategy declared, in order, logging how each went.

    Each runs with the random state isolated: what follows does not depend on cache hits or misses.
    """
    out: dict[str, Trained] = {}
    for need in needs:
        t0 = time.time()
        fault_point("stage")
        with isolate_rng():
            if isinstance(need, SourceModel):
                out[need.key] = _source_model(cfg, need, scenario, source_fp, settings, log_to)
            elif isinstance(need, Teacher):
                out[need.key] = _teacher(cfg, need, scenario, source_fp, settings, log_to)
            else:
                raise TypeError(f"unknown need {need!r}")
        timings[f"time/{need.tag}_s"] = time.time() - t0
    return out


def _spec(cfg: DictConfig, backbone: Any) -> dict:
    node = cfg.backbone if backbone is None else backbone
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def _source_model(cfg: DictConfig, need: SourceModel, scenario: Scenario, source_fp: dict, settings: TrainSettings,
                  log_to: RunLog) -> Trained:
    if need.domain is None:
        data, fp = scenario.source, source_fp
    else:
        data, fp = extra_source(cfg, scenario, source_fp, need.domain)
    if need.require_shared:
        users = (data.user_index(scenario.target.users) >= 0).any()
        items = bool(set(data.items.tolist()) & set(scenario.target.items.tolist()))
        if not users and not items:
            raise ConfigError(f"source '{data.name}' shares no users and no items with the target "
                              f"'{scenario.target.name}': nothing can transfer; pick sources of the same dataset")
    reweight = None
    if need.reweight or settings.reweight.get("reweight", False):
        reweight = Reweighting(scenario.target, scenario.key, reweight_settings(settings.reweight))
    pre = pretrain_source(settings, data, fp, _spec(cfg, need.backbone), reweight=reweight)
    tag = need.tag
    log_to.set_tags({f"{tag}_cache": "hit" if pre.cache_hit else "miss", f"{tag}_key": pre.key})
    if pre.reweighting is not None:
        log_to.set_tags({f"{tag}_reweight": "on"})
        log_to.log_metrics({f"{tag}/reweight_{k}": v for k, v in pre.reweighting.stats.items()})
        log_to.log_text(json.dumps({"stats": pre.reweighting.stats, "histogram": pre.reweighting.histogram},
                                   indent=1), f"{tag}_reweight.json")
    log_build_info(log_to, pre.build_info, prefix=f"{tag}_")
    monitored = "val_" + settings.monitor.partition("/")[2]  # pretrain/val_ndcg_at_10: the stage's best value
    log_to.log_metrics({f"{tag}/{monitored}": pre.meta["best_score"],
                        f"{tag}/best_epoch": pre.meta["best_epoch"], f"{tag}/seconds": pre.meta["seconds"]})
    return Trained(pre, data)


def _teacher(cfg: DictConfig, need: Teacher, scenario: Scenario, source_fp: dict, settings: TrainSettings,
             log_to: RunLog) -> Trained:
    pre, fine = finetune_teacher(settings, scenario.source, scenario.target, scenario.key, source_fp,
                                 _spec(cfg, need.backbone), need.settings)
    tag = need.tag
    log_to.set_tags({f"{tag}_pretrain_cache": "hit" if pre.cache_hit else "miss",
                     f"{tag}_cache": "hit" if fine.cache_hit else "miss", f"{tag}_key": fine.key})
    monitored = "val_" + settings.monitor.partition("/")[2]
    log_to.log_metrics({f"{tag}/pretrain_{monitored}": pre.meta["best_score"],
                        f"{tag}/{monitored}": fine.meta["best_score"],
                        f"{tag}/best_epoch": fine.meta["best_epoch"], f"{tag}/seconds": fine.meta["seconds"]})
    return Trained(fine, scenario.target)


def log_build_info(log_to: RunLog, info: dict | None, prefix: str = "") -> None:
    """Record how a backbone was built (e.g. text-embedding cache hit, encode seconds).

    ``prefix`` goes before each tag name and after ``time/`` in metric names, so that a source
    model's build (``pretrain_``) and the target model's do not overwrite each other.
    """
    if not info:
        return
    log_to.set_tags({f"{prefix}{k}": v for k, v in info.get("tags", {}).items()})
    metrics = {}
    for k, v in info.get("metrics", {}).items():
        group, _, name = k.rpartition("/")
        metrics[f"{group}/{prefix}{name}" if group else f"{prefix}{name}"] = v
    log_to.log_metrics(metrics)


# ----- the model -----
@dataclass
class Assembly:
    """Everything built for one run before training: what the pipeline trains, evaluates and serves."""

    scenario: Scenario
    strategy: Strategy
    settings: TrainSettings
    inputs: StrategyInputs
    built: Built
    backbone: Backbone
    timings: dict[str, float] = field(default_factory=dict)


def reseed(seed: int, offset: int = 0) -> None:
    """Reset all RNGs to the run's seed (+ offset)."""
    pl.seed_everything(int(seed) + offset, workers=True, verbose=False)


def assemble(cfg: DictConfig, scenario: Scenario, source_fp: dict, strategy: Strategy, log_to: RunLog) -> Assembly:
    """Run the strategy's declared stages, build the target backbone and let the strategy build its model."""
    settings = TrainSettings.from_config(cfg)
    timings: dict[str, float] = {}
    needs = strategy.needs(scenario)
    models = train_needs(cfg, needs, scenario, source_fp, settings, log_to, timings)
    seed = settings.seed

    def build(spec: Any) -> Backbone:
        backbone = build_backbone(_spec(cfg, spec), scenario.target)
        log_build_info(log_to, backbone.tracking_info())
        return backbone

    reseed(seed)
    backbone = strategy.make_backbone(scenario.target, build)
    if needs and strategy.fresh_rng_after_stages:
        reseed(seed)
    inputs = StrategyInputs(
        scenario=scenario, backbone=backbone, models=models, seed=seed, batch_size=settings.batch_size,
        num_workers=settings.num_workers, make_loss=settings.make_loss,
        build_backbone=lambda: build(strategy.backbone_spec()), log=log_to,
        reseed=lambda offset=0: reseed(seed, offset), augment=augment_settings(cfg))
    built = strategy.build(inputs)
    built = augmented(built, strategy, inputs)
    return Assembly(scenario, strategy, settings, inputs, built, backbone, timings)
