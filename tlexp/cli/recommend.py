"""``tlexp recommend``: argument parsing and the console table; the work is :mod:`tlexp.serving.recommend`."""

from __future__ import annotations

import os
from pathlib import Path

from tlexp.core.errors import ConfigError
from tlexp.serving.recommend import USAGE, load_run, parse_users, recommend, user_history


def _parse(argv: list[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for a in argv:
        if a.lstrip("-") == "explain":  # a flag: --explain
            a = "explain=true"
        key, eq, value = a.lstrip("-").partition("=")
        if not eq or key not in {"run", "users", "k", "out", "exclude", "outputs", "history", "quantize", "export",
                                 "explain"}:
            raise ConfigError(f"tlexp recommend: unexpected argument '{a}'; arguments are key=value:\n{USAGE}")
        args[key] = value
    missing = [k for k in ("run", "users") if not args.get(k) and not (k == "users" and args.get("export"))]
    if missing:
        raise ConfigError(f"tlexp recommend needs {' and '.join(f'{m}=' for m in missing)}\n{USAGE}")
    return args


def with_reasons(loaded, recs, users: list[str], k: int, exclude: str):
    """``recs`` with a ``because`` column: each item's biggest history part (tlexp explain, top=1)."""
    from tlexp.serving.explain import explain

    why = explain(loaded, users, k=k, top=1, exclude=exclude)
    why = why[why["history_item"] != "(rest)"].drop_duplicates(["user", "rank"])
    text = {(r.user, r.rank): f"{r.history_title or r.history_item} ({r.domain}, {100 * r.share:+.0f} %)"
            for r in why.itertuples(index=False)}
    return recs.assign(because=[text.get((u, r), "(no history: all from the user vector)")
                                for u, r in zip(recs["user"], recs["rank"], strict=True)])


def main(argv: list[str]) -> int:
    """``tlexp recommend run=... users=... [k=10] [out=...]``."""
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
    if not console.is_terminal:  # piped: rich would wrap titles at 80 columns
        console = Console(width=160)
    try:
        args = _parse(argv)
        try:
            k = int(args.get("k", "10"))
        except ValueError:
            raise ConfigError(f"k='{args['k']}' is not a whole number; e.g. k=10") from None
        from tlexp.tracking.store import resolve_tracking_uri

        outputs = args.get("outputs") or os.environ.get("TLEXP_OUTPUTS", "outputs")
        uri = resolve_tracking_uri(None, outputs, create=False)
        from tlexp.serving.quantize import check_mode, describe, export_scorer, quantize_run

        mode = check_mode(args.get("quantize", "int8" if args.get("export") else "none"))
        if args.get("export") and mode != "int8":
            raise ConfigError("export= writes the int8 scorer; use quantize=int8 with it (or leave quantize out)")
        loaded = quantize_run(load_run(args["run"], uri, outputs), mode)
        if args.get("export"):
            path = export_scorer(loaded.model, args["export"])
            console.print(f"wrote the int8 scorer of {loaded.scenario.target.n_users} users x "
                          f"{loaded.scenario.target.n_items} items to {path} ({describe(loaded.model)})",
                          highlight=False)
            if not args.get("users"):
                return 0
        users = parse_users(args["users"])
        recs = recommend(loaded, users, k, args.get("exclude", "history"))
        if args.get("explain", "false").lower() in ("true", "1", "yes"):
            recs = with_reasons(loaded, recs, users, k, args.get("exclude", "history"))
        try:
            n_history = int(args.get("history", "0"))
        except ValueError:
            raise ConfigError(f"history='{args['history']}' is not a whole number; e.g. history=5") from None
        history = user_history(loaded, users, n_history) if n_history > 0 else None
    except TlexpError as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(str(err))}",
                                                   highlight=False)
        return 2
    if history is not None:
        past = Table(title=f"last {n_history} known item(s) per user (what the model saw)", title_justify="left")
        for c in ("user", "item", "title", "category", "split"):
            past.add_column(c)
        for r in history.itertuples(index=False):
            past.add_row(*(escape(str(v)) for v in (r.user, r.item, r.title, r.category, r.split)))
        console.print(past)
    table = Table(title=f"top-{k} for {recs['user'].nunique()} user(s) · run {loaded.run_id} · "
                        f"{loaded.cfg.strategy.name} · {loaded.scenario.source.name} → {loaded.scenario.target.name}"
                        f"{'' if mode == 'none' else ' · ' + describe(loaded.model)}",
                  title_justify="left")
    because = "because" in recs.columns
    for c, j in (("user", "left"), ("rank", "right"), ("item", "left"), ("title", "left"), ("category", "left"),
                 ("score", "right"), ("hit", "center")) + ((("because (history item, domain, share)", "left"),)
                                                          if because else ()):
        table.add_column(c, justify=j)
    last = recs.groupby("user")["rank"].transform("max").to_numpy()
    for r, end in zip(recs.itertuples(index=False), last, strict=True):
        table.add_row(escape(str(r.user)) if r.rank == 1 else "", str(r.rank), escape(str(r.item)),
                      escape(str(r.title)), escape(str(r.category)), f"{r.score:.4f}", "✓" if r.hit else "",
                      *((escape(str(r.because)),) if because else ()), end_section=bool(r.rank == end))
    console.print(table)
    hits = int(recs["hit"].sum())
    console.print(f"{hits} of {len(recs)} recommended items are among the users' held-out test items (hit ✓)",
                  highlight=False)
    if args.get("out"):
        Path(args["out"]).parent.mkdir(parents=True, exist_ok=True)
        recs.to_csv(args["out"], index=False)
        console.print(f"wrote {args['out']}")
    return 0
