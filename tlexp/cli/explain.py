"""``tlexp explain``: argument parsing and the console table; the work is :mod:`tlexp.serving.explain`."""

from __future__ import annotations

import os
from pathlib import Path

from tlexp.core.errors import ConfigError
from tlexp.serving.explain import USAGE

KEYS = {"run", "users", "items", "k", "top", "quantize", "out", "outputs", "exclude"}


def _parse(argv: list[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for a in argv:
        key, eq, value = a.lstrip("-").partition("=")
        if not eq or key not in KEYS:
            raise ConfigError(f"tlexp explain: unexpected argument '{a}'; arguments are key=value:\n{USAGE}")
        args[key] = value
    missing = [k for k in ("run", "users") if not args.get(k)]
    if missing:
        raise ConfigError(f"tlexp explain needs {' and '.join(f'{m}=' for m in missing)}\n{USAGE}")
    return args


def _int(args: dict[str, str], key: str, default: int) -> int:
    try:
        return int(args.get(key, str(default)))
    except ValueError:
        raise ConfigError(f"{key}='{args[key]}' is not a whole number; e.g. {key}={default}") from None


def main(argv: list[str]) -> int:
    """``tlexp explain run=... users=... [items=...] [k=5] [top=3] [quantize=int8]``."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tlexp.core.errors import TlexpError

    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    from tlexp.core.console import quiet_third_party

    quiet_third_party()
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    try:
        args = _parse(argv)
        k, top = _int(args, "k", 5), _int(args, "top", 3)
        from tlexp.serving.explain import explain
        from tlexp.serving.recommend import load_run, parse_users
        from tlexp.tracking.store import resolve_tracking_uri

        outputs = args.get("outputs") or os.environ.get("TLEXP_OUTPUTS", "outputs")
        from tlexp.serving.quantize import check_mode, quantize_run

        mode = check_mode(args.get("quantize", "none"))
        loaded = quantize_run(load_run(args["run"], resolve_tracking_uri(None, outputs, create=False), outputs), mode)
        users = parse_users(args["users"])
        items = [i.strip() for i in args["items"].split(",") if i.strip()] if args.get("items") else None
        table = explain(loaded, users, items, k, top, args.get("exclude", "history"))
    except TlexpError as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False)
        return 2
    method = table["method"].iloc[0] if len(table) else ""
    out = Table(title=f"why these items · run {loaded.run_id} · {loaded.cfg.strategy.name} · "
                      f"{loaded.scenario.source.name} → {loaded.scenario.target.name} · {method}", title_justify="left")
    for c, j in (("user", "left"), ("rank", "right"), ("item", "left"), ("title", "left"), ("score", "right"),
                 ("because of", "left"), ("domain", "left"), ("part", "right"), ("share", "right")):
        out.add_column(c, justify=j)
    last = None
    for r in table.itertuples(index=False):
        first = (r.user, r.rank) != last
        end = r.history_item == "(rest)"
        out.add_row(escape(str(r.user)) if first and r.rank == table[table.user == r.user]["rank"].min() else "",
                    str(r.rank) if first else "", escape(str(r.item)) if first else "",
                    escape(str(r.title)) if first else "", f"{r.score:.4f}" if first else "",
                    escape(f"{r.history_title} ({r.history_item})" if not end else r.history_title),
                    r.domain, f"{r.part:+.4f}", f"{100 * r.share:+.0f} %", end_section=end)
        last = (r.user, r.rank)
    console.print(out)
    console.print("parts add up to the score; share = part / (sum of |parts| + |rest|); "
                  "'rest' is what the user's history does not explain", highlight=False)
    if args.get("out"):
        Path(args["out"]).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args["out"], index=False)
        console.print(f"wrote {args['out']}")
    return 0
