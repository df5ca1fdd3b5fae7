"""One MLflow parent run per Hydra multirun, with every job nested under it.

Why a Hydra callback: ``on_multirun_start`` runs once, in the launching process, *before* any
job starts. Creating the store's tables, the experiment and the parent run there means parallel
jobs (joblib workers, SLURM tasks) never race on schema or experiment creation — the SQLite
"database is locked" failures of naive parallel sweeps — and they all find one parent to hang
under. The callback writes what jobs need (sweep id, parent run id, store) to
``<sweep dir>/tlexp_sweep.json``; each job reads it back through :func:`current_sweep`, because the
sweep folder is the one thing every job of a sweep knows, in any launcher, on any machine.

The parent run is ended FINISHED by ``on_multirun_end``; if the sweep dies first (a failing job
makes Hydra raise), an ``atexit`` hook ends it FAILED, so no parent is left RUNNING.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig

from tlexp.tracking.queries import PARENT_TAG, search_runs

log = logging.getLogger(__name__)

SWEEP_FILE = "tlexp_sweep.json"


@dataclass
class SweepInfo:
    """What a job of a sweep needs to know to log itself as a child of the sweep's parent run."""

    sweep_id: str
    sweep_dir: str
    tracking_uri: str = ""
    experiment_id: str = ""
    experiment_name: str = ""
    parent_run_id: str = ""
    job_num: int | None = None


DATA_NODES = ("data", "source", "target", "world", "split")  # overrides that change the scenario


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a sweep varies (``optimizer.lr=1e-3,3e-3`` -> ``optimizer.lr``), seed left out."""
    keys = []
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key != "seed" and ("," in value or value.startswith(("range(", "choice(", "interval(", "glob("))):
            keys.append(key)
    return keys


def experiment_name_for(cfg: DictConfig, overrides: list[str] | None = None) -> str:
    """The experiment a sweep and all its jobs log to: ``logger.experiment_name``; for a sweep over
    data (``data=social,ecommerce``) the swept data overrides, e.g. 'sweep data=social,ecommerce'
    (its jobs span scenarios, and the UI nests runs within one experiment only); else
    '<source>-to-<target>'."""
    if cfg.logger.get("experiment_name"):
        return str(cfg.logger.experiment_name)
    data_keys = [k for k in swept_keys(overrides or []) if k.split(".")[0] in DATA_NODES]
    swept = [o for o in overrides or [] if o.partition("=")[0].lstrip("+~") in data_keys]
    if swept:
        return "sweep " + " ".join(swept)
    names = []
    for node in (cfg.source, cfg.target):
        name = node.get("name")
        if not name:  # a loader without a configured name: ask it (instantiating reads no data)
            from hydra.utils import instantiate

            name = instantiate(node).name
        names.append(str(name))
    return names[1] if names[0] == "none" else f"{names[0]}-to-{names[1]}"  # source=none: the target alone


def new_sweep_id(sweep_dir: str | Path) -> str:
    """'<date>_<time>-<4 hex>' from the sweep folder: readable, and unique even within one second."""
    p = Path(sweep_dir)
    return f"{p.parent.name}_{p.name}-{secrets.token_hex(2)}"


def _task_overrides(cfg: DictConfig) -> list[str]:
    try:
        return [str(o) for o in cfg.hydra.overrides.task]
    except Exception:  # noqa: BLE001 - no hydra node (called outside Hydra)
        return []


def start_parent_run(cfg: DictConfig, sweep_dir: str | Path) -> SweepInfo:
    """Create store, experiment and parent run for the sweep in ``sweep_dir``; write the sweep file."""

    from tlexp.tracking.run import git_sha
    from tlexp.tracking.store import artifact_location, get_or_create_experiment, open_store, resolve_tracking_uri

    out_root = cfg.paths.output_root
    uri = resolve_tracking_uri(cfg.logger.get("tracking_uri"), out_root)
    client = open_store(uri)
    overrides = _task_overrides(cfg)
    name = experiment_name_for(cfg, overrides)
    exp_id = get_or_create_experiment(client, name, artifact_location(uri, out_root))
    sweep_dir = Path(sweep_dir)
    sweep_id = new_sweep_id(sweep_dir)
    tags = {PARENT_TAG: "true", "sweep_id": sweep_id, "sweep_dir": str(sweep_dir.resolve()),
            "sweep.overrides": " ".join(overrides)[:5000],
            "git_sha": git_sha(cfg.paths.root_dir)}
    try:
        tags["sweeper"] = str(cfg.hydra.sweeper._target_).rsplit(".", 1)[-1]
        tags["launcher"] = str(cfg.hydra.launcher._target_).rsplit(".", 1)[-1]
    except Exception:  # noqa: BLE001 - no hydra node
        pass
    run = client.create_run(exp_id, run_name=f"sweep-{sweep_id}", tags=tags)
    info = SweepInfo(sweep_id=sweep_id, sweep_dir=str(sweep_dir.resolve()), tracking_uri=uri,
                     experiment_id=exp_id, experiment_name=name, parent_run_id=run.info.run_id)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = sweep_dir / f".{SWEEP_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(info), indent=1))
    tmp.replace(sweep_dir / SWEEP_FILE)  # atomic: a job never reads half a file
    return info


def read_sweep_file(sweep_dir: str | Path) -> SweepInfo | None:
    f = Path(sweep_dir) / SWEEP_FILE
    if not f.exists():
        return None
    return SweepInfo(**json.loads(f.read_text()))


def current_sweep() -> SweepInfo | None:
    """The sweep this process runs a job of (None for a single run or outside Hydra).

    Without a sweep file (the callback was removed from conf/hydra/default.yaml) the sweep id is
    the sweep folder's name and there is no parent run.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        sweep_dir = Path(hc.sweep.dir)
        job_num = hc.job.get("num")
    except (ValueError, ImportError, AttributeError):
        return None
    info = read_sweep_file(sweep_dir) or SweepInfo(sweep_id=sweep_dir.name, sweep_dir=str(sweep_dir))
    info.job_num = None if job_num is None else int(job_num)
    return info


