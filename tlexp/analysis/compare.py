"""``tlexp compare``: logged runs -> one table of mean ± std over seeds, gains over the best baseline.

Runs come from MLflow (``mlflow.search_runs`` -> pandas), so the table is built from exactly what
the store holds — the same numbers the MLflow UI shows. A group is one combination of the ``--by``
keys (tags first, then params, e.g. ``strategy`` or ``strategy,optimizer.lr``); its runs must differ
by the seed and nothing else.

**Never pool unlike runs.** Every run carries one tag per top-level config node (``config.<node>``,
a hash of the resolved node: tlexp/tracking/run.py). Inside a group the runs must agree on every
node — they differ by the seed only; across the table they must share one scenario (``source``,
``target``, ``split``, ``world``) and one evaluation (``eval``). Other nodes may differ between
groups (each strategy with its own tuned learning rate, say): they are what a group *is*, and the
table lists them. Otherwise :class:`UnlikeRuns` is raised, naming the nodes that differ and example
values; ``pool=True`` (``--pool``) builds the table anyway and says so.

**Gains against the strongest non-transfer baseline.** For each segment (all / warm / cold) the
baseline is the non-transfer strategy (popular, scratch, ease, itemknn) with the best mean on that
segment among the runs shown (or the one ``--baseline`` names), and the table names it. A gain is
paired by seed — the same seed gives both strategies the same data and, where they share it, the
same initialisation — as a relative difference with its 95 % confidence interval (Student t over
the per-seed differences) and a paired t-test p-value, Holm-corrected across every comparison shown.
Fewer than 3 paired seeds makes the interval meaningless: the table warns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlexp.analysis.plots import SEGMENTS
from tlexp.analysis.statistics import holm, paired_t_test, t_interval
from tlexp.core.errors import ConfigError
from tlexp.tracking.queries import load_runs

BASELINES = ("popular", "scratch", "ease", "itemknn")  # strategies that transfer nothing
SCENARIO_NODES = ("source", "target", "split", "world", "eval")  # one table = one scenario, one evaluation
MIN_SEEDS = 3


class UnlikeRuns(ConfigError):
    """The runs to compare differ in more than the seed and the ``--by`` keys."""


# ----------------------------------------------------------------------------- columns
def resolve_column(df: pd.DataFrame, key: str) -> str:
    """``strategy`` -> ``tags.strategy`` (tags first, then params); full names pass through."""
    for cand in (key, f"tags.{key}", f"params.{key}"):
        if cand in df.columns:
            return cand
    tags = sorted(c[5:] for c in df.columns
                  if c.startswith("tags.") and not c.startswith(("tags.mlflow", "tags.config.")))
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


# ----------------------------------------------------------------------------- what may differ
def config_nodes(df: pd.DataFrame) -> list[str]:
    return sorted(c[len("tags.config."):] for c in df.columns if c.startswith("tags.config."))


def differing_nodes(df: pd.DataFrame, nodes: Sequence[str]) -> dict[str, list[str]]:
    """For each node whose hash differs between runs (or is missing on some): a few example params."""
    out: dict[str, list[str]] = {}
    for node in nodes:
        col = f"tags.config.{node}"
        values = df[col] if col in df.columns else pd.Series([None] * len(df))
        if values.isna().any() and values.notna().any():
            out[node] = ["present on some runs only"]
        elif values.nunique(dropna=False) > 1:
            params = [c for c in df.columns if c.startswith(f"params.{node}.") or c == f"params.{node}"]
            examples = []
            for c in params:
                distinct = df[c].dropna().astype(str).unique()
                if len(distinct) > 1:
                    examples.append(f"{c[len('params.'):]}: {', '.join(sorted(distinct)[:3])}")
                if len(examples) == 2:
                    break
            out[node] = examples or ["(values differ)"]
    return out


def check_comparable(df: pd.DataFrame, by: Sequence[str], by_cols: Sequence[str]) -> dict[str, list[str]]:
    """Raise :class:`UnlikeRuns` unless every group differs by the seed only and the table holds one
    scenario; returns the nodes in which groups differ from each other (what the groups stand for)."""
    nodes = config_nodes(df)
    if not nodes:
        raise UnlikeRuns("these runs carry no config.* tags (logged before tlexp recorded them), so tlexp cannot "
                         "tell whether they are comparable; rerun them, or use --pool to compare them anyway")
    across = differing_nodes(df, [n for n in nodes if n in SCENARIO_NODES])
    problems = {f"{k} (across the table)": v for k, v in across.items()}
    for key, g in df.groupby(list(by_cols), dropna=False):
        inside = differing_nodes(g, nodes)
        label = ",".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        problems.update({f"{k} (within '{label}')": v for k, v in inside.items()})
    if problems:
        lines = "; ".join(f"{k}: {' | '.join(v)}" for k, v in problems.items())
        raise UnlikeRuns(f"the runs differ in more than the seed and --by {','.join(by)}: {lines}. Separate them "
                         f"(--by with the key that differs, --experiment or --sweep) or pass --pool to pool them "
                         "anyway")
    return differing_nodes(df, [n for n in nodes if n not in SCENARIO_NODES])


# ----------------------------------------------------------------------------- the table
def compare_table(df: pd.DataFrame, metric: str = "test/ndcg_at_10", by: Sequence[str] = ("strategy",),
                  baseline: str | None = None, pool: bool = False) -> pd.DataFrame:
    """One row per group: n, mean and std (ddof=1) per segment, and per segment the paired gain over
    that segment's best non-transfer baseline with its 95 % interval and Holm-corrected p-value."""
    by = list(by)
    by_cols = [resolve_column(df, b) for b in by]
    cols = metric_columns(df, metric)
    data = df.copy()
    for c in by_cols:
        data[c] = data[c].fillna("").astype(str)
    pooled: dict[str, list[str]] = {}
    group_nodes: dict[str, list[str]] = {}
    if pool:
        pooled = {n: v for key, g in data.groupby(by_cols, dropna=False)
                  for n, v in differing_nodes(g, config_nodes(data)).items()}
        pooled.update(differing_nodes(data, [n for n in config_nodes(data) if n in SCENARIO_NODES]))
    else:
        group_nodes = check_comparable(data, by, by_cols)
    seed_col = "tags.seed" if "tags.seed" in data.columns else resolve_column(data, "seed")
    strat_col = "tags.strategy" if "tags.strategy" in data.columns else None
    groups = {(k if isinstance(k, tuple) else (k,)): g for k, g in data.groupby(by_cols, sort=True, dropna=False)}
    rows: list[dict[str, Any]] = []
    for key, g in groups.items():
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["n"] = len(g)
        for c in cols:
            row[f"{c} mean"] = float(g[f"metrics.{c}"].mean())
            row[f"{c} std"] = float(g[f"metrics.{c}"].std())  # pandas: ddof=1; NaN for one run
        rows.append(row)
    table = pd.DataFrame(rows)
    baselines: dict[str, str] = {}
    if strat_col is not None and "strategy" in by:
        baselines = _add_gains(table, groups, by, cols, seed_col, baseline)
    warnings = []
    low = [c for c in table.columns if c.endswith(" n_pairs")]
    if low and (table[low].replace(0, np.nan).min().min() < MIN_SEEDS):
        warnings.append(f"fewer than {MIN_SEEDS} paired seeds for some gains: their intervals and p-values are "
                        "not meaningful (run more seeds)")
    table.attrs.update(metric=metric, columns=cols, by=by, baselines=baselines, pooled=pooled, warnings=warnings,
                       group_nodes=sorted(group_nodes))
    return table


