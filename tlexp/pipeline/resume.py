"""``tlexp run resume=<run id>``: continue an interrupted run from its last checkpoint, as the same run.

The run's own logged ``config.yaml`` is what runs again (checked like any config read from a store:
only tlexp's own classes may be instantiated), in the run's own folder, where the target stage left
``checkpoints/last.ckpt`` after every epoch. Caches hold the scenario and the stages it needed, the
checkpoint holds weights, optimizer, schedulers, early stopping and the random state
(tlexp/training/callbacks.py), and the MLflow run is reopened (RUNNING, ``resumed`` counts how
often): a resumed run ends with the metrics of a run that was never stopped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from tlexp.core.config import check_targets
from tlexp.core.errors import ConfigError
from tlexp.tracking.store import open_store, resolve_tracking_uri


def resume_config(cfg: DictConfig) -> DictConfig:
    """The logged config of the run ``cfg.resume`` names, set to continue that run."""
    from mlflow.exceptions import MlflowException

    run_id = str(cfg.resume)
    uri = resolve_tracking_uri(cfg.logger.get("tracking_uri"), cfg.paths.output_root, create=False)
    client = open_store(uri, create=False)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"resume={run_id}: no such run in {uri}; list runs with `tlexp runs`") from None
    if run.info.status == "FINISHED":
        raise ConfigError(f"resume={run_id}: the run is FINISHED already; nothing to resume")
    with tempfile.TemporaryDirectory(prefix="tlexp-resume-") as tmp:
        try:
            logged = OmegaConf.load(client.download_artifacts(run_id, "config.yaml", tmp))
        except Exception:  # noqa: BLE001 - MLflow's error for a missing artifact
            raise ConfigError(f"resume={run_id}: the run logged no config.yaml, so it cannot be resumed") from None
    if not isinstance(logged, DictConfig):
        raise ConfigError(f"resume={run_id}: its config.yaml is not a mapping")
    check_targets(OmegaConf.to_container(logged, resolve=False), f"run '{run_id}' config.yaml")
    run_dir = run.data.tags.get("run_dir") or str(logged.paths.output_dir)
    if not Path(run_dir).is_dir():
        raise ConfigError(f"resume={run_id}: its folder {run_dir} is gone (checkpoints live there); rerun it instead")
    with open_dict(logged):
        logged.resume = run_id
        logged.paths.output_dir = run_dir
    return logged


def last_checkpoint(run_dir: str | Path) -> Path | None:
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.exists() else None
