"""Issue #16's measurement: does L2-SP or augmentation make fine-tuning keep its cold-user gain without
the warm-user loss, on a real preset, against the non-transfer baselines?

Why a script: the question needs four families of fine-tuning configurations, each tuned on validation
only, then repeated over seeds, and a table that puts them next to the best non-transfer baseline per
segment. Doing that by hand invites choosing a knob on a test number; here the choice is written down
and mechanical:

1. **baselines** — ``popular``, ``itemknn``, ``ease``, ``scratch`` at every seed (their own knobs, if
   any, are chosen on validation inside the run);
2. **selection grid** at the first seed (``GRID`` below):
   - finetune:        ``transfer.lr_scale`` in {0.1, 1.0}
   - finetune+L2-SP:  lr_scale 1.0, ``regularize.l2_sp`` in {0.0001, 0.001, 0.01}
   - finetune+aug:    lr_scale in {0.1, 1.0} x ``augment=interaction_dropout augment.p`` in {0.1, 0.3}
   - finetune+both:   lr_scale 1.0 x the L2-SP weight chosen for finetune+L2-SP x augment.p in {0.1, 0.3}
3. **choice** — per family, the configuration with the highest first-seed ``val_combined/ndcg_at_10``
   (the mean of ``val/ndcg_at_10`` and ``val_cold/ndcg_at_10``; ties: the first in grid order). No test
   metric is read before every choice is made;
4. **final** — each chosen configuration at the other seeds (the first seed's run is reused);
5. **table** — every run read back from the MLflow store by its logged params (``strategy.name``,
   ``seed``, ``transfer.lr_scale``, ``regularize.l2_sp``, ``augment.name``, ``augment.p``), FINISHED
   runs only; ndcg@10 mean ± sample std over seeds, and for the fine-tuning families the warm-user
   difference to the best baseline on ``test_warm`` and the share of plain fine-tuning's cold-user gain
   (over the best baseline on ``test_cold``) that the configuration keeps.

All runs go to the MLflow experiment ``optimise-<preset>`` of the store tlexp uses
(``MLFLOW_TRACKING_URI``, else the embedded store under ``TLEXP_OUTPUTS``). A configuration whose
run already exists there is not run again, so an interrupted grid resumes; the choices, the wall time
of every tlexp process and the load average at the start and end of the preset are kept in
``<out>/<preset>/state.json``; the table goes to ``<out>/<preset>/table.md``. One tlexp process at a
time (a sweep ``-m`` per group of configurations: one start-up for several runs).

    OMP_NUM_THREADS=1 python scripts/optimise_grid.py --data arts_office --out outputs/optimise

``--seedless ease`` runs a baseline that does not depend on the seed (``popular``, ``itemknn`` and
``ease`` have no random part) at the first seed only and reuses that run for the other seeds: EASE is
a dense ``n_items²`` solve per regularisation candidate, tens of minutes on a large catalogue
(arts_office: 19,757 items). The output says which rows stand on one run, and shows for the other
baselines whether their seeds gave identical numbers.

Extra overrides after the options are added to every run (e.g. ``trainer.max_epochs=2`` for a smoke
test); runs are matched on the params above only, so give such runs their own ``--experiment``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

BASELINES = ("popular", "itemknn", "ease", "scratch")
FAMILIES = ("finetune", "finetune+L2-SP", "finetune+aug", "finetune+both")
SELECT_ON = "val_combined/ndcg_at_10"
METRICS = ("val_combined/ndcg_at_10", "test/ndcg_at_10", "test_warm/ndcg_at_10", "test_cold/ndcg_at_10")
GOAL_SHARE = 0.8  # the issue: keep at least 80 % of the cold-user gain


@dataclass(frozen=True, order=True)
class Config:
    """One configuration (without its seed); 0 means off for ``l2_sp`` and ``aug_p``."""

    strategy: str
    lr_scale: float | None = None  # None: the strategy does not transfer (baselines)
    l2_sp: float = 0.0
    aug_p: float = 0.0

    def overrides(self) -> dict[str, str]:
        out = {"strategy": self.strategy}
        if self.lr_scale is not None:
            out["transfer.lr_scale"] = str(self.lr_scale)
        if self.l2_sp:
            out["regularize.l2_sp"] = str(self.l2_sp)
        if self.aug_p:
            out["augment"] = "interaction_dropout"
            out["augment.p"] = str(self.aug_p)
        return out

    def knobs(self) -> str:
        if self.lr_scale is None:
            return "–"
        parts = [f"lr_scale {self.lr_scale:g}"]
        if self.l2_sp:
            parts.append(f"l2_sp {self.l2_sp:g}")
        if self.aug_p:
            parts.append(f"aug p {self.aug_p:g}")
        return ", ".join(parts)

    def matches(self, params: Mapping[str, Any]) -> bool:
        """Whether a run's logged params (``strategy.name``, ``transfer.lr_scale``, ...) are this config."""
        if params.get("strategy.name") != self.strategy:
            return False
        if self.lr_scale is not None and not _same(params.get("transfer.lr_scale"), self.lr_scale):
            return False
        if not _same(params.get("regularize.l2_sp", 0.0), self.l2_sp):
            return False
        aug = params.get("augment.name") or "none"
        if self.aug_p:
            return aug == "interaction_dropout" and _same(params.get("augment.p"), self.aug_p)
        return aug == "none"


