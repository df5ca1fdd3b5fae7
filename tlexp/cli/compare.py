"""``tlexp compare``: argument parsing; the table is built by :mod:`tlexp.analysis.compare`."""

from __future__ import annotations

import argparse
import os


def main(argv: list[str]) -> int:
    """``tlexp compare`` argument parsing (see ``tlexp compare --help``)."""
    from tlexp.analysis.compare import run_compare
    from tlexp.core.errors import TlexpError
    from tlexp.tracking.store import resolve_tracking_uri

    p = argparse.ArgumentParser(prog="tlexp compare",
                                description="Compare logged runs: mean ± std over seeds per group; per segment the "
                                            "paired gain over the best non-transfer baseline, with its 95 % "
                                            "interval and a Holm-corrected paired t-test. Refuses to pool runs "
                                            "that differ in more than the seed and --by.")
    p.add_argument("--experiment", help="MLflow experiment name (default: all experiments)")
    p.add_argument("--sweep", help="only the runs of this sweep id ('latest' for the most recent sweep)")
    p.add_argument("--metric", default="test/ndcg_at_10",
                   help="metric for the gain and p-value, e.g. test_cold/ndcg_at_10 (default test/ndcg_at_10)")
    p.add_argument("--by", default="strategy", help="comma-separated tags/params to group by (default strategy)")
    p.add_argument("--baseline", default=None,
                   help="strategy the gains are measured against (default: the best non-transfer strategy of "
                        "each segment among popular, scratch, ease, itemknn)")
    p.add_argument("--pool", action="store_true",
                   help="compare runs even if they differ in more than the seed and --by (the output says so)")
    p.add_argument("--csv", help="write the table (numbers) as CSV")
    p.add_argument("--markdown", help="write the table as GitHub markdown")
    p.add_argument("--plot", help="write a bar chart (PNG) of the metric by group and segment")
    p.add_argument("--outputs", default=os.environ.get("TLEXP_OUTPUTS", "outputs"),
                   help="tlexp's outputs folder (holds the embedded store; MLFLOW_TRACKING_URI wins)")
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.markup import escape

    try:
        uri = resolve_tracking_uri(None, args.outputs, create=False)
        run_compare(uri, args.experiment, args.sweep, args.metric, [b.strip() for b in args.by.split(",") if b.strip()],
                    args.baseline, args.csv, args.markdown, args.plot, args.pool)
    except TlexpError as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(str(err))}",
                                                   highlight=False)
        return 2
    return 0
