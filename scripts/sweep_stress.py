"""Stress the parallel sweep path: repeat a joblib multirun on one embedded SQLite store.

    python scripts/sweep_stress.py                      # 3 x (scratch,finetune x seeds 0,1,2), 2 workers
    python scripts/sweep_stress.py --sweep "seed=0,1,2 strategy=finetune transfer.lr_scale=0.1,1.0"
    python scripts/sweep_stress.py --full               # the embedded default size instead of the tiny world

Each repeat is a real `tlexp run -m hydra/launcher=joblib hydra.launcher.n_jobs=N ...` process on
the same outputs folder (same store, same caches). After each one the store is checked: exactly one
new parent run, FINISHED; the expected number of children, all FINISHED, nested under it (tag
mlflow.parentRunId), each job exactly once (no lost or duplicated runs); every pretraining cache
key built at most once (misses == distinct keys that were not in the cache before); and no
"database is locked" anywhere in the output. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["world.n_users=800", "source.n_items=300", "target.n_items=300", "trainer=debug", "trainer.max_epochs=3",
        "pretrain.max_epochs=3", "batch_size=256", "logger.predictions_sample=20"]


def expected_jobs(sweep_args: list[str]) -> int:
    n = 1
    for a in sweep_args:
        _, _, v = a.partition("=")
        n *= len(v.split(",")) if "," in v and not v.startswith(("[", "interval", "range")) else 1
    return n


def runs(uri: str):
    sys.path.insert(0, str(ROOT))
    from tlexp.tracking.queries import search_runs

    return search_runs(uri)


def tag(df, name: str):
    """The tag column as strings ('' where unset or absent)."""
    col = f"tags.{name}"
    return df[col].fillna("").astype(str) if col in df.columns else df["run_id"].map(lambda _: "")


def check_sweep(df, before_ids: set[str], n_jobs_expected: int, keys_before: set[str]) -> dict:
    new = df[~df["run_id"].isin(before_ids)]
    is_parent = tag(new, "tlexp.sweep_parent") == "true"
    parents, kids = new[is_parent], new[~is_parent]
    problems = []
    if len(parents) != 1:
        problems.append(f"{len(parents)} parent runs (want 1)")
    parent = parents.iloc[0] if len(parents) else None
    if parent is not None and parent["status"] != "FINISHED":
        problems.append(f"parent is {parent['status']}")
    if len(kids) != n_jobs_expected:
        problems.append(f"{len(kids)} child runs (want {n_jobs_expected})")
    bad = kids[kids["status"] != "FINISHED"]
    if len(bad):
        problems.append(f"{len(bad)} children not FINISHED: {bad['status'].tolist()}")
    if parent is not None and not (tag(kids, "mlflow.parentRunId") == parent["run_id"]).all():
        problems.append("children not nested under the parent")
    jobs = sorted(int(j) for j in tag(kids, "sweep_job") if j)
    if jobs != list(range(n_jobs_expected)):
        problems.append(f"job numbers {jobs} (want 0..{n_jobs_expected - 1}: lost or duplicated jobs)")
    pre = kids[tag(kids, "pretrain_cache") != ""]
    misses = pre[tag(pre, "pretrain_cache") == "miss"]
    new_keys = set(tag(pre, "pretrain_key")) - keys_before
    if len(misses) != len(new_keys) or set(tag(misses, "pretrain_key")) != new_keys:
        problems.append(f"pretraining built {len(misses)} times for {len(new_keys)} new keys (want once per key)")
    return {"sweep_id": parent["tags.sweep_id"] if parent is not None else "", "children": len(kids),
            "finished": int((kids["status"] == "FINISHED").sum()), "pretrain_miss": len(misses),
            "pretrain_hit": int((tag(pre, "pretrain_cache") == "hit").sum()),
            "pretrain_keys": sorted(set(tag(pre, "pretrain_key"))),
            "problems": problems}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-jobs", type=int, default=2, help="joblib workers")
    ap.add_argument("--sweep", default="strategy=scratch,finetune seed=0,1,2", help="the sweep overrides")
    ap.add_argument("--full", action="store_true", help="embedded default size (default: the tests' tiny world)")
    ap.add_argument("--outputs", help="outputs folder (default: a new temporary one)")
    ap.add_argument("--json", help="write the per-sweep results here")
    args = ap.parse_args()

    out = Path(args.outputs or tempfile.mkdtemp(prefix="tlexp-stress-")) / "outputs"
    uri = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    sweep_args = shlex.split(args.sweep)
    n_expected = expected_jobs(sweep_args)
    env = {**os.environ, "TLEXP_OUTPUTS": str(out), "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "tlexp.cli.app", "run", "-m", "hydra/launcher=joblib",
           f"hydra.launcher.n_jobs={args.n_jobs}", *sweep_args, *([] if args.full else TINY)]
    print("command:", " ".join(cmd[2:]))
    print(f"store: {uri}\n")
    results, failed = [], False
    for i in range(args.repeats):
        before = runs(uri) if (out / "mlflow.db").exists() else None
        before_ids = set(before["run_id"]) if before is not None else set()
        keys_before = set(tag(before, "pretrain_key")) - {""} if before is not None else set()
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        text = proc.stdout + proc.stderr
        res = {"repeat": i + 1, "returncode": proc.returncode, "wall_s": round(wall, 1),
               "database_locked": text.count("database is locked")}
        if proc.returncode == 0:
            res.update(check_sweep(runs(uri), before_ids, n_expected, keys_before))
        else:
            res["problems"] = [f"exit code {proc.returncode}: {proc.stderr[-1500:]}"]
        if res["database_locked"]:
            res.setdefault("problems", []).append(f"'database is locked' x{res['database_locked']}")
        failed |= bool(res["problems"])
        results.append(res)
        print(f"sweep {i + 1}/{args.repeats}: {res.get('sweep_id', '?')}  rc={proc.returncode}  {wall:.0f} s  "
              f"children {res.get('finished', 0)}/{res.get('children', 0)} FINISHED (want {n_expected})  "
              f"pretrain miss/hit {res.get('pretrain_miss', '?')}/{res.get('pretrain_hit', '?')}  "
              f"'database is locked': {res['database_locked']}  "
              + ("OK" if not res["problems"] else "PROBLEMS: " + "; ".join(res["problems"])))
    df = runs(uri)
    parents = int((tag(df, "tlexp.sweep_parent") == "true").sum())
    print(f"\nstore holds {len(df)} runs: {parents} parents + {len(df) - parents} children "
          f"(want {args.repeats} + {args.repeats * n_expected})")
    if len(df) != args.repeats * (n_expected + 1):
        failed = True
        print("PROBLEM: run count differs")
    # each (strategy, seed, other swept values) exactly once per sweep
    keys = [a.split("=", 1)[0] for a in sweep_args if "," in a]
    cols = [f"tags.{k}" if f"tags.{k}" in df.columns else f"params.{k}" for k in keys]
    kids = df[tag(df, "tlexp.sweep_parent") != "true"]
    dup = kids.groupby(["tags.sweep_id", *cols]).size()
    if (dup != 1).any():
        failed = True
        print("PROBLEM: duplicated jobs:", dup[dup != 1].to_dict())
    want = {tuple(v) for v in product(*[a.split("=", 1)[1].split(",") for a in sweep_args if "," in a])}
    for sid, g in kids.groupby("tags.sweep_id"):
        got = {tuple(str(x) for x in row) for row in g[cols].itertuples(index=False)}
        if got != want:
            failed = True
            print(f"PROBLEM: sweep {sid} ran {sorted(got)} (want {sorted(want)})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print("RESULT:", "FAIL" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