def _same(value: Any, target: float) -> bool:
    try:
        return math.isclose(float(value), target, rel_tol=1e-9, abs_tol=1e-15)
    except (TypeError, ValueError):
        return False


def grid(family: str, l2_sp_chosen: float | None = None) -> list[Config]:
    """The selection grid of one family, in the order ties are broken."""
    if family == "finetune":
        return [Config("finetune", s) for s in (0.1, 1.0)]
    if family == "finetune+L2-SP":
        return [Config("finetune", 1.0, w) for w in (0.0001, 0.001, 0.01)]
    if family == "finetune+aug":
        return [Config("finetune", s, 0.0, p) for s in (0.1, 1.0) for p in (0.1, 0.3)]
    if family == "finetune+both":
        if l2_sp_chosen is None:
            raise ValueError("finetune+both needs the L2-SP weight chosen for finetune+L2-SP")
        return [Config("finetune", 1.0, l2_sp_chosen, p) for p in (0.1, 0.3)]
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")


# ---------------------------------------------------------------- pure logic (tests/unit/test_optimise_grid.py)

Run = dict[str, Any]  # {"config": Config, "seed": int, "metrics": {name: float}, "seconds": float, ...}


def runs_of(runs: Iterable[Run], config: Config, seeds: Sequence[int] | None = None) -> list[Run]:
    """The runs of ``config`` (at ``seeds``), one per seed: the latest started if a seed has several."""
    by_seed: dict[int, Run] = {}
    for r in runs:
        if r["config"] == config and (seeds is None or r["seed"] in seeds):
            if r["seed"] not in by_seed or r.get("start", 0) > by_seed[r["seed"]].get("start", 0):
                by_seed[r["seed"]] = r
    return [by_seed[s] for s in sorted(by_seed)]


def expand_seedless(runs: Sequence[Run], configs: Iterable[Config], first: int, seeds: Sequence[int]) -> list[Run]:
    """``runs`` plus, for each of ``configs`` (seed-independent baselines run once), its ``first``-seed run
    standing for every other seed that has none (marked ``reused``)."""
    out = list(runs)
    for c in configs:
        base = runs_of(runs, c, [first])
        if not base:
            continue
        have = {r["seed"] for r in runs_of(runs, c, seeds)}
        out += [{**base[0], "seed": s, "reused": True} for s in seeds if s not in have]
    return out


def seed_spread(runs: Sequence[Run], config: Config, seeds: Sequence[int], metric: str = "test/ndcg_at_10") -> float:
    """max − min of ``metric`` over the seeds' own runs (NaN for fewer than two): 0 = seed-independent."""
    vals = [r["metrics"].get(metric) for r in runs_of(runs, config, seeds) if not r.get("reused")]
    vals = [v for v in vals if _finite(v)]
    return max(vals) - min(vals) if len(vals) > 1 else math.nan


