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
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlexp.errors import ConfigError
from tlexp.tracking.sweep import PARENT_TAG

SEGMENTS = (("all", "test"), ("warm", "test_warm"), ("cold", "test_cold"))


# ----------------------------------------------------------------------------- reading runs
@contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """Point the ``mlflow`` module at ``uri`` for a block, then restore it (env var included).

    ``mlflow.search_runs`` has no ``tracking_uri`` argument; ``mlflow.set_tracking_uri`` also
    exports MLFLOW_TRACKING_URI, which must not leak into later runs of this process.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(uri)
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets the variable and mlflow's global


def search_runs(uri: str, experiment: str | None = None, filter_string: str = "") -> pd.DataFrame:
    """``mlflow.search_runs`` on ``uri``: one experiment by name, or all of them."""
    import mlflow

    with tracking_uri(uri):
        if experiment:
            if mlflow.get_experiment_by_name(experiment) is None:
                names = sorted(e.name for e in mlflow.search_experiments())
                raise ConfigError(f"experiment '{experiment}' is not in the store {uri}; "
                                  f"experiments there: {', '.join(names) or 'none'}")
            return mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string)
        return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string)


def latest_sweep(df: pd.DataFrame) -> str:
    """The sweep id of the most recently started run that belongs to a sweep."""
    if "tags.sweep_id" not in df.columns:
        raise ConfigError("no run in the store belongs to a sweep; run one with `tlexp run -m ...`")
    swept = df[df["tags.sweep_id"].fillna("") != ""]
    if swept.empty:
        raise ConfigError("no run in the store belongs to a sweep; run one with `tlexp run -m ...`")
    return str(swept.sort_values("start_time")["tags.sweep_id"].iloc[-1])


def load_runs(uri: str, experiment: str | None = None, sweep: str | None = None,
              statuses: Sequence[str] = ("FINISHED",)) -> pd.DataFrame:
    """Finished job runs (sweep parents left out), optionally of one experiment and/or one sweep.

    ``sweep='latest'`` picks the most recent sweep.
    """
    df = search_runs(uri, experiment)
    if df.empty:
        where = f"experiment '{experiment}'" if experiment else "the store"
        raise ConfigError(f"no runs in {where} at {uri}; run some with `tlexp run` first "
                          "(or point MLFLOW_TRACKING_URI / --outputs at the right store)")
    if f"tags.{PARENT_TAG}" in df.columns:
        df = df[df[f"tags.{PARENT_TAG}"].fillna("") != "true"]
    if sweep:
        sweep = latest_sweep(df) if sweep == "latest" else sweep
        if "tags.sweep_id" not in df.columns or not (df["tags.sweep_id"] == sweep).any():
            known = sorted(set(df.get("tags.sweep_id", pd.Series(dtype=str)).dropna()) - {""})
            raise ConfigError(f"sweep '{sweep}' has no runs in the store {uri}; known sweeps: "
                              f"{', '.join(known[-10:]) or 'none'}")
        df = df[df["tags.sweep_id"] == sweep]
    df = df[df["status"].isin(list(statuses))]
    if df.empty:
        raise ConfigError(f"no {'/'.join(statuses)} runs to compare at {uri}"
                          + (f" in sweep '{sweep}'" if sweep else ""))
    df = df.reset_index(drop=True)
    df.attrs["sweep"] = sweep or ""
    return df


# ----------------------------------------------------------------------------- statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (Numerical Recipes' betai)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def paired_t_test_math(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided paired t-test with the standard library only: (t, p).

    p = I_{df/(df+t²)}(df/2, 1/2), the Student-t tail. Zero variance of the differences gives
    (nan, nan) when they are all zero and (±inf, 0) otherwise, as scipy does.
    """
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(d)
    if n < 2:
        return float("nan"), float("nan")
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    if var == 0.0:
        if mean == 0.0:
            return float("nan"), float("nan")
        return math.copysign(math.inf, mean), 0.0
    t = mean / math.sqrt(var / n)
    dof = n - 1
    return t, betainc(dof / 2.0, 0.5, dof / (dof + t * t))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """scipy's ``ttest_rel`` when scipy is installed, else :func:`paired_t_test_math` (same numbers)."""
    if len(a) < 2:
        return float("nan"), float("nan")
    try:
        import warnings

        from scipy import stats
    except ImportError:
        return paired_t_test_math(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-variance differences: scipy warns, returns inf/nan
        r = stats.ttest_rel(np.asarray(a, float), np.asarray(b, float))
    return float(r.statistic), float(r.pvalue)


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
        from tlexp.plots import compare_bars

        compare_bars(table, plot, title=f"{metric.partition('/')[2]} by {','.join(by)}{sweep_txt}")
        console.print(f"wrote {plot}")
    return table


def main(argv: list[str]) -> int:
    """``tlexp compare`` argument parsing (see ``tlexp compare --help``)."""
    import argparse

    from tlexp.errors import TlexpError
    from tlexp.tracking.store import resolve_tracking_uri

    p = argparse.ArgumentParser(prog="tlexp compare",
                                description="Compare logged runs: mean ± std over seeds per group, gain "
                                            "over scratch with a paired t-test over seeds.")
    p.add_argument("--experiment", help="MLflow experiment name (default: all experiments)")
    p.add_argument("--sweep", help="only the runs of this sweep id ('latest' for the most recent sweep)")
    p.add_argument("--metric", default="test/ndcg_at_10",
                   help="metric for the gain and p-value, e.g. test_cold/ndcg_at_10 (default test/ndcg_at_10)")
    p.add_argument("--by", default="strategy", help="comma-separated tags/params to group by (default strategy)")
    p.add_argument("--baseline", default="scratch", help="strategy the gain is measured against")
    p.add_argument("--csv", help="write the table (numbers) as CSV")
    p.add_argument("--markdown", help="write the table as GitHub markdown")
    p.add_argument("--plot", help="write a bar chart (PNG) of the metric by group and segment")
    p.add_argument("--outputs", default=os.environ.get("TLEXP_OUTPUTS", "outputs"),
                   help="tlexp's outputs folder (holds the embedded store; MLFLOW_TRACKING_URI wins)")
    args = p.parse_args(argv)
    from rich.console import Console

    try:
        uri = resolve_tracking_uri(None, args.outputs)
        run_compare(uri, args.experiment, args.sweep, args.metric, [b.strip() for b in args.by.split(",") if b.strip()],
                    args.baseline, args.csv, args.markdown, args.plot)
    except TlexpError as err:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {err}", highlight=False)
        return 2
    return 0
