"""``tlexp compare``: logged runs -> one table of mean ± std over seeds, gain over scratch, p-value.

Runs come from MLflow (``mlflow.search_runs`` -> pandas), so the table is built from exactly what
the store holds — the same numbers the MLflow UI shows. A group is one combination of the
``--by`` keys (tags first, then params, e.g. ``strategy,backbone`` or ``strategy,optimizer.lr``);
its runs differ by seed. The gain over the baseline (``scratch``) is paired by seed: the same
seed gives both strategies the same data order and initialisation where they share it, so a
paired t-test over seeds is the honest test of "does transfer help", not an unpaired one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tlexp.analysis.plots import SEGMENTS
from tlexp.analysis.statistics import paired_t_test
from tlexp.core.errors import ConfigError
from tlexp.tracking.queries import load_runs



# ----------------------------------------------------------------------------- the table
def resolve_column(df: pd.DataFrame, key: str) -> str:
    """``strategy`` -> ``tags.strategy`` (tags first, then params); full names pass through."""
    for cand in (key, f"tags.{key}", f"params.{key}"):
        if cand in df.columns:
            return cand
    tags = sorted(c[5:] for c in df.columns if c.startswith("tags.") and not c.startswith("tags.mlflow"))
    raise ConfigError(f"--by '{key}': no tag or param of that name on these runs; tags are "
                      f"{', '.join(tags)} (or any param, e.g. optimizer.lr)")


def metric_columns(df: pd.DataFrame, metric: str) -> list[str]:
    """The chosen metric first, then the same metric on the other test segments (all/warm/cold)."""
    if f"metrics.{metric}" not in df.columns:
        known = sorted(c[8:] for c in df.columns if c.startswith("metrics.") and "/" in c)
        hint = ", ".join(k for k in known if k.startswith(("test", "val")))[:400]
        raise ConfigError(f"--metric '{metric}' is not logged by these runs; use one of: {hint}")
    split, _, name = metric.partition("/")
    cols = [metric]
    if split in {p for _, p in SEGMENTS}:
        cols = [f"{p}/{name}" for _, p in SEGMENTS if f"metrics.{p}/{name}" in df.columns]
    return cols


def compare_table(df: pd.DataFrame, metric: str = "test/ndcg_at_10", by: Sequence[str] = ("strategy",),
                  baseline: str = "scratch") -> pd.DataFrame:
    """One row per group: n, mean and std (ddof=1, over its runs) per metric column, and for
    ``metric`` the gain over ``baseline`` in % and the paired t-test over seeds.

    The baseline of a group is the group with the same other ``by`` values and
    ``strategy=baseline``; failing that, all ``baseline`` runs pooled.
    """
    by_cols = [resolve_column(df, b) for b in by]
    cols = metric_columns(df, metric)
    seed_col = "tags.seed" if "tags.seed" in df.columns else resolve_column(df, "seed")
    strat_col = "tags.strategy" if "tags.strategy" in df.columns else None
    data = df.copy()
    for c in by_cols:
        data[c] = data[c].fillna("").astype(str)
    rows: list[dict[str, Any]] = []
    groups = dict(tuple(data.groupby(by_cols, sort=True, dropna=False)))
    for key, g in groups.items():
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = {b: k for b, k in zip(by, key, strict=True)}
        row["n"] = len(g)
        for c in cols:
            vals = g[f"metrics.{c}"]
            row[f"{c} mean"] = float(vals.mean())
            row[f"{c} std"] = float(vals.std())  # pandas: ddof=1; NaN for one run
        base = _baseline_runs(data, groups, by, by_cols, key, strat_col, baseline)
        row.update(_gain(g, base, f"metrics.{metric}", seed_col))
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(metric=metric, columns=cols, by=list(by), baseline=baseline)
    return out


def _baseline_runs(data, groups, by, by_cols, key, strat_col, baseline) -> pd.DataFrame | None:
    if strat_col is None:
        return None
    if "strategy" in by or strat_col in by_cols:
        i = by_cols.index(strat_col)
        bkey = tuple(baseline if j == i else k for j, k in enumerate(key))
        if bkey in groups:
            return groups[bkey]
    pooled = data[data[strat_col] == baseline]
    return pooled if len(pooled) else None


def _gain(g: pd.DataFrame, base: pd.DataFrame | None, col: str, seed_col: str) -> dict[str, float]:
    nan = float("nan")
    if base is None or col not in g.columns:
        return {"gain_pct": nan, "p_value": nan, "n_pairs": 0, "is_baseline": False}
    mg, mb = float(g[col].mean()), float(base[col].mean())
    gain = (mg / mb - 1.0) * 100.0 if mb else nan
    per_seed_g = g.groupby(seed_col)[col].mean().dropna()
    per_seed_b = base.groupby(seed_col)[col].mean().dropna()
    seeds = sorted(set(per_seed_g.index) & set(per_seed_b.index), key=str)
    if g.index.equals(base.index):  # the baseline itself
        return {"gain_pct": 0.0, "p_value": nan, "n_pairs": len(seeds), "is_baseline": True}
    _, p = paired_t_test([per_seed_g[s] for s in seeds], [per_seed_b[s] for s in seeds])
    return {"gain_pct": gain, "p_value": p, "n_pairs": len(seeds), "is_baseline": False}


# ----------------------------------------------------------------------------- rendering
def _label(col: str, cols: Sequence[str]) -> str:
    """'test_cold/ndcg_at_10' -> 'cold' when every column is the same metric, else in full."""
    split, _, name = col.partition("/")
    seg = {p: s for s, p in SEGMENTS}.get(split)
    same_metric = len({c.partition("/")[2] for c in cols}) == 1
    return seg if seg and same_metric else col


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _fmt_gain(row: pd.Series) -> tuple[str, str]:
    g, p = row["gain_pct"], row["p_value"]
    if row.get("is_baseline", False):
        return "baseline", "—"
    gs = "—" if math.isnan(g) else f"{g:+.1f} %"
    ps = "—" if math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")
    return gs, ps


def _best(table: pd.DataFrame, col: str) -> Any:
    vals = table[col]
    return vals.idxmax() if vals.notna().any() else None


def rich_table(table: pd.DataFrame, title: str = ""):
    """The comparison as a rich Table, the best mean (and gain) per column in bold green."""
    from rich.table import Table

    cols, by, metric = table.attrs["columns"], table.attrs["by"], table.attrs["metric"]
    t = Table(title=title or None, title_justify="left")
    for b in by:
        t.add_column(b)
    t.add_column("n", justify="right")
    for c in cols:
        t.add_column(_label(c, cols) + (" *" if c == metric and len(cols) > 1 else ""), justify="right",
                     no_wrap=True)
    t.add_column(f"gain vs {table.attrs['baseline']}", justify="right", no_wrap=True)
    t.add_column("p (paired)", justify="right", no_wrap=True)
    best = {c: _best(table, f"{c} mean") for c in cols}
    best_gain = _best(table, "gain_pct")
    for i, row in table.iterrows():
        cells = [str(row[b]) for b in by] + [str(row["n"])]
        for c in cols:
            s = _fmt(row[f"{c} mean"], row[f"{c} std"])
            cells.append(f"[bold green]{s}[/bold green]" if best[c] == i else s)
        gs, ps = _fmt_gain(row)
        cells.append(f"[bold green]{gs}[/bold green]" if best_gain == i and row["gain_pct"] > 0 else gs)
        cells.append(ps)
        t.add_row(*cells)
    return t


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub markdown: mean ± std cells, the best mean per column in bold."""
    cols, by = table.attrs["columns"], table.attrs["by"]
    head = [*by, "n", *(_label(c, cols) for c in cols), f"gain vs {table.attrs['baseline']}", "p (paired t, seeds)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    best = {c: _best(table, f"{c} mean") for c in cols}
    for i, row in table.iterrows():
        cells = [str(row[b]) for b in by] + [str(row["n"])]
        for c in cols:
            s = _fmt(row[f"{c} mean"], row[f"{c} std"])
            cells.append(f"**{s}**" if best[c] == i else s)
        cells.extend(_fmt_gain(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_compare(uri: str, experiment: str | None = None, sweep: str | None = None,
                metric: str = "test/ndcg_at_10", by: Sequence[str] = ("strategy",), baseline: str = "scratch",
                csv: str | None = None, markdown: str | None = None, plot: str | None = None,
                console: Any = None) -> pd.DataFrame:
    """Load runs, build the table, print it and write the requested files; returns the table."""
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or redirected: rich would wrap at 80 columns
            console = Console(width=140)
    df = load_runs(uri, experiment, sweep)
    table = compare_table(df, metric, by, baseline)
    where = f"experiment '{experiment}'" if experiment else "all experiments"
    sweep_txt = f" · sweep {df.attrs['sweep']}" if df.attrs.get("sweep") else ""
    title = f"{metric} by {','.join(by)} · {where}{sweep_txt} · {len(df)} runs · mean ± std over runs"
    console.print(rich_table(table, title))
    console.print(f"columns: {', '.join(table.attrs['columns'])}; * gain and p for {metric} "
                  f"(p: paired t-test over seeds against {baseline}); best per column in bold", style="dim")
    if csv:
        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(csv, index=False)
        console.print(f"wrote {csv}")
    if markdown:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(f"{title}\n\n{to_markdown(table)}")
        console.print(f"wrote {markdown}")
    if plot:
        from tlexp.analysis.plots import compare_bars

        compare_bars(table, plot, title=f"{metric.partition('/')[2]} by {','.join(by)}{sweep_txt}")
        console.print(f"wrote {plot}")
    return table
