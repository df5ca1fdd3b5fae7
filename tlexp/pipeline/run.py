"""One run, end to end — the only place that knows the order of the stages.

    scenario  -> load and split source and target (cached)
    stages    -> the models the strategy declared: source pretraining, teachers, extra sources (cached)
    build     -> the target backbone, then the strategy's model, objective and data
    fit       -> the one training loop (tlexp/training/module.py), best checkpoint restored
    finish    -> the strategy's after-fit step, then choices it left to validation
    evaluate  -> the evaluation plan: validation, test segments, k-shot, extra scorers
    track     -> one MLflow run: config, params, per-epoch and final metrics, tags, artifacts

Each stage is a call into its own module with plain objects in and out. ``run_pipeline`` returns
the final metrics so that sweepers (Optuna) can read the validation objective from the return value.
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
from omegaconf import DictConfig

from tlexp.core.console import stage
from tlexp.core.distributed import is_main_process
from tlexp.core.faults import fault_point
from tlexp.data.scenario import Scenario
from tlexp.evaluation.evaluator import top_items
from tlexp.evaluation.plan import EvaluationPlan
from tlexp.models.base import backbone_name
from tlexp.models.recommender import Recommender
from tlexp.core.errors import ConfigError
from tlexp.pipeline.build import (
    assemble,
    check_privacy,
    check_scenario,
    check_splits,
    eval_settings,
    load_scenario,
    make_strategy,
    regularize_settings,
    validate_config,
)
from tlexp.pipeline.resume import last_checkpoint
from tlexp.tracking.run import TrackedRun, UntrackedRun, git_sha
from tlexp.tracking.store import resolve_tracking_uri
from tlexp.tracking.naming import run_name as make_run_name
from tlexp.tracking.naming import source_tags
from tlexp.tracking.sweep import current_sweep, sweep_tags
from tlexp.training.module import TrainingModule, Validation
from tlexp.training.privacy import PrivateData, PrivateTraining
from tlexp.training.regularize import Regularizer
from tlexp.training.trainer import build_trainer, fit_best

log = logging.getLogger(__name__)
# The run this process is running (id, folder, store): what an error message needs to say how to resume.
CURRENT: dict[str, str] = {}


def hydra_job() -> tuple[list[str], Path | None]:
    """This Hydra job's task overrides and its log file; ``([], None)`` outside a Hydra job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ValueError, ImportError):
        return [], None
    return [str(o) for o in hc.overrides.task], Path(hc.runtime.output_dir) / f"{hc.job.name}.log"


