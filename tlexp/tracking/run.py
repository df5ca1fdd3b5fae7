"""One MLflow run per ``tlexp run``: created up front, always ended with a truthful status.

The run is created before any training, so that Lightning's MLFlowLogger (also in ``ddp_spawn``
children) attaches to it by id instead of creating its own, and a run that raises or is
interrupted is ended as FAILED / KILLED rather than left RUNNING. Artifacts already logged stay.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from tlexp.tracking.store import artifact_location, get_or_create_experiment, open_store

MAX_PARAM_LEN = 6000


def git_sha(root: str | Path) -> str:
    """The commit of the code that produced the run ('-dirty' if the tree has changes)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Scalar leaves of a nested config as 'a.b.c' -> str(value); lists as their string form."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:MAX_PARAM_LEN]
    return out


# What a run's config is, for telling comparable runs apart: one tag per top-level config node,
# ``config.<node>`` = a short hash of the resolved node. Nodes and leaves that do not change the
# numbers (where files go, how chatty the trainer is, the seed) are left out.
CONFIG_TAG_PREFIX = "config."
VOLATILE_NODES = ("seed", "run_name", "paths", "logger", "hydra", "num_workers", "experiment", "hparams_search",
                  "resume")
VOLATILE_LEAVES = ("trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.enable_model_summary",
                   "eval.batch_size", "backbone.encoder.batch_size", "backbone.encoder.num_threads",
                   "backbone.encoder.progress")
VOLATILE_SUFFIXES = ("dirpath", "data_dir", "cache_dir", "output_dir")  # where things are, not what they are


def _volatile(leaf: str) -> bool:
    return leaf in VOLATILE_LEAVES or leaf.rsplit(".", 1)[-1] in VOLATILE_SUFFIXES


def config_tags(resolved: Mapping[str, Any]) -> dict[str, str]:
    """``{"config.<node>": hash}`` for every top-level node of a resolved config (see above)."""
    from tlexp.core.cache import stable_hash

    flat = flatten(resolved)
    tags: dict[str, str] = {}
    for node in resolved:
        if node in VOLATILE_NODES:
            continue
        leaves = {k: v for k, v in flat.items() if (k == node or k.startswith(node + ".")) and not _volatile(k)}
        tags[f"{CONFIG_TAG_PREFIX}{node}"] = stable_hash(leaves, 10)
    return tags


class RunLog(Protocol):
    """What code below the pipeline may record about the run it is part of (strategies, stages)."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_text(self, text: str, name: str) -> None: ...


class NullLog:
    """A :class:`RunLog` that records nothing: outside a tracked run (serving, tests, DDP workers)."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass


