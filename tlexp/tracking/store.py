"""Which MLflow store a run logs to, and creating its experiment safely.

``MLFLOW_TRACKING_URI`` (or ``logger.tracking_uri``) wins; otherwise an embedded SQLite store
under ``outputs/`` with artifacts beside it. MLflow's plain file store is refused by current
MLflow, so the embedded default is SQLite, and the experiment's artifact location is set
explicitly (otherwise it would resolve relative to whatever the working directory is).
"""

from __future__ import annotations

import os
from pathlib import Path

EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "mlartifacts"


def embedded_uri(output_root: str | Path) -> str:
    return f"sqlite:///{Path(output_root).resolve() / EMBEDDED_DB}"


def resolve_tracking_uri(configured: str | None, output_root: str | Path) -> str:
    """The configured/env URI, else the embedded SQLite store under ``output_root``."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return str(uri)
    Path(output_root).mkdir(parents=True, exist_ok=True)
    return embedded_uri(output_root)


def artifact_location(uri: str, output_root: str | Path) -> str | None:
    """Artifact root for new experiments: beside the embedded store; the server's default otherwise."""
    if uri.startswith("sqlite:///") and uri == embedded_uri(output_root):
        return (Path(output_root).resolve() / EMBEDDED_ARTIFACTS).as_uri()
    return None


def get_or_create_experiment(client, name: str, artifact_root: str | None) -> str:
    """Experiment id for ``name``, creating it if needed; tolerant of a concurrent creator."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        location = f"{artifact_root}/{name}" if artifact_root else None
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