def select(candidates: Sequence[Config], runs: Iterable[Run], seed: int, key: str = SELECT_ON) -> Config:
    """The candidate with the highest ``key`` at ``seed``; ties go to the earliest candidate. Raises
    when a candidate has no run or no value: a choice over part of a grid is not the stated one."""
    runs = list(runs)
    best, best_value = None, -math.inf
    for c in candidates:
        found = runs_of(runs, c, [seed])
        if not found or not _finite(found[0]["metrics"].get(key)):
            raise LookupError(f"no {key} for {c.knobs()} at seed {seed}: cannot choose")
        value = found[0]["metrics"][key]
        if value > best_value:
            best, best_value = c, value
    assert best is not None
    return best


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n − 1; 0 for one value) and n; NaN mean for no values."""
    vals = [v for v in values if _finite(v)]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def summarise(runs: Iterable[Run], config: Config, seeds: Sequence[int]) -> dict[str, tuple[float, float, int]]:
    found = runs_of(runs, config, seeds)
    return {m: mean_std([r["metrics"].get(m, math.nan) for r in found]) for m in METRICS}


def best_baseline(summaries: Mapping[str, Mapping[str, tuple[float, float, int]]], metric: str) -> str:
    """The baseline with the highest mean ``metric`` (ties: the first given)."""
    best, best_value = "", -math.inf
    for name, s in summaries.items():
        if _finite(s[metric][0]) and s[metric][0] > best_value:
            best, best_value = name, s[metric][0]
    return best


def paired_diff(runs: Iterable[Run], a: Config, b: Config, metric: str,
                seeds: Sequence[int]) -> tuple[float, float, int]:
    """``a − b`` on ``metric``, paired by seed (seeds both have): mean, sample std, n."""
    runs = list(runs)
    ra = {r["seed"]: r["metrics"].get(metric) for r in runs_of(runs, a, seeds)}
    rb = {r["seed"]: r["metrics"].get(metric) for r in runs_of(runs, b, seeds)}
    return mean_std([ra[s] - rb[s] for s in sorted(ra.keys() & rb.keys()) if _finite(ra[s]) and _finite(rb[s])])


def kept_share(gain: float, plain_gain: float) -> float | None:
    """``gain / plain_gain``: the share of plain fine-tuning's cold-user gain a configuration keeps;
    None when plain fine-tuning has no gain (does not beat the best baseline on cold users)."""
    if not _finite(plain_gain) or plain_gain <= 0 or not _finite(gain):
        return None
    return gain / plain_gain


def fmt(m: float, s: float | None = None, digits: int = 4, signed: bool = False) -> str:
    if not _finite(m):
        return "–"
    text = f"{m:+.{digits}f}" if signed else f"{m:.{digits}f}"
    return text if s is None or not _finite(s) else f"{text} ± {s:.{digits}f}"


def results_table(runs: Sequence[Run], chosen: Mapping[str, Config], seeds: Sequence[int]) -> tuple[str, dict]:
    """The markdown table (baselines, then the chosen configuration of each family) and its numbers.
    A baseline whose runs are ``reused`` copies of one run (see :func:`expand_seedless`) says so."""
    base_cfg = {b: Config(b) for b in BASELINES}
    base = {b: summarise(runs, c, seeds) for b, c in base_cfg.items()}
    best = {m: best_baseline(base, m) for m in METRICS[1:]}
    warm_m, cold_m = "test_warm/ndcg_at_10", "test_cold/ndcg_at_10"
    best_warm, best_cold = best[warm_m], best[cold_m]
    fam = {f: summarise(runs, c, seeds) for f, c in chosen.items()}
    cold_ref = base[best_cold][cold_m][0] if best_cold else math.nan
    gains = {f: s[cold_m][0] - cold_ref for f, s in fam.items()}
    plain_gain = gains.get("finetune", math.nan)
    lines = ["| method | knobs (chosen on val_combined, seed 0) | n | val_combined | test | test_warm | test_cold "
             "| Δwarm vs best baseline (paired) | cold gain vs best baseline | share of cold gain kept | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    numbers: dict[str, Any] = {"best_baseline": best, "families": {}, "baselines": {}}

    def cells(s: Mapping[str, tuple[float, float, int]]) -> list[str]:
        return [fmt(s[m][0], s[m][1]) for m in METRICS]

    for b, s in base.items():
        n = min(v[2] for v in s.values())
        marks = [seg.split("/")[0] for seg, name in best.items() if name == b]
        label = f"{b}" + (f" (best: {', '.join(marks)})" if marks else "")
        reused = sum(1 for r in runs_of(runs, base_cfg[b], seeds) if r.get("reused"))
        n_txt = f"{n - reused} run for {n} seeds" if reused else str(n)
        lines.append(f"| {label} | – | {n_txt} | " + " | ".join(cells(s)) + " | | | | |")
        numbers["baselines"][b] = {m: s[m] for m in METRICS}
    for f, c in chosen.items():
        s = fam[f]
        n = min(v[2] for v in s.values())
        dw = paired_diff(runs, c, base_cfg[best_warm], warm_m, seeds) if best_warm else (math.nan, math.nan, 0)
        gain = gains[f]
        share = kept_share(gain, plain_gain)
        share_txt = "no gain (plain finetune does not beat the best baseline on cold)" if share is None \
            else f"{100 * share:.0f} %"
        if share is None:
            goal = "n/a"
        else:
            goal = "yes" if dw[0] >= 0 and share >= GOAL_SHARE else "no"
        lines.append(f"| {f} | {c.knobs()} | {n} | " + " | ".join(cells(s)) +
                     f" | {fmt(dw[0], dw[1], signed=True)} | {fmt(gain, signed=True)} | {share_txt} | {goal} |")
        numbers["families"][f] = {"config": asdict(c), **{m: s[m] for m in METRICS}, "delta_warm": dw,
                                  "cold_gain": gain, "kept_share": share, "goal": goal}
    return "\n".join(lines), numbers


def grid_table(runs: Sequence[Run], candidates: Mapping[str, Sequence[Config]], chosen: Mapping[str, Config],
               seed: int) -> str:
    """Every selection-grid run at ``seed``: what the choice saw (val), and test for the record only."""
    lines = ["| family | knobs | val | val_cold | **val_combined** (selects) | test | test_warm | test_cold | chosen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f, cs in candidates.items():
        for c in cs:
            found = runs_of(runs, c, [seed])
            m = found[0]["metrics"] if found else {}
            vals = [fmt(m.get(k, math.nan)) for k in ("val/ndcg_at_10", "val_cold/ndcg_at_10", SELECT_ON,
                                                      "test/ndcg_at_10", "test_warm/ndcg_at_10",
                                                      "test_cold/ndcg_at_10")]
            mark = "**✓**" if chosen.get(f) == c else ("(no run)" if not found else "")
            lines.append(f"| {f} | {c.knobs()} | " + " | ".join(vals) + f" | {mark} |")
    return "\n".join(lines)


def sweeps(configs: Sequence[tuple[Config, int]]) -> list[dict[str, list[str]]]:
    """Group (config, seed) pairs into Hydra sweeps, each a cartesian product of comma lists: one
    sweep when the pairs form such a product, else one per configuration (over its seeds)."""
    if not configs:
        return []
    rows = [{**c.overrides(), "seed": str(s)} for c, s in configs]
    keys = list(rows[0])
    if all(list(r) == keys for r in rows):
        values = {k: list(dict.fromkeys(r[k] for r in rows)) for k in keys}
        product = {tuple(v) for v in itertools.product(*values.values())}
        if product == {tuple(r[k] for k in keys) for r in rows} and len(product) == len(rows):
            return [values]
    by_config: dict[Config, list[str]] = {}
    for c, s in configs:
        by_config.setdefault(c, []).append(str(s))
    return [{**{k: [v] for k, v in c.overrides().items()}, "seed": seeds} for c, seeds in by_config.items()]


# ---------------------------------------------------------------- store and processes


def read_runs(uri: str, experiment: str) -> list[Run]:
    """The experiment's FINISHED job runs with their config, seed, metrics and wall time."""
    from tlexp.core.errors import ConfigError
    from tlexp.tracking.queries import search_runs

    try:
        df = search_runs(uri, experiment, "attributes.status = 'FINISHED'")
    except ConfigError:  # no experiment yet
        return []
    runs: list[Run] = []
    for _, row in df.iterrows():
        params = {k[len("params."):]: v for k, v in row.items() if k.startswith("params.") and isinstance(v, str)}
        strategy = params.get("strategy.name")
        if not strategy or "seed" not in params:
            continue  # a sweep's parent run
        cfg = None
        if strategy in BASELINES:
            cfg = Config(strategy)
            if not cfg.matches(params):
                cfg = None
        elif strategy == "finetune":
            aug = params.get("augment.name") or "none"
            cfg = Config("finetune", float(params["transfer.lr_scale"]), float(params.get("regularize.l2_sp", 0)),
                         float(params.get("augment.p", 0)) if aug == "interaction_dropout" else 0.0)
            if aug not in ("none", "interaction_dropout") or not cfg.matches(params):
                cfg = None
        if cfg is None:
            continue
        start, end = row.get("start_time"), row.get("end_time")
        runs.append({"config": cfg, "seed": int(params["seed"]), "run_id": row["run_id"],
                     "name": row.get("tags.mlflow.runName", ""),
                     "start": start.timestamp() if start is not None else 0.0,
                     "seconds": (end - start).total_seconds() if start is not None and end is not None else math.nan,
                     "metrics": {m: float(row[f"metrics.{m}"]) for m in METRICS + ("val/ndcg_at_10",
                                                                                   "val_cold/ndcg_at_10")
                                 if f"metrics.{m}" in row and _finite(row[f"metrics.{m}"])}})
    return runs


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Grid:
    """One preset's runs: what exists in the store, what is missing, running the missing ones."""

    def __init__(self, args: argparse.Namespace) -> None:
        from tlexp.tracking.store import resolve_tracking_uri

        self.args = args
        self.experiment = args.experiment or f"optimise-{args.data}"
        self.uri = resolve_tracking_uri(None, os.environ.get("TLEXP_OUTPUTS", "outputs"))
        self.work = (args.out / args.data).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_file = self.work / "state.json"
        self.state: dict[str, Any] = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.state.setdefault("processes", [])
        self.state.setdefault("sessions", [])
        self.log = self.work / "grid.log"
        self.env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.runs: list[Run] = read_runs(self.uri, self.experiment)

    def save(self) -> None:
        self.state_file.write_text(json.dumps(self.state, indent=1, default=str))

    def ensure(self, pairs: Sequence[tuple[Config, int]], label: str) -> None:
        """Run the (config, seed) pairs that have no FINISHED run yet; a failing process is recorded, not fatal."""
        missing = [(c, s) for c, s in pairs if not runs_of(self.runs, c, [s])]
        if not missing:
            print(f"{label}: all {len(pairs)} runs exist", flush=True)
            return
        for sweep in sweeps(missing):
            n = math.prod(len(v) for v in sweep.values())
            used = [int(d.name) for d in (self.work / "sweeps").glob("*") if d.name.isdigit()]
            index = max([len(self.state["processes"]) - 1, *used]) + 1  # a fresh folder, also after a kill
            args = ["run", "-m", f"data={self.args.data}", f"logger.experiment_name={self.experiment}",
                    f"hydra.sweep.dir={self.work / 'sweeps' / str(index)}", *self.args.overrides,
                    *[f"{k}={','.join(v)}" for k, v in sweep.items()]]
            print(f"{label}: tlexp {' '.join(args[1:])}  ({n} runs)", flush=True)
            t0, load0 = time.time(), loadavg()
            with self.log.open("a") as fh:
                fh.write(f"\n$ tlexp {' '.join(args)}\n")
                fh.flush()
                rc = subprocess.run([sys.executable, "-m", "tlexp.cli", *args], cwd=ROOT, env=self.env,
                                    stdout=fh, stderr=subprocess.STDOUT).returncode
            seconds = round(time.time() - t0, 1)
            self.state["processes"].append({"label": label, "args": args, "runs": n, "rc": rc, "seconds": seconds,
                                            "load_start": load0, "load_end": loadavg()})
            self.save()
            print(f"{label}: exit {rc}, {seconds:.0f} s ({seconds / n:.0f} s a run with start-up)", flush=True)
            if rc != 0:
                print(f"{label}: the process failed; its last lines are in {self.log}", flush=True)
        self.runs = read_runs(self.uri, self.experiment)
        still = [(c, s) for c, s in pairs if not runs_of(self.runs, c, [s])]
        for c, s in still:
            print(f"{label}: NO FINISHED RUN for {c.strategy} {c.knobs()} seed {s}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a preset (conf/data)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the first one selects")
    p.add_argument("--out", type=Path, default=Path("outputs/optimise"), help="state, log and table: <out>/<data>/")
    p.add_argument("--seedless", nargs="*", default=[], choices=["popular", "itemknn", "ease"],
                   help="seed-independent baselines to run at the first seed only (reused for the others)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default optimise-<data>)")
    p.add_argument("overrides", nargs="*", help="added to every run, e.g. trainer.max_epochs=2 (with --experiment)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    g = Grid(args)
    seeds, first = args.seeds, args.seeds[0]
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_start": loadavg()}
    g.state["sessions"].append(session)
    g.save()
    t_start = time.time()
    print(f"{args.data}: experiment '{g.experiment}' at {g.uri}; load average {session['load_start']}", flush=True)

    g.ensure([(Config(b), s) for b in BASELINES for s in seeds if s == first or b not in args.seedless], "baselines")
    candidates: dict[str, list[Config]] = {f: grid(f) for f in FAMILIES[:3]}
    for f, cs in candidates.items():
        g.ensure([(c, first) for c in cs], f"grid {f}")
    chosen: dict[str, Config] = {}
    errors: list[str] = []
    for f in FAMILIES[:3]:
        try:
            chosen[f] = select(candidates[f], g.runs, first)
        except LookupError as err:
            errors.append(f"{f}: {err}")
    if "finetune+L2-SP" in chosen:
        candidates["finetune+both"] = grid("finetune+both", chosen["finetune+L2-SP"].l2_sp)
        g.ensure([(c, first) for c in candidates["finetune+both"]], "grid finetune+both")
        try:
            chosen["finetune+both"] = select(candidates["finetune+both"], g.runs, first)
        except LookupError as err:
            errors.append(f"finetune+both: {err}")
    else:
        errors.append("finetune+both: no L2-SP weight was chosen")
    g.state["chosen"] = {f: asdict(c) for f, c in chosen.items()}
    g.save()
    for f, c in chosen.items():
        print(f"chosen {f}: {c.knobs()}  ({SELECT_ON} at seed {first})", flush=True)
    rest = [s for s in seeds if s != first]
    for f, c in chosen.items():
        g.ensure([(c, s) for s in rest], f"final {f}")

    session.update(ended=time.strftime("%Y-%m-%d %H:%M:%S"), load_end=loadavg(), seconds=round(time.time() - t_start))
    g.save()
    view = expand_seedless(g.runs, [Config(b) for b in args.seedless], first, seeds)
    table, numbers = results_table(view, chosen, seeds)
    selection = grid_table(g.runs, candidates, chosen, first)
    spread = {b: seed_spread(g.runs, Config(b), seeds) for b in BASELINES}
    walls = [r["seconds"] for r in g.runs if _finite(r["seconds"])]
    best = numbers["best_baseline"]
    n_fin = len(g.runs)
    text = [f"## {args.data} (experiment `{g.experiment}`, store `{g.uri}`)", "",
            f"ndcg@10, mean ± sample std over seeds {', '.join(map(str, seeds))} (n per row). Selection: for each "
            f"family, the configuration with the highest seed-{first} `{SELECT_ON}` (the mean of `val/ndcg_at_10` "
            "and `val_cold/ndcg_at_10`; ties: first in grid order); no test metric took part in any choice. "
            "Δwarm: the configuration's test_warm minus the best baseline's on test_warm, paired by seed. Cold gain: "
            "its test_cold mean minus the best baseline's test_cold mean; share kept = gain / plain finetune's gain. "
            f"Goal (issue #16): Δwarm ≥ 0 and share ≥ {100 * GOAL_SHARE:.0f} %.", "",
            "Best baseline per segment (by mean): " + ", ".join(f"{m.split('/')[0]}: **{b}**" for m, b in best.items()),
            "", table, "",
            "Seed dependence of the baselines (max − min of test ndcg@10 over their own seed runs): "
            + ", ".join(f"{b} {fmt(v, digits=5)}" if _finite(v) else f"{b} – (one run)" for b, v in spread.items())
            + (f"; run at seed {first} only and reused for the other seeds: {', '.join(args.seedless)}"
               if args.seedless else ""),
            "", f"### Selection grid, seed {first} (test columns for the record; not used)", "", selection,
            "", "### Cost", "",
            f"- FINISHED runs in the experiment: {n_fin}; wall per run (MLflow start → end) "
            + (f"min {min(walls):.0f} s, median {statistics.median(walls):.0f} s, max {max(walls):.0f} s, "
               f"sum {sum(walls) / 60:.1f} min" if walls else "–"),
            f"- tlexp processes (all sessions): {len(g.state['processes'])}, "
            f"{sum(p['seconds'] for p in g.state['processes']) / 60:.1f} min, failed: "
            f"{sum(1 for p in g.state['processes'] if p['rc'] != 0)}",
            *[f"- session {i}: {s['started']} → {s.get('ended', 'interrupted')} ({s.get('seconds', '?')} s), "
              f"load average (1/5/15 min) {s['load_start']} → {s.get('load_end', '?')}"
              for i, s in enumerate(g.state["sessions"])]]
    if errors:
        text += ["", "### Errors", "", *[f"- {e}" for e in errors]]
    text += ["", "### Runs", "", "| run | seed | wall (s) | run id |", "|---|---|---|---|",
             *[f"| {r['name']} | {r['seed']} | {r['seconds']:.0f} | {r['run_id']} |"
               for r in sorted(g.runs, key=lambda r: r["start"])]]
    md = "\n".join(text) + "\n"
    (g.work / "table.md").write_text(md)
    g.state["numbers"] = numbers
    g.save()
    print(md, flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
