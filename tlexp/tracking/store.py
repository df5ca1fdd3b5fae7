"""Which MLflow store a run logs to, opening it safely, and creating its experiment.

``MLFLOW_TRACKING_URI`` (or ``logger.tracking_uri``) wins; otherwise an embedded SQLite store
under ``outputs/`` with artifacts beside it. MLflow's plain file store is refused by current
MLflow, so the embedded default is SQLite, and the experiment's artifact location is set
explicitly (otherwise it would resolve relative to whatever the working directory is).

**Opening.** MLflow creates and migrates a SQLite store's schema the first time a process touches
it; several processes doing that at once race on the migration and can leave the store broken for
good (``table _alembic_tmp_... already exists``). :func:`open_store` does that first touch under an
exclusive file lock beside the database, so any number of concurrent first runs land. Commands that
only read (compare, recommend) open with ``create=False`` and never create a store or its folders.

**Remote stores.** A tracking server that is down must cost seconds, not minutes: unless the user
set them, tlexp bounds MLflow's HTTP retries and timeout (:data:`HTTP_DEFAULTS`), and
:func:`open_store` checks that the server answers before any work starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from tlexp.core.cache import build_lock
from tlexp.core.errors import TlexpError
from tlexp.tracking.store_template import own_default_experiment, seed_store

EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "mlartifacts"
# MLflow's own environment variables, set only where the user has not set them
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}


class StoreUnavailable(TlexpError):
    """The tracking store cannot be reached or does not exist."""


def embedded_uri(output_root: str | Path) -> str:
    return f"sqlite:///{Path(output_root).resolve() / EMBEDDED_DB}"


def resolve_tracking_uri(configured: str | None, output_root: str | Path, create: bool = True) -> str:
    """The configured/env URI, else the embedded SQLite store under ``output_root``."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return str(uri)
    if create:
        Path(output_root).mkdir(parents=True, exist_ok=True)
    return embedded_uri(output_root)


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def bound_http_retries() -> None:
    """Short, bounded HTTP retries for remote stores (the user's own MLFLOW_HTTP_* settings win)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def open_store(uri: str, create: bool = True):
    """An ``MlflowClient`` on ``uri`` whose store is known to work.

    SQLite: created and migrated under a file lock (``create=True``), or refused when it does not
    exist (``create=False``: read commands). HTTP: one cheap request, so that a server that is down
    fails in seconds with one line instead of after minutes of retries.
    """
    from mlflow.tracking import MlflowClient

    bound_http_retries()
    path = sqlite_path(uri)
    try:
        if path is not None:
            if not create and not path.exists():
                raise StoreUnavailable(f"no MLflow store at {path}: nothing has been logged there yet; run "
                                       "`tlexp run` first, or point --outputs / MLFLOW_TRACKING_URI at the store")
            path.parent.mkdir(parents=True, exist_ok=True)
            # MlflowClient() opens the store, and the first opening creates and migrates the schema: one
            # process at a time (later openings in this process reuse MLflow's cached store)
            with build_lock(path.with_name(path.name + ".lock")):
                # a new store starts as a copy of an empty, migrated one (tracking/store_template.py)
                seeded = not path.exists() and seed_store(path)
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)
                if seeded:
                    own_default_experiment(path, client)
        else:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
    except StoreUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - MLflow/requests/SQLAlchemy errors: one line
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise StoreUnavailable(f"the MLflow store {uri} cannot be used: {first}; check MLFLOW_TRACKING_URI "
                               "(is the server running and reachable?) or the store's file permissions") from None
    return client


def artifact_location(uri: str, output_root: str | Path) -> str | None:
    """Artifact root for new experiments: beside the embedded store; the server's default otherwise."""
    if uri.startswith("sqlite:///") and uri == embedded_uri(output_root):
        return (Path(output_root).resolve() / EMBEDDED_ARTIFACTS).as_uri()
    return None


# MLflow 3's UI opens an experiment on the GenAI traces view unless the experiment says what kind
# it is; this tag (the value the UI's own "custom model development" choice writes) opens it on the
# training-runs table, with charts of the runs' metrics.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(client, name: str, artifact_root: str | None) -> str:
    """Experiment id for ``name``, creating it if needed; tolerant of a concurrent creator."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if exp.tags.get("mlflow.experimentKind") is None:  # made by an older tlexp, or by hand
            for k, v in EXPERIMENT_KIND.items():
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    try:
        location = f"{artifact_root}/{name}" if artifact_root else None
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
