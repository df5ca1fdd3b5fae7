"""Does transfer mean something on a scenario? popular / scratch / finetune over seeds, side by side.

Runs the real pipeline in one process (each run is logged to MLflow like any `tlexp run`) and
prints mean ± std over seeds of the test metrics per segment, with the ratios the foundation
issue asks for: finetune / scratch on cold-start users, scratch / popular on warm users.

    python scripts/transfer_check.py --data social ecommerce --seeds 0 1 2 [-- extra overrides]
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["social", "ecommerce"])
    parser.add_argument("--strategies", nargs="+", default=["popular", "scratch", "finetune"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--metric", default="ndcg_at_10")
    parser.add_argument("--csv", default=None,
                        help="per-run rows go to this CSV as they finish; (data, strategy, seed) rows already "
                             "there are not run again, so an interrupted check resumes")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    from tlexp.core.config import compose
    from tlexp.pipeline import run_pipeline

    out_root = os.environ.get("TLEXP_OUTPUTS", "outputs")
    segs = ("test", "test_warm", "test_cold")
    rows = pd.read_csv(args.csv).to_dict("records") if args.csv and os.path.exists(args.csv) else []
    for data in args.data:
        for strategy in args.strategies:
            for seed in args.seeds:
                if any(r["data"] == data and r["strategy"] == strategy and int(r["seed"]) == seed for r in rows):
                    continue
                cfg = compose([f"data={data}", f"strategy={strategy}", f"seed={seed}",
                               "trainer.enable_progress_bar=false", "logger.predictions_sample=0",
                               f"paths.output_dir={out_root}/check/{data}-{strategy}-{seed}", *args.overrides])
                res = run_pipeline(cfg)
                m = res["metrics"]
                rows.append({"data": data, "strategy": strategy, "seed": seed, "run_id": res["run_id"],
                             **{seg: m.get(f"{seg}/{args.metric}", float("nan")) for seg in segs},
                             "seconds": res["timings"]["time/total_s"]})
                if args.csv:
                    pd.DataFrame(rows).to_csv(args.csv, index=False)
                print(f"{data:10s} {strategy:9s} seed {seed}: " + "  ".join(
                    f"{seg}={rows[-1][seg]:.4f}" for seg in segs), flush=True)
    df = pd.DataFrame(rows)
    df = df[df.data.isin(args.data) & df.strategy.isin(args.strategies) & df.seed.isin(args.seeds)]
    print(f"\n{args.metric}, mean ± std over seeds {args.seeds}:\n")
    print("| data | strategy | test | test_warm | test_cold | s/run |\n|---|---|---|---|---|---|")
    for (data, strategy), g in df.groupby(["data", "strategy"], sort=False):
        cells = [f"{g[c].mean():.4f} ± {g[c].std(ddof=1) if len(g) > 1 else 0:.4f}"
                 for c in ("test", "test_warm", "test_cold")]
        print(f"| {data} | {strategy} | " + " | ".join(cells) + f" | {g['seconds'].mean():.0f} |")
    print()
    for data in args.data:
        mean = df[df.data == data].groupby("strategy")[["test_warm", "test_cold"]].mean()
        if {"finetune", "scratch"} <= set(mean.index):
            print(f"{data}: finetune/scratch on test_cold = "
                  f"{mean.loc['finetune', 'test_cold'] / mean.loc['scratch', 'test_cold']:.2f}x")
        if {"scratch", "popular"} <= set(mean.index):
            print(f"{data}: scratch/popular on test_warm = "
                  f"{mean.loc['scratch', 'test_warm'] / mean.loc['popular', 'test_warm']:.2f}x")


if __name__ == "__main__":
    main()
