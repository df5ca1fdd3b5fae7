"""Pin tlexp's behaviour by its numbers: record every logged metric of a fixed set of commands, compare.

Why: a refactor (or a dependency upgrade) must not change what tlexp computes. This script runs the
commands below through the real ``tlexp`` command (fresh outputs folder and MLflow store, so
caches are built exactly as a new user's first runs build them), reads every metric of each run
back from MLflow, and stores them as JSON. ``compare`` puts two recordings side by side: per
command, how many metrics are bit-identical, the largest absolute difference, and which keys
appeared or disappeared. Timings (``time/*``, ``*/seconds``, ``*_ms_per_1k_users``) are left out:
they measure the machine, not the code.

    python scripts/behaviour_check.py record --out outputs/behaviour/before.json
    python scripts/behaviour_check.py record --out outputs/behaviour/after.json --only default social-meta
    python scripts/behaviour_check.py compare outputs/behaviour/before.json outputs/behaviour/after.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHORT = ["trainer.max_epochs=2", "pretrain.max_epochs=2"]

# name -> overrides of `tlexp run` (the list: default run, each strategy on data=social with a short
# trainer, ml100k_genres finetune, sasrec and text_seq on ml100k_genres, short)
COMMANDS: dict[str, list[str]] = {
    "default": [],
    "social-popular": ["data=social", "strategy=popular", *SHORT],
    "social-scratch": ["data=social", "strategy=scratch", *SHORT],
    "social-finetune": ["data=social", "strategy=finetune", *SHORT],
    "social-distill": ["data=social", "strategy=distill", *SHORT],
    "social-fusion": ["data=social", "strategy=fusion", *SHORT],
    "social-meta": ["data=social", "strategy=meta", "meta.algorithm=maml", *SHORT],
    "social-adapt": ["data=social", "strategy=adapt", "adapt.method=dann", *SHORT],
    "social-emcdr": ["data=social", "strategy=emcdr", *SHORT],
    "ml100k-finetune": ["data=ml100k_genres", "strategy=finetune"],
    "ml100k-sasrec": ["data=ml100k_genres", "backbone=sasrec", "strategy=finetune", *SHORT],
    "ml100k-text_seq": ["data=ml100k_genres", "backbone=text_seq", "strategy=finetune", *SHORT],
}


def is_timing(key: str) -> bool:
    return key.startswith("time/") or key.endswith("/seconds") or key.endswith("ms_per_1k_users")


def tlexp_command(command: str | None = None) -> list[str]:
    """``--command`` as given (e.g. 'python -m tlexp.cli' with PYTHONPATH at another checkout), else the
    ``tlexp`` script beside this Python."""
    if command:
        return command.split()
    exe = Path(sys.executable).parent / "tlexp"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tlexp.cli"]


def record(out: Path, only: list[str] | None, workdir: Path | None, extra: list[str],
           command: str | None = None) -> None:
    from mlflow.tracking import MlflowClient

    names = only or list(COMMANDS)
    unknown = sorted(set(names) - set(COMMANDS))
    if unknown:
        raise SystemExit(f"unknown command name(s) {unknown}; known: {list(COMMANDS)}")
    work = Path(workdir or tempfile.mkdtemp(prefix="tlexp-behaviour-"))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {**os.environ, "TLEXP_OUTPUTS": str(work / "outputs"), "MLFLOW_TRACKING_URI": uri,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    result = json.loads(out.read_text()) if out.exists() else {"commands": {}}
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=os.environ.get("PYTHONPATH") or None).stdout.strip()
    result["git_sha"] = sha
    client = MlflowClient(uri)
    for name in names:
        args = [*COMMANDS[name], f"logger.experiment_name=behaviour-{name}", *extra]
        t0 = time.time()
        proc = subprocess.run([*tlexp_command(command), "run", *args], env=env, capture_output=True, text=True)
        seconds = time.time() - t0
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
            raise SystemExit(f"{name}: tlexp run {' '.join(args)} exited {proc.returncode}")
        exp = client.get_experiment_by_name(f"behaviour-{name}")
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
        run = runs[0]
        metrics = {k: v for k, v in sorted(run.data.metrics.items()) if not is_timing(k)}
        result["commands"][name] = {"args": args, "status": run.info.status, "metrics": metrics,
                                    "wall_s": round(seconds, 1)}
        n_test = sum(k.startswith(("test", "teacher_test")) for k in metrics)
        print(f"{name:18s} {run.info.status:8s} {len(metrics):4d} metrics ({n_test} test) "
              f"test/ndcg_at_10={metrics.get('test/ndcg_at_10', float('nan')):.6f}  {seconds:6.1f} s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, sort_keys=True))  # after each command: resumable
    print(f"wrote {out}")


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    print(f"before: {before} ({a.get('git_sha', '?')})   after: {after} ({b.get('git_sha', '?')})\n")
    header = f"{'command':18s} {'metrics':>7s} {'identical':>9s} {'test identical':>14s} {'max |diff|':>11s}  notes"
    print(header)
    print("-" * len(header))
    bad = 0
    for name in [n for n in COMMANDS if n in a["commands"] or n in b["commands"]]:
        ra, rb = a["commands"].get(name), b["commands"].get(name)
        if ra is None or rb is None:
            print(f"{name:18s} {'—':>7s}  only in {'after' if ra is None else 'before'}")
            continue
        ma, mb = ra["metrics"], rb["metrics"]
        shared = sorted(set(ma) & set(mb))
        same = [k for k in shared if ma[k] == mb[k]]
        tests = [k for k in shared if k.startswith(("test", "teacher_test"))]
        same_tests = [k for k in tests if ma[k] == mb[k]]
        diff = max((abs(ma[k] - mb[k]) for k in shared), default=0.0)
        notes = []
        if set(ma) - set(mb):
            notes.append(f"gone: {', '.join(sorted(set(ma) - set(mb))[:6])}")
        if set(mb) - set(ma):
            notes.append(f"new: {', '.join(sorted(set(mb) - set(ma))[:6])}")
        changed = [k for k in shared if ma[k] != mb[k]]
        if changed:
            notes.append(f"changed: {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}")
        bad += len(same_tests) != len(tests) or len(tests) == 0
        print(f"{name:18s} {len(shared):7d} {len(same):9d} {len(same_tests):>7d}/{len(tests):<6d} {diff:11.3g}  "
              + "; ".join(notes))
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="run the commands and store their metrics")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--only", nargs="*", help=f"a subset of {list(COMMANDS)}")
    rec.add_argument("--workdir", type=Path, help="outputs + store for the runs (default: a new temp folder)")
    rec.add_argument("--extra", nargs="*", default=[], help="overrides added to every command")
    rec.add_argument("--command", help="how to call tlexp (default: the tlexp script beside this Python)")
    cmp = sub.add_parser("compare", help="two recordings side by side (exit 1 if a test metric differs)")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "record":
        record(args.out, args.only, args.workdir, args.extra, args.command)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
