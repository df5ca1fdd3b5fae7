"""``tlexp data list`` and ``tlexp data describe [overrides]``: what data is there, and what it looks like.

``describe`` composes the run config exactly as ``tlexp run`` would (same overrides), builds (or
reads from cache) the scenario and prints, for source and target, the statistics a paper's
"datasets" table needs, plus what cleaning removed. ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tlexp.errors import TlexpError

USAGE = """tlexp data list
tlexp data describe [--json] [hydra overrides, e.g. data=arts_office split=ratio]"""


# -- list ---------------------------------------------------------------------------------------
def first_comment(path: Path) -> str:
    """The first comment line of a yaml that is not a Hydra directive: its one-line description."""
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("#") and not s.startswith("# @package"):
            return s.lstrip("#").strip()
        if s and not s.startswith("#"):
            break
    return ""


def preset_direction(path: Path) -> str:
    src = tgt = "?"
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("- override /source:"):
            src = s.split(":", 1)[1].strip()
        elif s.startswith("- override /target:"):
            tgt = s.split(":", 1)[1].strip()
    return f"{src} -> {tgt}"


def listing() -> dict:
    from tlexp.config import config_dir

    conf = config_dir()
    presets = {p.stem: {"direction": preset_direction(p), "description": first_comment(p)}
               for p in sorted((conf / "data").glob("*.yaml"))}
    domains = {p.stem: {"description": first_comment(p)} for p in sorted((conf / "domain").glob("*.yaml"))}
    return {"presets": presets, "domains": domains}


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


# -- describe -------------------------------------------------------------------------------------
def _cleaning_counts(loader, cache_dir: str | None) -> dict:
    """What cleaning removed; cached next to the scenarios (keyed by the loader's fingerprint) so a
    cached describe does not reload the raw files."""
    get = getattr(loader, "cleaning_counts", None)
    if get is None:  # e.g. the synthetic world: nothing is cleaned
        return {}
    if cache_dir is None:
        return get()
    from tlexp.cache import stable_hash

    path = Path(cache_dir) / "cleaning" / f"{loader.name}-{stable_hash(loader.fingerprint())}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    counts = get()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{np.random.randint(1 << 30)}.tmp")
    tmp.write_text(json.dumps(counts))
    tmp.replace(path)  # atomic: never a half-written file
    return counts


def domain_stats(dd, overlap: int, cleaning: dict | None = None) -> dict:
    """Statistics of one indexed, split domain (tlexp.data.scenario.DomainData)."""
    frames = [getattr(dd, s) for s in ("train", "valid", "test")]
    allx = pd.concat([f[["user", "item"]] for f in frames], ignore_index=True)
    per_user = allx.groupby("user").size().to_numpy() if len(allx) else np.zeros(1)
    n_users, n_items, n_inter = dd.n_users, dd.n_items, len(allx)
    train_items = set(np.unique(dd.train["item"].to_numpy()).tolist())
    test_items = np.unique(dd.test["item"].to_numpy())
    return {
        "domain": dd.name,
        "users": int(n_users),
        "items": int(n_items),
        "items_with_interactions": int(allx["item"].nunique()),
        "interactions": int(n_inter),
        "density": float(n_inter / max(1, n_users * n_items)),
        "items_with_text": int((dd.item_info["text"].astype(str).str.strip() != "").sum()),
        "overlap_users": int(overlap),
        "cold_start_users_in_test": int(len(dd.cold_users)),
        "cold_start_items_in_test": int(sum(i not in train_items for i in test_items.tolist())),
        "interactions_per_user_median": float(np.median(per_user)),
        "interactions_per_user_p90": float(np.percentile(per_user, 90)),
        "train": int(len(dd.train)), "valid": int(len(dd.valid)), "test": int(len(dd.test)),
        "cleaning": dict(cleaning or {}),
    }


def describe(overrides: list[str]) -> dict:
    """Compose the config, build (or read) the scenario, return the statistics of both domains."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tlexp.config import compose
    from tlexp.data.scenario import build_scenario

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(list(overrides) + [f"paths.output_dir={tmp}"])
        source, target = instantiate(cfg.source), instantiate(cfg.target)
        split = OmegaConf.to_container(cfg.split, resolve=True)
        cache_dir = cfg.paths.get("cache_dir")
        scn = build_scenario(source, target, split, cache_dir)
    overlap = int(scn.overlap_users().size)
    return {
        "scenario": scn.name, "key": scn.key, "cache_hit": bool(scn.cache_hit), "split": split,
        "source": domain_stats(scn.source, overlap, _cleaning_counts(source, cache_dir)),
        "target": domain_stats(scn.target, overlap, _cleaning_counts(target, cache_dir)),
    }


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v < 1 else (f"{v:,.0f}" if v == int(v) else f"{v:,.1f}")
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


ROWS = [("users", "users"), ("items (catalogue)", "items"), ("items with interactions", "items_with_interactions"),
        ("interactions", "interactions"), ("density", "density"), ("items with text", "items_with_text"),
        ("overlap users", "overlap_users"), ("cold-start users in test", "cold_start_users_in_test"),
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
    err = Console(stderr=True)
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


if __name__ == "__main__":  # python -m tlexp.data.cli describe data=arts_office
    raise SystemExit(main())