def _add_gains(table: pd.DataFrame, groups: dict, by: list[str], cols: list[str], seed_col: str,
               forced: str | None) -> dict[str, str]:
    """Per segment: the baseline row, and every other row's paired gain over it (in place)."""
    si = by.index("strategy")
    others = [i for i in range(len(by)) if i != si]
    baselines: dict[str, str] = {}
    pvalues: list[tuple[int, str, float]] = []
    for c in cols:
        col = f"metrics.{c}"
        for idx, row in table.iterrows():
            key = tuple(row[b] for b in by)
            # the baseline among the groups with the same other --by values
            peers = {k: g for k, g in groups.items() if all(k[i] == key[i] for i in others)
                     and (k[si] == forced if forced else k[si] in BASELINES)}
            if forced and not peers:
                raise ConfigError(f"--baseline {forced}: no {forced} runs to compare against")
            if not peers:
                continue
            bkey = max(peers, key=lambda k: (peers[k][col].mean(), k[si]))
            baselines.setdefault(c, set()).add(bkey[si])
            table.loc[idx, f"{c} baseline"] = bkey[si]
            if bkey == key:
                table.loc[idx, f"{c} n_pairs"] = len(peers[bkey])
                continue
            g, b = groups[key], peers[bkey]
            per_g, per_b = g.groupby(seed_col)[col].mean().dropna(), b.groupby(seed_col)[col].mean().dropna()
            seeds = sorted(set(per_g.index) & set(per_b.index), key=str)
            table.loc[idx, f"{c} n_pairs"] = len(seeds)
            if not seeds:
                continue
            a, r = np.array([per_g[s] for s in seeds]), np.array([per_b[s] for s in seeds])
            base_mean = float(r.mean())
            lo, hi = t_interval(a - r)
            scale = 100.0 / base_mean if base_mean else float("nan")
            table.loc[idx, f"{c} gain_pct"] = float((a - r).mean()) * scale
            table.loc[idx, f"{c} ci_low"] = lo * scale
            table.loc[idx, f"{c} ci_high"] = hi * scale
            # differences that do not vary over seeds (two deterministic models) have no sampling
            # spread to test: no p-value, rather than scipy's p=0
            p = paired_t_test(a, r)[1] if np.std(a - r) > 0 else float("nan")
            table.loc[idx, f"{c} p"] = p
            if not math.isnan(p):
                pvalues.append((idx, c, p))
    for (idx, c, _), adj in zip(pvalues, holm([p for *_, p in pvalues]), strict=True):
        table.loc[idx, f"{c} p_holm"] = adj
    return {c: "/".join(sorted(names)) for c, names in baselines.items()}


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


