"""A Hydra Sweeper that asks Optuna (4/5) for trials and launches them with Hydra's launcher.

Each trial is one Hydra job (``tlexp run`` with the trial's overrides), so trials get the same
outputs, caches and MLflow tracking as any sweep job — nested under the sweep's parent run. The
objective is the job's return value: ``tlexp.cli.run.hydra_main`` returns ``eval.monitor`` (a validation metric) of the
selected model, never a test metric, so the search cannot overfit the test split.

At the end the best trial is printed, written to ``<sweep dir>/optimization_results.yaml`` and
tagged in MLflow: on the parent run (``optuna.best_value``, ``optuna.best_params``, params
``best.<name>``, one ``optuna/value`` point per trial) and on the best trial's own run
(``optuna.best=true``). Search space syntax is Hydra's: ``interval(a, b)``, ``tag(log,
interval(a, b))``, ``choice(x, y)``, ``range(a, b, step)``; anything else is a fixed override.

Only lightweight imports at module level: Hydra imports every ``hydra_plugins`` module at start.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

OBJECTIVE = "val/ndcg_at_10"  # eval.monitor's default: what tlexp.cli.run.hydra_main returns


def distribution_for(override: Override) -> Any:
    """An Optuna distribution for a sweep override, or the fixed value (str) for a plain one."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        assert isinstance(value, (ChoiceSweep, RangeSweep))
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        bad = [c for c in choices if not isinstance(c, (str, int, float, bool, type(None)))]
        if bad:
            from tlexp.core.errors import ConfigError

            raise ConfigError(f"hydra.sweeper.params.{override.get_key_element()}: choices must be "
                              f"str/int/float/bool/null, got {bad[0]!r}; quote lists as strings")
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            # Hydra's range is end-exclusive; Optuna's high is inclusive
            return FloatDistribution(value.start, value.stop - value.step, step=value.step)
        return IntDistribution(int(value.start), int(value.stop) - int(value.step), step=int(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise NotImplementedError(f"{override} is not supported by the Optuna sweeper (use interval, range, choice)")


def search_space(arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split ``key=value`` strings into Optuna distributions and fixed overrides."""
    from optuna.distributions import BaseDistribution

    parsed = OverridesParser.create().parse_overrides(arguments)
    space, fixed = {}, {}
    for ov in parsed:
        d = distribution_for(ov)
        if isinstance(d, BaseDistribution):
            space[ov.get_key_element()] = d
        else:
            fixed[ov.get_key_element()] = d
    for k in fixed:
        space.pop(k, None)  # a command-line value overrides the configured search dimension
    return space, fixed


class TlexpOptunaSweeper(Sweeper):
    """``hydra/sweeper=tlexp_optuna``; configured in conf/hydra/sweeper/tlexp_optuna.yaml."""

    def __init__(self, sampler: Any = None, direction: str = "maximize", storage: str | None = None,
                 study_name: str | None = None, n_trials: int = 20, n_jobs: int = 1,
                 max_failure_rate: float = 0.0, params: DictConfig | None = None) -> None:
        if direction not in ("maximize", "minimize"):
            from tlexp.core.errors import ConfigError

            raise ConfigError(f"hydra.sweeper.direction='{direction}': use maximize or minimize")
        self.sampler = sampler
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = max(1, int(n_jobs))
        self.max_failure_rate = float(max_failure_rate)
        self.params = params
        self.config: DictConfig | None = None
        self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.objective = str(OmegaConf.select(config, "eval.monitor", default=OBJECTIVE))
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        assert self.config is not None and self.launcher is not None
        params_conf = [f"{k}={v}" for k, v in (self.params or {}).items()]
        space, fixed = search_space(params_conf + list(arguments))
        if not space:
            from tlexp.core.errors import ConfigError

            raise ConfigError("the Optuna sweep has an empty search space: set hydra.sweeper.params (e.g. in "
                              "conf/hparams_search/) or give a sweep such as optimizer.lr='interval(1e-4,1e-2)'")
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                    direction=self.direction, load_if_exists=True)
        log.info("Optuna study '%s': %d trials, %d at a time, %s %s over %s", study.study_name,
                 self.n_trials, self.n_jobs, self.direction, self.objective, ", ".join(space))
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        job_of_trial: dict[int, int] = {}
        values: list[tuple[int, float]] = []
        remaining = self.n_trials
        while remaining > 0:
            batch = min(self.n_jobs, remaining)
            trials = [study.ask(space) for _ in range(batch)]
            overrides = [tuple(f"{k}={v}" for k, v in {**t.params, **fixed}.items()) for t in trials]
            for i, t in enumerate(trials):
                job_of_trial[t.number] = self.job_idx + i
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            failures = 0
            for t, ret in zip(trials, returns, strict=True):
                try:
                    value = float(ret.return_value)  # raises the job's exception if it failed
                except Exception as e:  # noqa: BLE001 - a failed trial is data for the sampler
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                    log.warning("trial %d failed: %s", t.number, e)
                    failures += 1
                    continue
                study.tell(t, value)
                values.append((t.number, value))
            if failures / len(returns) > self.max_failure_rate:
                for ret in returns:
                    _ = ret.return_value  # re-raise the first failure
            remaining -= batch
        return self._report(study, job_of_trial, values)

    def _report(self, study: Any, job_of_trial: dict[int, int], values: list[tuple[int, float]]) -> dict:
        best = study.best_trial
        result = {"name": study.study_name, "objective": self.objective, "direction": self.direction,
                  "best_trial": best.number, "best_job": job_of_trial.get(best.number),
                  "best_value": best.value, "best_params": dict(best.params), "n_trials": len(values)}
        OmegaConf.save(OmegaConf.create(result), self.sweep_dir / "optimization_results.yaml")
        result["best_run_id"] = self._tag_mlflow(result, values)
        print(f"Optuna best trial #{best.number} (job {result['best_job']}): {self.objective} = {best.value:.6f}"
              f"  params: {json.dumps(result['best_params'])}"
              + (f"  MLflow run {result['best_run_id']}" if result["best_run_id"] else ""))
        return result

    def _tag_mlflow(self, result: dict, values: list[tuple[int, float]]) -> str:
        """Tag the sweep's parent run and the best trial's run; returns the best run's id ('' if none)."""
        from tlexp.tracking.sweep import read_sweep_file, sweep_runs

        info = read_sweep_file(self.sweep_dir)
        if info is None or not info.parent_run_id:
            return ""
        import time

        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=info.tracking_uri)
        runs = sweep_runs(info)
        best_run = ""
        if "tags.sweep_job" in runs.columns:
            hit = runs[runs["tags.sweep_job"] == str(result["best_job"])]
            if len(hit):
                best_run = str(hit["run_id"].iloc[0])
                client.set_tag(best_run, "optuna.best", "true")
        pid = info.parent_run_id
        for k, v in {"optuna.objective": self.objective, "optuna.direction": self.direction,
                     "optuna.study": result["name"], "optuna.n_trials": result["n_trials"],
                     "optuna.best_trial": result["best_trial"], "optuna.best_job": result["best_job"],
                     "optuna.best_value": result["best_value"], "optuna.best_run_id": best_run,
                     "optuna.best_params": json.dumps(result["best_params"])}.items():
            client.set_tag(pid, k, str(v))
        ts = int(time.time() * 1000)
        client.log_batch(pid, metrics=[Metric("optuna/value", v, ts, n) for n, v in values],
                         params=[Param(f"best.{k}", str(v)) for k, v in result["best_params"].items()])
        return best_run
