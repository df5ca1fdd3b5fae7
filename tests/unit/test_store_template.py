"""New SQLite stores copied from a migrated template must be what MLflow itself would have created."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tlexp.tracking import store_template
from tlexp.tracking.store import open_store


def _schema(path: Path) -> list[tuple]:
    """Every table and index with its definition's clauses as a set: MLflow's migrations rebuild some
    tables with their constraints in hash order, which differs from process to process."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        return sorted((kind, name, frozenset(line.strip().rstrip(",") for line in (sql or "").splitlines()))
                      for kind, name, sql in rows)


def _rows(path: Path, table: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute(f"SELECT * FROM {table}"))


def test_a_seeded_store_is_the_store_mlflow_creates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # MLflow puts the Default experiment's artifacts under ./mlruns
    seeded = tmp_path / "seeded" / "mlflow.db"
    client = open_store(f"sqlite:///{seeded}")
    assert store_template.template_path().exists()  # built on first use, in the cache folder
    assert store_template.template_path().parent == tmp_path / "cache" / "tlexp"
    own = tmp_path / "own.db"
    SqlAlchemyStore(f"sqlite:///{own}", "./mlruns").engine.dispose()  # MLflow's own creation
    assert _schema(seeded) == _schema(own)
    for table in ("alembic_version", "workspaces"):
        assert _rows(seeded, table) == _rows(own, table)
    (a,), (b,) = _rows(seeded, "experiments"), _rows(own, "experiments")
    # id, name, artifact location, stage equal; the times are each store's own creation time
    assert a[:4] == b[:4] and a[6:] == b[6:] and a[4] >= b[4] - 60_000
    # and it works as a store: an experiment and a run land in it
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 1.5)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.5}


def test_every_new_store_is_its_own_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = (open_store(f"sqlite:///{tmp_path / n / 'mlflow.db'}") for n in ("a", "b"))
    first.create_experiment("only-in-a")
    assert [e.name for e in second.search_experiments()] == ["Default"]
    assert {e.name for e in first.search_experiments()} == {"Default", "only-in-a"}
    assert _schema(store_template.template_path()) == _schema(tmp_path / "a" / "mlflow.db")
    assert _rows(store_template.template_path(), "runs") == []  # the template stays empty


def test_without_a_usable_cache_folder_mlflow_creates_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    path = tmp_path / "store" / "mlflow.db"
    client = open_store(f"sqlite:///{path}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert not list(tmp_path.glob("store/.*.tmp"))  # no half-copied file left behind
