"""Run queries: which runs a store holds, as pandas, without leaking MLflow's global state.

``mlflow.search_runs`` is the one way to get runs *with* their params, tags and latest metrics as a
DataFrame; it reads the module-global tracking URI, so every call here points MLflow at the store
for the duration of the call and puts the previous state back. Used by ``tlexp compare``, sweeps
(their jobs, the parent's summary) and the Optuna sweeper.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pandas as pd

from tlexp.core.errors import ConfigError

PARENT_TAG = "tlexp.sweep_parent"  # "true" on a sweep's parent run: comparisons leave it out


@contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """Point the ``mlflow`` module at ``uri`` for a block, then restore it (env var included).

    ``mlflow.search_runs`` has no ``tracking_uri`` argument; ``mlflow.set_tracking_uri`` also
    exports MLFLOW_TRACKING_URI, which must not leak into later runs of this process.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(uri)
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets the variable and mlflow's global


def search_runs(uri: str, experiment: str | None = None, filter_string: str = "") -> pd.DataFrame:
    """``mlflow.search_runs`` on ``uri``: one experiment by name, or all of them."""
    import mlflow

    from tlexp.tracking.store import open_store

    open_store(uri, create=False)
    with tracking_uri(uri):
        if experiment:
            if mlflow.get_experiment_by_name(experiment) is None:
                names = sorted(e.name for e in mlflow.search_experiments())
                raise ConfigError(f"experiment '{experiment}' is not in the store {uri}; "
                                  f"experiments there: {', '.join(names) or 'none'}")
            return mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string)
        return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string)


def latest_sweep(df: pd.DataFrame) -> str:
    """The sweep id of the most recently started run that belongs to a sweep."""
    if "tags.sweep_id" not in df.columns:
        raise ConfigError("no run in the store belongs to a sweep; run one with `tlexp run -m ...`")
    swept = df[df["tags.sweep_id"].fillna("") != ""]
    if swept.empty:
        raise ConfigError("no run in the store belongs to a sweep; run one with `tlexp run -m ...`")
    return str(swept.sort_values("start_time")["tags.sweep_id"].iloc[-1])


def load_runs(uri: str, experiment: str | None = None, sweep: str | None = None,
              statuses: Sequence[str] = ("FINISHED",)) -> pd.DataFrame:
    """Finished job runs (sweep parents left out), optionally of one experiment and/or one sweep.

    ``sweep='latest'`` picks the most recent sweep.
    """
    df = search_runs(uri, experiment)
    if df.empty:
        where = f"experiment '{experiment}'" if experiment else "the store"
        raise ConfigError(f"no runs in {where} at {uri}; run some with `tlexp run` first "
                          "(or point MLFLOW_TRACKING_URI / --outputs at the right store)")
    if f"tags.{PARENT_TAG}" in df.columns:
        df = df[df[f"tags.{PARENT_TAG}"].fillna("") != "true"]
    if sweep:
        sweep = latest_sweep(df) if sweep == "latest" else sweep
        if "tags.sweep_id" not in df.columns or not (df["tags.sweep_id"] == sweep).any():
            known = sorted(set(df.get("tags.sweep_id", pd.Series(dtype=str)).dropna()) - {""})
            raise ConfigError(f"sweep '{sweep}' has no runs in the store {uri}; known sweeps: "
                              f"{', '.join(known[-10:]) or 'none'}")
        df = df[df["tags.sweep_id"] == sweep]
    df = df[df["status"].isin(list(statuses))]
    if df.empty:
        raise ConfigError(f"no {'/'.join(statuses)} runs to compare at {uri}"
                          + (f" in sweep '{sweep}'" if sweep else ""))
    df = df.reset_index(drop=True)
    df.attrs["sweep"] = sweep or ""
    return df
