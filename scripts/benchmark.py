"""The honest benchmark of one preset: every strategy gets the same tuning budget on validation, then
its best configuration runs over seeds, and ``tlexp compare`` makes the table.

For each strategy:
1. **tune** — an Optuna sweep (tlexp's sweeper, ``hydra/sweeper=tlexp_optuna``) of ``--trials``
   trials over the learning rate, the weight decay and the strategy's main knob (``SPACES`` below),
   maximising ``eval.monitor`` (a validation metric: nothing is ever chosen on test). Strategies
   without a training loop (popular, ease, itemknn) skip it: EASE's and ItemKNN's own knobs are chosen
   on validation inside the run;
2. **final** — the best trial's overrides over ``--seeds`` (seed 0 repeats the tuned trial's seed, so
   the tuning saw one of the seeds; the other seeds are fresh).

All runs go to the experiment ``benchmark-<preset>``; the table is ``tlexp compare --experiment
benchmark-<preset>``: per segment, each strategy against the best non-transfer baseline, paired by
seed, with 95 % intervals and Holm-corrected p-values. Progress is kept in ``<out>/<preset>/state.json``
so that an interrupted benchmark resumes where it stopped.

    python scripts/benchmark.py --data ml100k_genres --strategies popular scratch ease itemknn finetune \\
        --trials 6 --seeds 0 1 2 --out outputs/benchmark

Issue #16's optimisations join as entries of their own: ``finetune_l2sp`` (+ ``regularize.l2_sp``),
``finetune_aug`` (+ ``augment=interaction_dropout``, ``augment.p``) and ``finetune_both``, each with
finetune's budget plus its knob(s); the table then groups by strategy, ``regularize.l2_sp`` and
``augment.name``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LR = "tag(log,interval(0.0005,0.02))"
WD = "choice(0.0,0.000001,0.0001)"
# the budget each strategy gets: the learning rate, the weight decay and its main knob
SPACES: dict[str, dict[str, str]] = {
    "popular": {}, "ease": {}, "itemknn": {},
    "scratch": {"optimizer.lr": LR, "optimizer.weight_decay": WD},
    "finetune": {"optimizer.lr": LR, "optimizer.weight_decay": WD,
                 "transfer.lr_scale": "tag(log,interval(0.03,1.0))"},
    "distill": {"optimizer.lr": LR, "optimizer.weight_decay": WD,
                "strategy.losses.kd.weight": "choice(0.0,0.5,1.0,2.0)"},
    "fusion": {"optimizer.lr": LR, "optimizer.weight_decay": WD,
               "strategy.fusion.mode": "choice(gate,weighted,ensemble)"},
    "meta": {"optimizer.lr": LR, "optimizer.weight_decay": WD, "meta.inner_lr": "tag(log,interval(0.01,1.0))"},
    "adapt": {"optimizer.lr": LR, "optimizer.weight_decay": WD, "adapt.weight": "tag(log,interval(0.01,1.0))"},
    "emcdr": {"optimizer.lr": LR, "optimizer.weight_decay": WD, "strategy.map_weight_decay": WD},
}
# Issue #16's optimisations of finetune, as entries of their own: finetune's budget plus their knob.
L2SP = "tag(log,interval(0.0001,0.1))"
AUG_P = "interval(0.05,0.5)"
SPACES.update({
    "finetune_l2sp": {**SPACES["finetune"], "regularize.l2_sp": L2SP},
    "finetune_aug": {**SPACES["finetune"], "augment.p": AUG_P},
    "finetune_both": {**SPACES["finetune"], "regularize.l2_sp": L2SP, "augment.p": AUG_P},
})
# entry -> (the strategy it runs, fixed overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "finetune_l2sp": ("finetune", []),
    "finetune_aug": ("finetune", ["augment=interaction_dropout"]),
    "finetune_both": ("finetune", ["augment=interaction_dropout"]),
}
# what tells the variants apart in `tlexp compare` (they all run strategy=finetune)
VARIANT_KEYS = ["regularize.l2_sp", "augment.name"]


def strategy_args(entry: str) -> list[str]:
    """The overrides that select ``entry``: its strategy and, for a variant, its fixed overrides."""
    strategy, fixed = VARIANTS.get(entry, (entry, []))
    return [f"strategy={strategy}", *fixed]


def tlexp(*args: str, env: dict[str, str], log: Path) -> None:
    cmd = [sys.executable, "-m", "tlexp.cli", *args]
    with log.open("a") as fh:
        fh.write(f"\n$ tlexp {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"tlexp {' '.join(args)} failed (exit {proc.returncode}); see {log}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a preset (conf/data)")
    p.add_argument("--strategies", nargs="+", default=["popular", "scratch", "ease", "itemknn", "finetune"])
    p.add_argument("--trials", type=int, default=6, help="Optuna trials per strategy (0: defaults, no tuning)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=1, help="final runs in parallel (joblib launcher)")
    p.add_argument("--out", type=Path, default=Path("outputs/benchmark"))
    p.add_argument("overrides", nargs="*", help="added to every run, e.g. trainer.max_epochs=20")
    args = p.parse_args(argv)
    unknown = [s for s in args.strategies if s not in SPACES]
    if unknown:
        raise SystemExit(f"no search space for {unknown}; known: {sorted(SPACES)}")
    work = (args.out / args.data).resolve()
    work.mkdir(parents=True, exist_ok=True)
    state_file = work / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    experiment = f"benchmark-{args.data}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    common = [f"data={args.data}", f"logger.experiment_name={experiment}", *args.overrides]
    log = work / "benchmark.log"
    for strategy in args.strategies:
        done = state.setdefault(strategy, {})
        t0 = time.time()
        if "best" not in done:
            space = SPACES[strategy]
            best: dict[str, str] = {}
            if space and args.trials > 0:
                tune_dir = work / strategy / "tune"
                tlexp("run", "-m", "hydra/sweeper=tlexp_optuna", f"hydra.sweeper.n_trials={args.trials}",
                      f"hydra.sweeper.study_name={args.data}-{strategy}", f"hydra.sweep.dir={tune_dir}",
                      *strategy_args(strategy), "seed=0", f"logger.experiment_name={experiment}-tuning",
                      *[o for o in common if not o.startswith("logger.experiment_name")],
                      *[f"{k}={v}" for k, v in space.items()], env=env, log=log)
                result = yaml.safe_load((tune_dir / "optimization_results.yaml").read_text())
                best = {k: str(v) for k, v in result["best_params"].items()}
                done["tuning"] = {"best_value": result["best_value"], "objective": result["objective"],
                                  "trials": result["n_trials"]}
            done["best"] = best
            state_file.write_text(json.dumps(state, indent=1))
        if not done.get("final"):
            launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"] if args.jobs > 1 else []
            tlexp("run", "-m", *launcher, *strategy_args(strategy), f"seed={','.join(map(str, args.seeds))}",
                  f"hydra.sweep.dir={work / strategy / 'final'}", *common,
                  *[f"{k}={v}" for k, v in done["best"].items()], env=env, log=log)
            done["final"] = True
            done["seconds"] = round(time.time() - t0, 1)
            state_file.write_text(json.dumps(state, indent=1))
        print(f"{args.data} {strategy:9s} best {json.dumps(done['best'])}  ({done.get('seconds', 0):.0f} s)",
              flush=True)
    md = work / "table.md"
    by = ",".join(["strategy", *(VARIANT_KEYS if set(args.strategies) & set(VARIANTS) else [])])
    tlexp("compare", "--experiment", experiment, "--metric", "test/ndcg_at_10", "--by", by, "--markdown", str(md),
          "--csv", str(work / "table.csv"), env=env, log=log)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