def run_pipeline(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run one experiment as configured; returns final metrics, run id and store.

    ``overrides`` are what the user changed (they name the run and are recorded); by default the
    Hydra job's own.
    """
    t_start = time.time()
    job_overrides, log_file = hydra_job()
    overrides = job_overrides if overrides is None else list(overrides)
    validate_config(cfg)
    strategy = make_strategy(cfg)
    out_dir = Path(cfg.paths.output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ".write_test").touch()
        (out_dir / ".write_test").unlink()
    except OSError as err:
        raise ConfigError(f"cannot write to the run folder {out_dir} ({err.strerror}); point TLEXP_OUTPUTS (or "
                          "paths.output_root) at a writable folder") from None

    # scenario, strategy (typed settings), plan
    scenario, source_fp = load_scenario(cfg)
    target = scenario.target
    check_splits(scenario, cfg.split)
    check_scenario(strategy, scenario)
    reg = regularize_settings(cfg)
    if reg.active and not strategy.trains:  # before any run is recorded
        raise ConfigError(f"regularize.* adds terms to a training loss, but strategy={strategy.name} trains "
                          "nothing; drop the regularize overrides or pick a trained strategy")
    privacy = check_privacy(cfg, strategy)
    cache = "hit" if scenario.cache_hit else "miss"
    stage("data", f"{scenario.source.name} → {target.name}: {target.n_users} users, {target.n_items} items, "
                  f"{len(target.train)} training interactions (scenario cache {cache})")
    plan = EvaluationPlan(target, eval_settings(cfg), strategy.kshot_shots())

    backbone_label = backbone_name(strategy.backbone_spec() or cfg.backbone) if strategy.trains else strategy.name
    seed = int(cfg.seed)
    tags = {"strategy": strategy.name, "source": scenario.source.name, "target": target.name,
            "backbone": backbone_label, "seed": str(seed), "git_sha": git_sha(cfg.paths.root_dir),
            "scenario_key": scenario.key, "scenario_cache": "hit" if scenario.cache_hit else "miss"}
    run_name = cfg.run_name or make_run_name(strategy.name, overrides, seed, backbone_label
                                             if strategy.trains else None)
    uri = resolve_tracking_uri(cfg.logger.tracking_uri, cfg.paths.output_root)
    sweep = current_sweep()
    # a sweep's jobs all live in its parent's experiment (the UI nests runs within one experiment only)
    in_sweep = sweep is not None and bool(sweep.parent_run_id) and sweep.tracking_uri == uri
    experiment = cfg.logger.experiment_name or (sweep.experiment_name if in_sweep else "") or scenario.name
    tags.update(sweep_tags(uri))  # in a multirun: sweep_id, sweep_job, mlflow.parentRunId
    tags.update(source_tags(overrides))
    if privacy.dp:
        tags["privacy"] = "dp"

    tags["run_dir"] = str(out_dir.resolve())
    resume = cfg.get("resume") or None
    tracked = TrackedRun(uri, cfg.paths.output_root, tags, experiment, run_name, resume=resume, log_file=log_file) \
        if is_main_process() else UntrackedRun(uri)  # other DDP processes compute the same, record nothing
    CURRENT.update(run_id=tracked.run_id, run_dir=str(out_dir.resolve()), tracking_uri=uri)
    with tracked as run:
        fault_point("data")
        run.log_config(cfg)
        run.log_params(_scenario_stats(scenario))

        # stages + build
        asm = assemble(cfg, scenario, source_fp, strategy, run)
        built, timings = asm.built, asm.timings
        model = built.model
        run.log_params({"params_total": asm.backbone.num_parameters(),
                        "params_trainable": asm.backbone.num_parameters(trainable_only=True)})

        # fit
        best_path, last_step = "", 0
        if strategy.trains and built.objective is not None:
            verb = "transfer" if asm.inputs.models else "train"
            stage(verb, f"{strategy.name} · {backbone_label} on {target.name} (up to {asm.settings.max_epochs} epochs, "
                        f"selecting on {plan.monitor})")
            t0 = time.time()
            # L2-SP's starting point: the transferred weights as they are now, before any target step
            regularizer = Regularizer(reg, model, built.lr_scales) if reg.active else None
            # DP-SGD on the target's training pairs (the source stages above are not private)
            dp = PrivateTraining(privacy, len(target.train), asm.settings.batch_size, asm.settings.max_epochs) \
                if privacy.dp else None
            datamodule = PrivateData(built.datamodule, dp, seed) if dp is not None else built.datamodule
            if dp is not None:
                stage("privacy", f"DP-SGD: noise multiplier {dp.noise_multiplier:.3g}, per-example clip "
                                 f"{privacy.max_grad_norm:g}, Poisson rate {dp.sample_rate:.3g}, δ={dp.delta:.3g}"
                                 + (f", target ε={privacy.target_epsilon:g} by epoch {asm.settings.max_epochs}"
                                    if privacy.target_epsilon is not None else ""))
            module = TrainingModule(model, built.objective, asm.settings.optimisation(built.lr_scales),
                                    Validation(plan.valid, plan.ks, plan.settings.batch_size, plan.monitor,
                                               plan.epoch_extras), regularizer, dp)
            trainer = build_trainer(asm.settings, ckpt_dir=out_dir / "checkpoints", logger=run.lightning_logger(),
                                    stage="target")
            fit = fit_best(trainer, module, datamodule, last_checkpoint(out_dir) if resume else None)
            timings["time/fit_s"] = time.time() - t0
            if dp is not None:  # what was spent: every step taken, whichever checkpoint validation selected
                run.log_metrics(dp.metrics(), step=int(trainer.global_step) + 1)
            best_path = fit["best_path"]
            run.set_tags({"best_epoch": fit["best_epoch"]})
            if cfg.logger.get("learning_curves", True) and isinstance(run, TrackedRun):
                _log_learning_curves(run, out_dir, fit["best_epoch"], run_name, plan.monitor)
            last_step = int(trainer.global_step) + 1

        # finish: the strategy's own step, then the choices it leaves to validation
        strategy.after_fit(built, asm.inputs)
        model.eval()
        with torch.no_grad():
            selection = plan.select(model, strategy.candidates(built))
        if selection is not None:
            run.log_params(selection.chosen.params)
        with tempfile.TemporaryDirectory() as tmp:  # e.g. LoRA adapters, reloadable on their own
            for path in model.export(Path(tmp)):
                run.log_file(path, (Path("backbone") / path.parent.relative_to(tmp)).as_posix())

        # evaluate
        fault_point("evaluate")
        stage("evaluate", f"{len(plan.segment_sizes())} segments at k={','.join(map(str, plan.ks))}: validation, "
                          "then test (nothing is chosen on test)")
        t0 = time.time()
        with torch.no_grad():
            val_metrics = plan.validate(model)
            test_metrics = plan.test_metrics(model)
        timings["time/eval_s"] = time.time() - t0
        # The selected model's validation metrics are logged last, so the monitor (eval.monitor) of a
        # finished run is the objective a sweeper should read (never a test metric).
        # Final test values are logged at step 0: the MLflow UI draws a metric whose latest step is 0
        # as a bar per run (a bar per group when grouped by strategy), and a line over steps otherwise.
        run.log_metrics(val_metrics, step=last_step)
        run.log_metrics(test_metrics, step=0)
        extra = plan.kshot(model)
        with torch.no_grad():
            extra.update(plan.extra(strategy.extra_scorers(built)))
            extra.update(plan.timings(strategy.timed_scorers(built)))
            extra.update(strategy.report(built, asm.inputs))
        run.log_metrics(extra, step=0)
        run.log_params({f"n_users.{k}": v for k, v in plan.segment_sizes().items()})

        # artifacts
        fault_point("artifacts")
        stage("track", f"metrics, checkpoint, predictions and the run log into run {run.run_id or '-'}")
        if cfg.logger.predictions_sample:
            sample = _predictions_sample(scenario, plan, model, int(cfg.logger.predictions_sample))
            run.log_text(sample.to_csv(index=False), "predictions.csv")
        if best_path and cfg.logger.log_checkpoint:
            run.log_file(best_path, "checkpoints")
        timings["time/total_s"] = time.time() - t_start
        run.log_metrics(timings, step=0)

    return {"metrics": {**val_metrics, **test_metrics, **extra}, "run_id": run.run_id,
            "tracking_uri": run.tracking_uri, "experiment": experiment, "segments": plan.segment_sizes(),
            "tags": tags, "timings": timings, "main_process": isinstance(run, TrackedRun), "monitor": plan.monitor,
            "run_dir": str(out_dir.resolve()), "run_name": run_name,
            "example_users": [str(u) for u in target.users[:2]]}


def _scenario_stats(s: Scenario) -> dict[str, Any]:
    t = s.target
    return {
        "data.source_users": s.source.n_users, "data.source_items": s.source.n_items,
        "data.source_interactions": len(s.source.train) + len(s.source.valid) + len(s.source.test),
        "data.target_users": t.n_users, "data.target_items": t.n_items,
        "data.target_train": len(t.train), "data.target_valid": len(t.valid), "data.target_test": len(t.test),
        "data.overlap_users": int(s.overlap_users().size), "data.cold_users": int(t.cold_users.size),
        "data.valid_cold_users": int(t.valid_cold_users.size), "data.target_ordered": t.ordered,
    }


def _log_learning_curves(run: TrackedRun, out_dir: Path, best_epoch: int, title: str, monitor: str) -> None:
    """Per-epoch train loss and the monitored validation metric, from the store, as ``plots/learning_curves.png``."""
    from tlexp.analysis.plots import learning_curves

    def history(key: str) -> list[float]:
        points = sorted(run.client.get_metric_history(run.run_id, key), key=lambda m: (m.step, m.timestamp))
        return [m.value for m in points]

    loss, val = history("train/loss"), history(monitor)
    if not loss and not val:
        return
    path = learning_curves(loss, val, out_dir / "plots" / "learning_curves.png", title=title, val_name=monitor,
                           best_epoch=best_epoch if best_epoch >= 1 else None)
    run.log_file(path, "plots")


def _predictions_sample(s: Scenario, plan: EvaluationPlan, model: Recommender, n: int, k: int = 10) -> pd.DataFrame:
    """Top-k items for ``n`` test users (cold and warm mixed), with their held-out items."""
    users = plan.sample_users(n)
    with torch.no_grad():
        top = top_items(plan.test, model.score_fn(), users, k, device=model.device)
    truth = s.target.test.groupby("user")["item"].apply(list)
    items = s.target.items
    return pd.DataFrame({
        "user": s.target.users[users],
        "cold_start": np.isin(users, s.target.cold_users),
        f"top_{k}": [" ".join(items[r]) for r in top],
        "held_out": [" ".join(items[truth.get(u, [])]) for u in users],
    })
