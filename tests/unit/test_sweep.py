"""Sweeps: joblib multirun nested under one MLflow parent run, the shared pretraining cache, the
Optuna sweeper, launcher/experiment presets — and `tlexp compare` on the sweep's runs.

The two sweeps run as `tlexp` subprocesses (Hydra owns the process: logging, cwd, singletons),
once per module, on a tiny world with the debug trainer.
"""

from __future__ import annotations

import os
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, tiny_cfg

SMALL = [*TINY, "world.n_users=400", "trainer.max_epochs=2", "pretrain.max_epochs=2"]


# --------------------------------------------------------------------------- joblib multirun


# --------------------------------------------------------------------------- Optuna


def test_optuna_search_space_parsing():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.tlexp_optuna_sweeper.optuna_sweeper import search_space

    space, fixed = search_space(["optimizer.lr=tag(log, interval(1e-4, 1e-2))", "a=choice(x, y)",
                                 "b=range(1, 5)", "c=interval(0, 10)", "d=tag(log, int(interval(1, 64)))",
                                 "seed=3", "a=y"])
    assert space["optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["b"] == IntDistribution(1, 4)  # Hydra's range excludes its end
    assert space["c"] == FloatDistribution(0.0, 10.0)  # Hydra's interval is float unless cast with int()
    assert space["d"] == IntDistribution(1, 64, log=True)
    assert "a" not in space and fixed == {"seed": "3", "a": "y"}  # a fixed value wins over a dimension
    space, _ = search_space(["a=choice(mean, random)"])
    assert space["a"] == CategoricalDistribution(["mean", "random"])


# --------------------------------------------------------------------------- parent-run lifecycle
def test_a_sweep_that_dies_ends_its_parent_failed(outputs: Path):
    """Hydra skips on_multirun_end when a job raises; the atexit hook must not leave a RUNNING parent."""
    from mlflow.tracking import MlflowClient

    from tlexp.pipeline import sweep as sweep_callback
    from tlexp.tracking import sweep

    cfg = tiny_cfg(outputs)
    info = sweep.start_parent_run(cfg, outputs / "multirun" / "2030-01-01" / "00-00-00")
    sweep_callback._OPEN[info.sweep_id] = info
    client = MlflowClient(info.tracking_uri)
    kid = client.create_run(info.experiment_id,
                            tags={"sweep_id": info.sweep_id, "mlflow.parentRunId": info.parent_run_id})
    client.set_terminated(kid.info.run_id, "FAILED")
    assert client.get_run(info.parent_run_id).info.status == "RUNNING"
    sweep_callback._end_open_parents()
    parent = client.get_run(info.parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.failed"] == "1"
    assert parent.data.tags["sweep.jobs"] == "1" and info.sweep_id.startswith("2030-01-01_00-00-00-")
    assert sweep.read_sweep_file(Path(info.sweep_dir)).parent_run_id == info.parent_run_id
    assert sweep.current_sweep() is None  # not inside a Hydra job: single-run behaviour


# --------------------------------------------------------------------------- presets
def test_launcher_presets_compose():
    from tlexp.core.config import compose

    par = compose(["hydra/launcher=parallel"], return_hydra_config=True).hydra.launcher
    assert par._target_.endswith("JoblibLauncher") and par.n_jobs == 2
    slurm = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True).hydra.launcher
    assert slurm._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert slurm.partition == "gpu" and slurm.timeout_min > 0
    ray = compose(["hydra/launcher=ray_cluster"], return_hydra_config=True).hydra.launcher
    assert ray._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher" and "address" in ray.ray.init
    cb = compose([], return_hydra_config=True).hydra.callbacks
    assert cb.mlflow_sweep._target_ == "tlexp.pipeline.sweep.MlflowSweepCallback"


def test_strategy_benchmark_runs_every_strategy_times_three_seeds():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from tlexp.core.config import compose, config_dir

    cfg = compose(["experiment=strategy_benchmark", "data=ecommerce"], return_hydra_config=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN and cfg.hydra.launcher.n_jobs == 2
    assert cfg.target.name == "ecommerce"
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    jobs = BasicSweeper.split_arguments(OverridesParser.create(config_loader=loader).parse_overrides(params), None)[0]
    strategies = sorted(p.stem for p in (config_dir() / "strategy").glob("*.yaml"))
    assert len(strategies) >= 3 and len(jobs) == 3 * len(strategies)
    got = sorted((dict(o.split("=", 1) for o in job)["strategy"], dict(o.split("=", 1) for o in job)["seed"])
                 for job in jobs)
    assert got == sorted(product(strategies, ["0", "1", "2"]))
    assert np.unique([s for s, _ in got]).tolist() == strategies


@pytest.mark.parametrize(("n_jobs", "cores", "threads"), [(2, 2, "1"), (-1, 2, "1"), (1, 2, "2"), (2, 8, "4"),
                                                          (-2, 8, "1")])
def test_joblib_jobs_share_the_cores(n_jobs, cores, threads, monkeypatch):
    """n_jobs jobs at once get cores // n_jobs OpenMP threads each (joblib's negative n_jobs counted as
    joblib counts them), unless the user set OMP_NUM_THREADS; other launchers are left alone."""
    from omegaconf import OmegaConf

    from tlexp.pipeline.sweep import share_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": n_jobs}
    share_cores(OmegaConf.create({"hydra": {"launcher": joblib}}))
    assert os.environ["OMP_NUM_THREADS"] == threads
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    share_cores(OmegaConf.create({"hydra": {"launcher": joblib}}))
    assert os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    share_cores(OmegaConf.create({"hydra": {"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher"
                                                                      ".BasicLauncher"}}}))
    assert "OMP_NUM_THREADS" not in os.environ
