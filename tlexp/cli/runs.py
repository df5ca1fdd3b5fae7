"""``tlexp runs``: the runs a store holds, newest first — what ``recommend run=`` and ``resume=`` take.

``--reap`` first marks KILLED the RUNNING runs whose process is gone (``kill -9``, a crash, a lost
machine of this host); every ``tlexp run`` does that too before it starts.
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tlexp runs", description="List logged runs, newest first.")
    p.add_argument("--experiment", help="only this MLflow experiment")
    p.add_argument("--status", help="only runs with this status (FINISHED, RUNNING, FAILED, KILLED)")
    p.add_argument("--limit", type=int, default=30, help="at most this many runs (default 30)")
    p.add_argument("--reap", action="store_true", help="mark RUNNING runs whose process is gone as KILLED first")
    p.add_argument("--outputs", default=os.environ.get("TLEXP_OUTPUTS", "outputs"),
                   help="tlexp's outputs folder (holds the embedded store; MLFLOW_TRACKING_URI wins)")
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tlexp.core.errors import TlexpError
    from tlexp.tracking.queries import search_runs
    from tlexp.tracking.run import reap_stale_runs
    from tlexp.tracking.store import open_store, resolve_tracking_uri

    console = Console()
    try:
        uri = resolve_tracking_uri(None, args.outputs, create=False)
        if args.reap:
            reaped = reap_stale_runs(open_store(uri, create=False))
            console.print(f"reaped {len(reaped)} run(s) whose process was gone: {', '.join(reaped) or '-'}")
        df = search_runs(uri, args.experiment)
    except TlexpError as err:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False)
        return 2
    if "tags.tlexp.sweep_parent" in df.columns:
        df = df[df["tags.tlexp.sweep_parent"].fillna("") != "true"]
    if args.status and len(df):
        df = df[df["status"] == args.status.upper()]
    df = df.sort_values("start_time", ascending=False).head(args.limit) if len(df) else df
    table = Table(title=f"runs at {uri}" + (f" · experiment '{args.experiment}'" if args.experiment else ""),
                  title_justify="left")
    for col in ("run id", "status", "name", "strategy", "scenario", "seed", "test ndcg@10", "started"):
        table.add_column(col, no_wrap=col in ("run id", "started"))

    def get(row, key: str) -> str:
        v = row.get(key)
        return "" if v is None or (isinstance(v, float) and v != v) else str(v)

    for _, row in df.iterrows():
        ndcg = row.get("metrics.test/ndcg_at_10")
        table.add_row(row["run_id"], row["status"], get(row, "tags.mlflow.runName"), get(row, "tags.strategy"),
                      f"{get(row, 'tags.source')} → {get(row, 'tags.target')}", get(row, "tags.seed"),
                      "" if ndcg is None or ndcg != ndcg else f"{ndcg:.4f}",
                      row["start_time"].strftime("%Y-%m-%d %H:%M") if hasattr(row["start_time"], "strftime") else "")
    console.print(table)
    return 0