def sweep_tags(tracking_uri: str) -> dict[str, str]:
    """Tags that make a job's run a child of its sweep's parent: ``sweep_id``, ``sweep_job``,
    ``mlflow.parentRunId`` (the last only when the job logs to the same store as the parent)."""
    info = current_sweep()
    if info is None:
        return {"sweep_id": ""}
    tags = {"sweep_id": info.sweep_id}
    if info.job_num is not None:
        tags["sweep_job"] = str(info.job_num)
    if info.parent_run_id and info.tracking_uri == tracking_uri:
        tags["mlflow.parentRunId"] = info.parent_run_id
    return tags


def sweep_runs(info: SweepInfo, parents: bool = False):
    """The sweep's runs (children; ``parents=True`` adds the parent) as a DataFrame, all experiments."""
    df = search_runs(info.tracking_uri, filter_string=f"tags.sweep_id = '{info.sweep_id}'")
    if not parents and f"tags.{PARENT_TAG}" in df.columns:
        df = df[df[f"tags.{PARENT_TAG}"] != "true"]
    return df


def end_parent_run(info: SweepInfo, status: str | None = None) -> str:
    """End the parent run, tagging how many jobs finished/failed; returns the status set.

    ``status`` None: FINISHED. Jobs are counted from the store (not from Hydra's return values),
    so the tags say what the store actually holds.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=info.tracking_uri)
    parent = client.get_run(info.parent_run_id)
    if parent.info.status != "RUNNING":
        return parent.info.status
    kids = sweep_runs(info)
    counts = kids["status"].value_counts().to_dict() if len(kids) else {}
    for k, v in {"sweep.jobs": len(kids), "sweep.finished": counts.get("FINISHED", 0),
                 "sweep.failed": counts.get("FAILED", 0)}.items():
        client.set_tag(info.parent_run_id, k, str(v))
    status = status or "FINISHED"
    client.set_terminated(info.parent_run_id, status=status)
    return status