def _get(row: pd.Series, key: str) -> float:
    v = row.get(key, float("nan"))
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def fmt_gain(row: pd.Series, c: str) -> str:
    """``+12.3 % [+4.1, +20.5] p=0.021`` (p Holm-corrected); ``baseline`` for the baseline itself."""
    if row.get(f"{c} baseline") == row.get("strategy"):
        return "baseline"
    g = _get(row, f"{c} gain_pct")
    if math.isnan(g):
        return "—"
    lo, hi, p = _get(row, f"{c} ci_low"), _get(row, f"{c} ci_high"), _get(row, f"{c} p_holm")
    if lo == hi:
        return f"{g:+.1f} % (the same every seed)"
    ci = f" [{lo:+.1f}, {hi:+.1f}]" if not math.isnan(lo) else ""
    ps = "" if math.isnan(p) else (f" p={p:.3f}" if p >= 0.001 else f" p={p:.1e}")
    return f"{g:+.1f} %{ci}{ps}"


def _gain_header(table: pd.DataFrame, c: str) -> str:
    base = table.attrs.get("baselines", {}).get(c)
    return f"Δ {_label(c, table.attrs['columns'])} vs {base}" if base else ""


def _best(table: pd.DataFrame, col: str) -> Any:
    vals = table[col]
    return vals.idxmax() if vals.notna().any() else None


