"""``tlexp runs``: the runs a store holds, newest first — what ``recommend run=`` and ``resume=`` take.

``--reap`` first marks KILLED the RUNNING runs whose process is gone (``kill -9``, a crash, a lost
machine of this host); every ``tlexp run`` does that too before it starts.
"""

from __future__ import annotations

import argparse
import json
import os


HEADLINE = ("test/ndcg_at_10", "test_warm/ndcg_at_10", "test_cold/ndcg_at_10")
HEADLINE_COLS = ("ndcg@10 all", "warm", "cold")


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def get(row, key: str) -> str:
    v = row.get(key)
    return "" if v is None or (isinstance(v, float) and v != v) else str(v)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tlexp runs", description="List logged runs, newest first.")
    p.add_argument("--experiment", help="only this MLflow experiment")
    p.add_argument("--status", help="only runs with this status (FINISHED, RUNNING, FAILED, KILLED)")
    p.add_argument("--sweep", help="only the jobs of this sweep id ('latest' for the most recent sweep)")
    p.add_argument("--json", action="store_true", help="print the runs as JSON lines (id, status, name, tags, "
                                                       "headline metrics) instead of a table")
    p.add_argument("--limit", type=int, default=30, help="at most this many runs (default 30)")
    p.add_argument("--reap", action="store_true", help="mark RUNNING runs whose process is gone as KILLED first")
    p.add_argument("--outputs", default=os.environ.get("TLEXP_OUTPUTS", "outputs"),
                   help="tlexp's outputs folder (holds the embedded store; MLFLOW_TRACKING_URI wins)")
    args = p.parse_args(argv)
    import pandas as pd
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tlexp.core.errors import TlexpError
    from tlexp.tracking.queries import search_runs
    from tlexp.tracking.run import reap_stale_runs
    from tlexp.tracking.store import open_store, resolve_tracking_uri

    console = Console()
    if not console.is_terminal:  # piped: rich would squeeze the table into 80 columns
        console = Console(width=220)
    try:
        uri = resolve_tracking_uri(None, args.outputs, create=False)
        if args.reap:
            reaped = reap_stale_runs(open_store(uri, create=False))
            console.print(f"reaped {len(reaped)} run(s) whose process was gone: {', '.join(reaped) or '-'}")
        df = search_runs(uri, args.experiment)
    except TlexpError as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False)
        return 2
    if "tags.tlexp.sweep_parent" in df.columns:
        df = df[df["tags.tlexp.sweep_parent"].fillna("") != "true"]
    if args.sweep and len(df):
        from tlexp.tracking.queries import latest_sweep

        sweep = latest_sweep(df) if args.sweep == "latest" else args.sweep
        ids = df.get("tags.sweep_id", pd.Series("", index=df.index)).fillna("")
        if not (ids == sweep).any():
            known = sorted(set(ids) - {""})
            err = Console(stderr=True, soft_wrap=True)
            err.print(f"[bold red]error:[/bold red] sweep '{escape(str(sweep))}' has no runs at {escape(uri)}; "
                      f"known sweeps: {escape(', '.join(known[-10:]) or 'none')}", highlight=False)
            return 2
        df = df[ids == sweep]
    if args.status and len(df):
        df = df[df["status"] == args.status.upper()]
    df = df.sort_values("start_time", ascending=False).head(args.limit) if len(df) else df
    if args.json:
        for _, row in df.iterrows():
            print(json.dumps({"run_id": row["run_id"], "status": row["status"], "name": get(row, "tags.mlflow.runName"),
                              "experiment_id": row["experiment_id"], "strategy": get(row, "tags.strategy"),
                              "source": get(row, "tags.source"), "target": get(row, "tags.target"),
                              "seed": get(row, "tags.seed"), "sweep_id": get(row, "tags.sweep_id"),
                              "start_time": str(row["start_time"]),
                              "metrics": {k: row.get(f"metrics.{k}") for k in HEADLINE
                                          if _num(row.get(f"metrics.{k}")) is not None}}))
        return 0
    table = Table(title=f"runs at {uri}" + (f" · experiment '{args.experiment}'" if args.experiment else ""),
                  title_justify="left")
    for col in ("run id", "status", "name", "strategy", "scenario", "seed", "ndcg@10 all", "warm", "cold",
                "started"):
        table.add_column(col, no_wrap=col in ("run id", "started"), justify="right" if col in HEADLINE_COLS else "left")

    for _, row in df.iterrows():
        heads = [_num(row.get(f"metrics.{k}")) for k in HEADLINE]
        table.add_row(escape(row["run_id"]), row["status"], escape(get(row, "tags.mlflow.runName")),
                      escape(get(row, "tags.strategy")),
                      escape(f"{get(row, 'tags.source')} → {get(row, 'tags.target')}"), get(row, "tags.seed"),
                      *["" if v is None else f"{v:.4f}" for v in heads],
                      row["start_time"].strftime("%Y-%m-%d %H:%M") if hasattr(row["start_time"], "strftime") else "")
    console.print(table)
    return 0
