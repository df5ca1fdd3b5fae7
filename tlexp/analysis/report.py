"""The short results table ``tlexp run`` prints (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

COLUMNS = ("recall_at_10", "ndcg_at_10", "hit_at_10", "mrr_at_10", "ndcg_at_20", "coverage_at_10")
SHORT = {"recall": "R", "ndcg": "NDCG", "hit": "HR", "mrr": "MRR", "coverage": "Cov"}


def results_table(result: dict[str, Any]) -> Table:
    m, sizes, tags = result["metrics"], result["segments"], result["tags"]
    table = Table(title=f"{tags['strategy']} · {tags['backbone']} · {tags['source']} → {tags['target']} "
                        f"· seed {tags['seed']}", title_justify="left")
    table.add_column("segment")
    table.add_column("users", justify="right")
    for c in COLUMNS:
        metric, k = c.split("_at_")
        table.add_column(f"{SHORT[metric]}@{k}", justify="right")
    for seg, label in (("test", "all"), ("test_warm", "warm"), ("test_cold", "cold")):
        if f"{seg}/ndcg_at_10" not in m:
            continue
        table.add_row(label, str(sizes.get(seg, "")), *(f"{m.get(f'{seg}/{c}', float('nan')):.4f}" for c in COLUMNS))
    for seg, label in (("val", "valid"), ("val_cold", "valid cold")):
        if f"{seg}/ndcg_at_10" in m:
            table.add_row(label, str(sizes.get(seg, "")),
                          *(f"{m.get(f'{seg}/{c}', float('nan')):.4f}" for c in COLUMNS), style="dim")
    return table


def print_result(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(results_table(result))
    console.print(f"MLflow run [bold]{escape(result['run_id'])}[/bold] in experiment "
                  f"'{escape(result['experiment'])}' at {escape(result['tracking_uri'])}", highlight=False,
                  soft_wrap=True)
    if result.get("run_dir"):
        console.print(f"run folder: {escape(str(result['run_dir']))}", highlight=False, soft_wrap=True)
    users = ",".join(result.get("example_users") or ["<user ids>"])
    console.print(f"browse: tlexp ui   ·   list: tlexp runs   ·   serve: tlexp recommend run={result['run_id']} "
                  f"users={escape(users)} history=5", highlight=False, soft_wrap=True)