def rich_table(table: pd.DataFrame, title: str = ""):
    """The comparison as a rich Table, the best mean per column in bold green."""
    from rich.table import Table

    cols, by = table.attrs["columns"], table.attrs["by"]
    gains = [c for c in cols if _gain_header(table, c)]
    t = Table(title=title or None, title_justify="left")
    for b in by:
        t.add_column(b, no_wrap=True)
    t.add_column("n", justify="right", no_wrap=True)
    for c in cols:
        t.add_column(_label(c, cols), justify="right", no_wrap=True)
    for c in gains:
        t.add_column(_gain_header(table, c), justify="right", overflow="fold")
    best = {c: _best(table, f"{c} mean") for c in cols}
    for i, row in table.iterrows():
        cells = [str(row[b]) for b in by] + [str(row["n"])]
        for c in cols:
            s = _fmt(row[f"{c} mean"], row[f"{c} std"])
            cells.append(f"[bold green]{s}[/bold green]" if best[c] == i else s)
        cells += [fmt_gain(row, c) for c in gains]
        t.add_row(*cells)
    return t


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub markdown: mean ± std cells (the best mean per column in bold), gains with their intervals."""
    cols, by = table.attrs["columns"], table.attrs["by"]
    gains = [c for c in cols if _gain_header(table, c)]
    head = [*by, "n", *(_label(c, cols) for c in cols), *(_gain_header(table, c) for c in gains)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    best = {c: _best(table, f"{c} mean") for c in cols}
    for i, row in table.iterrows():
        cells = [str(row[b]) for b in by] + [str(row["n"])]
        for c in cols:
            s = _fmt(row[f"{c} mean"], row[f"{c} std"])
            cells.append(f"**{s}**" if best[c] == i else s)
        cells += [fmt_gain(row, c) for c in gains]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + notes(table, markdown=True)


def notes(table: pd.DataFrame, markdown: bool = False) -> str:
    """What a reader must know about the table: baselines, the statistics, pooling, warnings."""
    out = []
    if table.attrs.get("baselines"):
        out.append("Δ: paired gain over the best non-transfer baseline of each segment (named in the header), "
                   "mean over seeds with its 95 % t-interval; p: paired t-test over seeds, Holm-corrected "
                   "across the table.")
    if table.attrs.get("group_nodes"):
        out.append(f"groups also differ in: {', '.join(table.attrs['group_nodes'])} (each group's own settings).")
    if table.attrs.get("pooled"):
        keys = ", ".join(sorted(table.attrs["pooled"]))
        out.append(f"POOLED (--pool): these runs differ in {keys}, not only in the seed.")
    out += [f"warning: {w}" for w in table.attrs.get("warnings", [])]
    if not out:
        return ""
    return ("\n" if markdown else "") + "\n".join(f"{'- ' if markdown else ''}{line}" for line in out) + "\n"


def run_compare(uri: str, experiment: str | None = None, sweep: str | None = None,
                metric: str = "test/ndcg_at_10", by: Sequence[str] = ("strategy",), baseline: str | None = None,
                csv: str | None = None, markdown: str | None = None, plot: str | None = None,
                pool: bool = False, console: Any = None) -> pd.DataFrame:
    """Load runs, build the table, print it and write the requested files; returns the table."""
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or redirected: rich would wrap at 80 columns
            console = Console(width=240)
    df = load_runs(uri, experiment, sweep)
    table = compare_table(df, metric, by, baseline, pool)
    where = f"experiment '{experiment}'" if experiment else "all experiments"
    sweep_txt = f" · sweep {df.attrs['sweep']}" if df.attrs.get("sweep") else ""
    title = f"{metric} by {','.join(by)} · {where}{sweep_txt} · {len(df)} runs · mean ± std over runs"
    console.print(rich_table(table, title))
    text = notes(table)
    if text:
        console.print(text.rstrip(), style="dim", markup=False, highlight=False)
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
