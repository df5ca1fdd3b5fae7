"""New SQLite stores as copies of one empty, migrated store per MLflow version.

MLflow creates a SQLite store by running its whole chain of schema migrations (~60 Alembic steps):
2-2.5 s on 2 cores, every time — a tenth of a small run, paid by every first run in a new outputs
folder and by every test. The schema an MLflow version migrates to is always the same, so tlexp
migrates it once into a template (``<cache>/tlexp/mlflow-<version>-empty.db``, where ``<cache>``
is ``$XDG_CACHE_HOME`` or ``~/.cache``) and gives each new store a copy (0.1 s). The one row MLflow
writes that belongs to a particular store — the ``Default`` experiment's artifact location and
times — is rewritten after the copy to what MLflow would have written for that store.

Anything unexpected (no writable cache folder, a template that fails MLflow's own schema check)
falls back to MLflow creating the store itself: the template can make a store faster, never different.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

from tlexp.core.cache import build_lock

log = logging.getLogger(__name__)


def template_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tlexp"


def template_path() -> Path:
    import mlflow

    return template_dir() / f"mlflow-{mlflow.__version__}-empty.db"


def _build_template(target: Path) -> None:
    """Let MLflow create and migrate an empty store, then move it to ``target`` in one rename."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    uri = f"sqlite:///{tmp}"
    store = SqlAlchemyStore(uri, str(target.parent / "mlruns"))
    store.engine.dispose()  # every connection closed before the file moves
    SqlAlchemyStore._engine_map.pop(uri, None)
    os.replace(tmp, target)


def seed_store(path: Path) -> bool:
    """Put a copy of the template at ``path`` (which must not exist yet); False where it could not be
    done, and MLflow creates the store as usual. The caller holds the store's creation lock."""
    try:
        tpl = template_path()
        if not tpl.exists():
            tpl.parent.mkdir(parents=True, exist_ok=True)
            with build_lock(tpl.with_name(tpl.name + ".lock")):
                if not tpl.exists():
                    _build_template(tpl)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        shutil.copyfile(tpl, tmp)
        os.replace(tmp, path)
        return True
    except Exception as err:  # noqa: BLE001 - a faster path only: MLflow creates the store instead
        log.debug("no store template (%s): MLflow creates %s itself", err, path)
        return False


def own_default_experiment(path: Path, client) -> None:
    """The copied ``Default`` experiment (id 0) as MLflow writes it for this store: its artifact
    location under the artifact root ``client``'s store resolved, created now. Left as copied where
    the root cannot be read (tlexp never logs to ``Default``)."""
    from mlflow.utils.uri import append_to_uri_path

    root = getattr(getattr(getattr(client, "_tracking_client", None), "store", None), "artifact_root_uri", None)
    if not root:
        return
    now = int(time.time() * 1000)
    db = sqlite3.connect(path)
    try:
        with db:
            db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                       "WHERE experiment_id = 0", (append_to_uri_path(root, "0"), now, now))
    finally:
        db.close()
