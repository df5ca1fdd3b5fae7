"""One run, end to end: data -> pretrain -> transfer -> evaluate -> track.

This is the only module that knows the order of the stages; each stage is a call into its own
module with plain objects in and out. ``run_pipeline`` returns the final metrics so that sweepers
(Optuna) can read the validation objective from the return value.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from tlexp.context import RunContext
from tlexp.data.scenario import Scenario, build_scenario
from tlexp.errors import ConfigError
from tlexp.evaluation.evaluator import EvalSet, evaluate, make_eval_set, top_items
from tlexp.strategies.base import RecStrategy
from tlexp.tracking.run import TrackedRun, git_sha
from tlexp.training import build_trainer, fit_best

log = logging.getLogger(__name__)


def load_scenario(cfg: DictConfig) -> tuple[Scenario, dict]:
    """Instantiate the source/target loaders and build (or fetch) the processed scenario."""
    source, target = instantiate(cfg.source), instantiate(cfg.target)
    scenario = build_scenario(source, target, dict(cfg.split), cfg.paths.cache_dir)
    return scenario, source.fingerprint()


def _sweep_id() -> str:
    """The multirun's id (see tlexp.tracking.sweep), or '' for a single run."""
    from tlexp.tracking.sweep import current_sweep

    info = current_sweep()
    return info.sweep_id if info else ""


def _log_learning_curves(run: TrackedRun, out_dir: Path, best_epoch: int, title: str) -> None:
    """Per-epoch train loss and val ndcg of this run, from the store, as ``plots/learning_curves.png``."""
    from tlexp.plots import learning_curves

    def history(key: str) -> list[float]:
        points = sorted(run.client.get_metric_history(run.run_id, key), key=lambda m: (m.step, m.timestamp))
        return [m.value for m in points]

    loss, val = history("train/loss"), history("val/ndcg_at_10")
    if not loss and not val:
        return
    path = learning_curves(loss, val, out_dir / "plots" / "learning_curves.png", title=title,
                           best_epoch=best_epoch if best_epoch >= 0 else None)
    run.log_file(path, "plots")


def _scenario_stats(s: Scenario) -> dict[str, Any]:
    t = s.target
    return {
        "data.source_users": s.source.n_users, "data.source_items": s.source.n_items,
        "data.source_interactions": len(s.source.train) + len(s.source.valid) + len(s.source.test),
        "data.target_users": t.n_users, "data.target_items": t.n_items,
        "data.target_train": len(t.train), "data.target_valid": len(t.valid), "data.target_test": len(t.test),
        "data.overlap_users": int(s.overlap_users().size), "data.cold_users": int(t.cold_users.size),
    }


def _predictions_sample(s: Scenario, test_set: EvalSet, module: RecStrategy, n: int, k: int = 10) -> pd.DataFrame:
    """Top-k items for ``n`` test users (cold and warm mixed), with their held-out items."""
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(test_set.users, size=min(n, test_set.n_users), replace=False))
    with torch.no_grad():
        top = top_items(test_set, module.score_fn(), users, k, device=module.device)
    truth = s.target.test.groupby("user")["item"].apply(list)
    items = s.target.items
    return pd.DataFrame({
        "user": s.target.users[users],
        "cold_start": np.isin(users, s.target.cold_users),
        f"top_{k}": [" ".join(items[r]) for r in top],
        "held_out": [" ".join(items[truth.get(u, [])]) for u in users],
    })


