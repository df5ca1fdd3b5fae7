"""``tlexp data list`` and ``tlexp data describe [overrides]``: printing what :mod:`tlexp.data.describe`
finds (``--json`` prints the same as JSON)."""

from __future__ import annotations

import argparse
import json
import sys

from tlexp.core.errors import TlexpError
from tlexp.data.describe import describe, listing

USAGE = """tlexp data list
tlexp data describe [--json] [hydra overrides, e.g. data=arts_office split=ratio]"""


# -- list ---------------------------------------------------------------------------------------
def print_list(console) -> None:
    from rich.table import Table

    data = listing()
    t = Table(title="presets (data=<name>)", show_lines=False)
    for col in ("preset", "source -> target", "description"):
        t.add_column(col, overflow="fold")
    for name, p in data["presets"].items():
        t.add_row(name, p["direction"], p["description"])
    console.print(t)
    t = Table(title="domains (source=<name> / target=<name>)")
    t.add_column("domain")
    t.add_column("description", overflow="fold")
    for name, d in data["domains"].items():
        t.add_row(name, d["description"])
    console.print(t)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v < 1 else (f"{v:,.0f}" if v == int(v) else f"{v:,.1f}")
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


ROWS = [("users", "users"), ("items (catalogue)", "items"), ("items with interactions", "items_with_interactions"),
        ("interactions", "interactions"), ("density", "density"), ("items with text", "items_with_text"),
        ("overlap users", "overlap_users"), ("cold-start users in test", "cold_start_users_in_test"),
        ("cold-start users in valid", "cold_start_users_in_valid"), ("order of interactions", "order"),
        ("cold-start items in test", "cold_start_items_in_test"),
        ("interactions/user median", "interactions_per_user_median"),
        ("interactions/user p90", "interactions_per_user_p90"),
        ("train", "train"), ("valid", "valid"), ("test", "test")]
CLEANING_ROWS = [("rows read", "rows"), ("- missing ids", "missing_ids"), ("- duplicates", "duplicates"),
                 ("- below min rating", "below_min_rating"), ("- k-core", "k_core"), ("kept", "kept")]


def print_describe(console, d: dict) -> None:
    from rich.table import Table

    src, tgt = d["source"], d["target"]
    split = d["split"]
    title = (f"{src['domain']} -> {tgt['domain']}   split={split.get('protocol')} "
             f"(cold-start share {split.get('cold_user_share')})   "
             f"{'from cache' if d['cache_hit'] else 'built'} {d['key']}")
    t = Table(title=title)
    t.add_column("")
    t.add_column(f"source: {src['domain']}", justify="right")
    t.add_column(f"target: {tgt['domain']}", justify="right")
    for label, key in ROWS:
        t.add_row(label, _fmt(src[key]), _fmt(tgt[key]))
    t.add_section()
    for label, key in CLEANING_ROWS:
        if key in src["cleaning"] or key in tgt["cleaning"]:
            t.add_row(f"cleaning: {label}", _fmt(src["cleaning"].get(key, "")), _fmt(tgt["cleaning"].get(key, "")))
    console.print(t)


# -- entry point ----------------------------------------------------------------------------------
def user_error(e: BaseException) -> str | None:
    """One line for errors a user can fix: a TlexpError (also when Hydra's instantiate wraps it) or a
    Hydra/OmegaConf composition error (unknown preset or domain, bad override); None otherwise."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    seen, cur = set(), e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, TlexpError):
            return str(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    if isinstance(e, (HydraException, OmegaConfBaseException)):
        return f"{str(e).strip().splitlines()[0]} (see `tlexp data list`)"
    return None


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.markup import escape

    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console()
    err = Console(stderr=True, soft_wrap=True)
    if not argv or argv[0] in ("-h", "--help", "help"):
        console.print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "list":
            print_list(console)
            return 0
        if cmd == "describe":
            parser = argparse.ArgumentParser(prog="tlexp data describe", add_help=True)
            parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
            opts, overrides = parser.parse_known_args(rest)
            d = describe(overrides)
            if opts.json:
                print(json.dumps(d, indent=1))
            else:
                print_describe(console, d)
            return 0
    except Exception as e:  # noqa: BLE001 - user errors become one red line, the rest propagates
        msg = user_error(e)
        if msg is None:
            raise
        err.print(f"[red]error:[/red] {escape(msg)}", markup=True, highlight=False, soft_wrap=True)
        return 2
    console.print(f"unknown command {cmd!r}\n{USAGE}")
    return 2


if __name__ == "__main__":  # python -m tlexp.cli.data describe data=arts_office
    raise SystemExit(main())
