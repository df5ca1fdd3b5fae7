"""``tlexp recommend``: argument parsing and the console table; the work is :mod:`tlexp.serving.recommend`."""

from __future__ import annotations

import os
from pathlib import Path

from tlexp.core.errors import ConfigError
from tlexp.serving.recommend import USAGE, load_run, parse_users, recommend


def _parse(argv: list[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for a in argv:
        key, eq, value = a.lstrip("-").partition("=")
        if not eq or key not in {"run", "users", "k", "out", "exclude", "outputs"}:
            raise ConfigError(f"tlexp recommend: unexpected argument '{a}'; arguments are key=value:\n{USAGE}")
        args[key] = value
    missing = [k for k in ("run", "users") if not args.get(k)]
    if missing:
        raise ConfigError(f"tlexp recommend needs {' and '.join(f'{m}=' for m in missing)}\n{USAGE}")
    return args


def main(argv: list[str]) -> int:
    """``tlexp recommend run=... users=... [k=10] [out=...]``."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tlexp.core.errors import TlexpError

    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    console = Console()
    try:
        args = _parse(argv)
        try:
            k = int(args.get("k", "10"))
        except ValueError:
            raise ConfigError(f"k='{args['k']}' is not a whole number; e.g. k=10") from None
        from tlexp.tracking.store import resolve_tracking_uri

        outputs = args.get("outputs") or os.environ.get("TLEXP_OUTPUTS", "outputs")
        uri = resolve_tracking_uri(None, outputs, create=False)
        loaded = load_run(args["run"], uri, outputs)
        recs = recommend(loaded, parse_users(args["users"]), k, args.get("exclude", "history"))
    except TlexpError as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(str(err))}",
                                                   highlight=False)
        return 2
    table = Table(title=f"top-{k} for {recs['user'].nunique()} user(s) · run {loaded.run_id} · "
                        f"{loaded.cfg.strategy.name} · {loaded.scenario.source.name} → {loaded.scenario.target.name}",
                  title_justify="left")
    for c, j in (("user", "left"), ("rank", "right"), ("item", "left"), ("title", "left"), ("category", "left"),
                 ("score", "right")):
        table.add_column(c, justify=j)
    last = recs.groupby("user")["rank"].transform("max").to_numpy()
    for r, end in zip(recs.itertuples(index=False), last, strict=True):
        table.add_row(str(r.user) if r.rank == 1 else "", str(r.rank), str(r.item), str(r.title), str(r.category),
                      f"{r.score:.4f}", end_section=bool(r.rank == end))
    console.print(table)
    if args.get("out"):
        Path(args["out"]).parent.mkdir(parents=True, exist_ok=True)
        recs.to_csv(args["out"], index=False)
        console.print(f"wrote {args['out']}")
    return 0