def _segment_sizes(test_set: EvalSet) -> dict[str, int]:
    return {f"{test_set.name}{seg}": int(m.sum()) for seg, m in test_set.segments.items()}


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment as configured; returns final metrics, run id and store."""
    t_start = time.time()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scenario, source_fp = load_scenario(cfg)
    target = scenario.target
    strategy_name = cfg.strategy.name
    backbone_name = cfg.backbone.get("name", str(cfg.backbone._target_).rsplit(".", 1)[-1])
    factory = instantiate(cfg.strategy)
    strategy_cls = factory.func
    n_overlap = int(scenario.overlap_users().size)
    if strategy_cls.requires_overlap and n_overlap == 0:
        raise ConfigError(f"strategy '{cfg.strategy.name}' needs users present in both domains, but "
                          f"{scenario.source.name} and {target.name} share none; pick a scenario with "
                          f"overlap users or a strategy that does not need them (e.g. adapt, scratch)")
    if strategy_cls.requires_source and n_overlap == 0:
        log.warning("no overlap users between %s and %s: only shared weights transfer, no user embeddings",
                    scenario.source.name, target.name)
    tags = {"strategy": strategy_name, "source": scenario.source.name, "target": target.name,
            "backbone": "popular" if not strategy_cls.trains else backbone_name,
            "seed": str(cfg.seed), "git_sha": git_sha(cfg.paths.root_dir),
            "scenario_key": scenario.key, "scenario_cache": "hit" if scenario.cache_hit else "miss"}
    run_name = cfg.run_name or f"{strategy_name}-{tags['backbone']}-s{cfg.seed}"
    experiment = cfg.logger.experiment_name or scenario.name

    # In a multirun: sweep_id, sweep_job and mlflow.parentRunId (nested under the sweep's parent run)
    from tlexp.tracking.store import resolve_tracking_uri
    from tlexp.tracking.sweep import sweep_tags

    tags.update(sweep_tags(resolve_tracking_uri(cfg.logger.tracking_uri, cfg.paths.output_root)))

    with TrackedRun(cfg, tags, experiment, run_name) as run:
        run.log_config(cfg)
        run.log_params(_scenario_stats(scenario))
        ctx = RunContext(cfg, scenario, source_fp, run)
        val_set, test_set = make_eval_set(target, "valid"), make_eval_set(target, "test")
        ks = list(cfg.eval.ks)
        ctx.reseed()
        backbone = strategy_cls.make_backbone(ctx)
        scheduler = instantiate(cfg.scheduler) if cfg.scheduler else None
        module: RecStrategy = factory(backbone=backbone, loss=instantiate(cfg.loss),
                                      optimizer=instantiate(cfg.optimizer), scheduler=scheduler,
                                      val_set=val_set, ks=ks, eval_batch_size=cfg.eval.batch_size)
        module.prepare(ctx)
        timings = ctx.timings
        run.log_params({"params_total": backbone.num_parameters(),
                        "params_trainable": backbone.num_parameters(trainable_only=True)})

        best_path = ""
        last_step = 0
        if strategy_cls.trains:
            t0 = time.time()
            trainer = build_trainer(cfg, ckpt_dir=out_dir / "checkpoints", logger=run.lightning_logger())
            try:
                fit = fit_best(trainer, module, module.make_datamodule(ctx))
            except SystemExit:
                if trainer.interrupted:  # Lightning turns Ctrl-C into sys.exit(1); keep it an interrupt
                    raise KeyboardInterrupt from None
                raise
            timings["time/fit_s"] = time.time() - t0
            best_path = fit["best_path"]
            run.set_tags({"best_epoch": fit["best_epoch"]})
            if cfg.logger.get("learning_curves", True):
                _log_learning_curves(run, out_dir, fit["best_epoch"], run_name)
            last_step = int(trainer.global_step) + 1
        module.after_fit(ctx)
        with tempfile.TemporaryDirectory() as tmp:  # e.g. LoRA adapters, reloadable on their own
            for path in module.backbone.export(Path(tmp)):
                run.log_file(path, (Path("backbone") / path.parent.relative_to(tmp)).as_posix())

        t0 = time.time()
        module.eval()
        with torch.no_grad():
            # per split: a sequential backbone reads the train history for val, train + valid for test
            val_metrics = evaluate(val_set, module.score_fn("val"), ks, cfg.eval.batch_size, device=module.device)
            test_metrics = evaluate(test_set, module.score_fn("test"), ks, cfg.eval.batch_size,
                                    device=module.device)
        timings["time/eval_s"] = time.time() - t0
        # The selected model's validation metrics are logged last, so "val/ndcg_at_10" of a finished
        # run is the objective a sweeper should read (never a test metric).
        run.log_metrics(val_metrics, step=last_step)
        run.log_metrics(test_metrics, step=last_step)
        extra = module.extra_metrics(ctx)
        run.log_metrics(extra, step=last_step)
        run.log_params({f"n_users.{k}": v for k, v in _segment_sizes(test_set).items()})
        if cfg.logger.predictions_sample:
            sample = _predictions_sample(scenario, test_set, module, int(cfg.logger.predictions_sample))
            run.log_text(sample.to_csv(index=False), "predictions.csv")
        if best_path and cfg.logger.log_checkpoint:
            run.log_file(best_path, "checkpoints")
        timings["time/total_s"] = time.time() - t_start
        run.log_metrics(timings, step=last_step)

    return {"metrics": {**val_metrics, **test_metrics, **extra}, "run_id": run.run_id,
            "tracking_uri": run.tracking_uri, "experiment": experiment, "segments": _segment_sizes(test_set),
            "tags": tags, "timings": timings}