class TrackedRun:
    """A context manager around one MLflow run: ``with TrackedRun(...) as run: ...``."""

    def __init__(self, tracking_uri: str, output_root: str | Path, tags: dict[str, str], experiment_name: str,
                 run_name: str, resume: str | None = None, log_file: str | Path | None = None):
        self.tracking_uri = tracking_uri
        self.log_path = Path(log_file) if log_file else None
        self.client = open_store(tracking_uri)
        reap_stale_runs(self.client)
        self.experiment_name = experiment_name
        self.experiment_id = get_or_create_experiment(
            self.client, experiment_name, artifact_location(self.tracking_uri, output_root))
        tags = {**tags, **process_tags()}
        if resume:  # the same MLflow run continues: RUNNING again, this process's tags
            self.client.update_run(resume, status="RUNNING")
            self.run_id = resume
            previous = self.client.get_run(resume).data.tags.get("resumed", "0")
            self.set_tags({**tags, "resumed": str(int(previous) + 1 if previous.isdigit() else 1)})
        else:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
        # Lightning's MLFlowLogger calls mlflow.set_tracking_uri, which also exports
        # MLFLOW_TRACKING_URI: remembered here, put back on exit, so that a later run in this
        # process (tests, notebooks, sweeps with the basic launcher) does not log to this store.
        self._env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.status = "RUNNING"

    # ----- logging -----
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i: i + 100])

    def log_config(self, cfg: DictConfig) -> None:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved.pop("resume", None)  # how this process was started, not what the run is (a resumed run logs it again)
        self.log_params(flatten(resolved))
        self.set_tags(config_tags(resolved))
        self.log_text(OmegaConf.to_yaml(resolved), "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i: i + 500])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i: i + 100])

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(text)
            self.client.log_artifact(self.run_id, str(p))

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def lightning_logger(self):
        """Lightning's MLFlowLogger attached to this run (per-epoch metrics), which never ends the run:
        Lightning would mark it FINISHED when ``fit`` returns, before evaluation and artifacts."""
        from tlexp.tracking.lightning_logger import RunLogger

        return RunLogger(experiment_name=self.experiment_name, tracking_uri=self.tracking_uri,
                         run_id=self.run_id, log_model=False)

    def _log_the_log(self) -> None:
        """The run's log file (stage lines, warnings, errors) as the artifact ``run.log``, also when it failed."""
        if self.log_path is None or not self.log_path.exists():
            return
        import logging

        for handler in logging.getLogger().handlers:
            handler.flush()
        try:
            self.client.log_artifact(self.run_id, str(self.log_path))
        except Exception:  # noqa: BLE001 - a log that cannot be uploaded must not hide the run's outcome
            pass

    def _restore_tracking_uri(self) -> None:
        if os.environ.get("MLFLOW_TRACKING_URI") == self._env_uri:
            return
        import mlflow

        mlflow.set_tracking_uri(self._env_uri)  # None unsets the variable and mlflow's global

    # ----- lifecycle -----
    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
            try:
                self.set_tags({"stopped_by": str(exc) or "SIGINT"})
            except Exception:  # noqa: BLE001 - never hide the interrupt behind a logging error
                pass
        else:
            status = "FAILED"
            try:
                self.set_tags({"error": f"{exc_type.__name__}: {exc}"[:5000]})
            except Exception:  # noqa: BLE001 - never hide the original error behind a logging one
                pass
        self.status = status
        self._log_the_log()
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception:  # noqa: BLE001 - the store went away: the original error matters more
            if exc_type is None:
                raise
        finally:
            self._restore_tracking_uri()
        return False


def process_tags() -> dict[str, str]:
    """Who runs the run: a later command can tell a run whose process is gone (see :func:`reap_stale_runs`)."""
    return {"tlexp.host": socket.gethostname(), "tlexp.pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_runs(client) -> list[str]:
    """Mark KILLED the RUNNING runs started on this host by a process that no longer exists (``kill -9``,
    a crash); returns their ids. Runs of other hosts are left alone: their processes cannot be seen."""
    host = socket.gethostname()
    reaped = []
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        if not experiments:
            return []
        runs = client.search_runs(experiments, filter_string=f"attributes.status = 'RUNNING' and "
                                                              f"tags.`tlexp.host` = '{host}'", max_results=500)
    except Exception:  # noqa: BLE001 - reaping is housekeeping; never fail a run over it
        return []
    for run in runs:
        pid = run.data.tags.get("tlexp.pid", "")
        if pid.isdigit() and not _alive(int(pid)):
            client.set_tag(run.info.run_id, "stopped_by", f"process {pid} gone (found by a later tlexp command)")
            client.set_terminated(run.info.run_id, status="KILLED")
            reaped.append(run.info.run_id)
    return reaped


class UntrackedRun(NullLog):
    """Stands in for :class:`TrackedRun` where a run must not be recorded: the non-main processes of
    a multi-process (DDP) run, which compute everything the main process does and record nothing."""

    run_id = ""
    client = None
    status = "RUNNING"

    def __init__(self, tracking_uri: str = "") -> None:
        self.tracking_uri = tracking_uri

    def log_config(self, cfg: DictConfig) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def lightning_logger(self) -> bool:
        return False

    def __enter__(self) -> UntrackedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return False
