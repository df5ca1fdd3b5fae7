"""Do meta, adapt and emcdr help where they should? Each against scratch/finetune, mean ± std over seeds.

Suites (each a list of labelled runs; every run goes through the real pipeline and is logged to
MLflow like any `tlexp run`):

* ``cold`` (data=social by default): scratch, finetune, emcdr and meta (maml, fomaml, reptile),
  all evaluated under the same k-shot protocol (``eval.kshot.shots=[1,3,5]``; scratch/finetune
  adapt with the same 3 plain gradient steps at lr 0.1 that meta's inner loop starts from).
  Reports test_cold/ndcg_at_10 (no support) and test_cold_k{1,3,5}/ndcg_at_10.
* ``overlap`` (data=low_overlap by default, ~5% shared users): scratch, finetune and adapt with
  dann, mmd, coral and none (the same training without alignment). Reports test/ndcg_at_10 and the
  domain classifier's accuracy in the first and in the selected epoch.

    python scripts/meta_adapt_check.py --suite cold --seeds 0 1 2
    python scripts/meta_adapt_check.py --suite overlap --seeds 0 1 2
    python scripts/meta_adapt_check.py --suite cold --data books_movies --only scratch finetune emcdr
    python scripts/meta_adapt_check.py --suite cold --seeds 0 -- trainer.max_epochs=5   # extra overrides
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings

import pandas as pd

KSHOT = ["eval.kshot.shots=[1,3,5]", "eval.kshot.adapt_steps=3", "eval.kshot.adapt_lr=0.1"]
SUITES: dict[str, dict] = {
    "cold": {
        "data": "social",
        "metrics": ["test_cold/ndcg_at_10", "test_cold_k1/ndcg_at_10", "test_cold_k3/ndcg_at_10",
                    "test_cold_k5/ndcg_at_10", "test/ndcg_at_10"],
        "runs": {
            "scratch": ["strategy=scratch", *KSHOT],
            "finetune": ["strategy=finetune", *KSHOT],
            "finetune-noadapt": ["strategy=finetune", "eval.kshot.shots=[1,3,5]", "eval.kshot.adapt_steps=0"],
            "emcdr": ["strategy=emcdr", *KSHOT],
            "meta-maml": ["strategy=meta", "meta.algorithm=maml"],
            "meta-fomaml": ["strategy=meta", "meta.algorithm=fomaml"],
            "meta-reptile": ["strategy=meta", "meta.algorithm=reptile", "meta.inner_params=[user,map]"],
        },
    },
    "overlap": {
        "data": "low_overlap",
        "metrics": ["test/ndcg_at_10", "test_warm/ndcg_at_10", "test_cold/ndcg_at_10"],
        "runs": {
            "scratch": ["strategy=scratch"],
            "finetune": ["strategy=finetune"],
            "adapt-none": ["strategy=adapt", "adapt.method=none"],
            "adapt-dann": ["strategy=adapt", "adapt.method=dann"],
            "adapt-mmd": ["strategy=adapt", "adapt.method=mmd"],
            "adapt-coral": ["strategy=adapt", "adapt.method=coral"],
        },
    },
}


def domain_acc_history(uri: str, run_id: str) -> tuple[float, float, int]:
    """train/domain_acc in the first epoch, in the selected (best) epoch, and that epoch's index."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    hist = sorted(client.get_metric_history(run_id, "train/domain_acc"), key=lambda m: m.step)
    if not hist:
        return float("nan"), float("nan"), -1
    best = int(client.get_run(run_id).data.tags.get("best_epoch", len(hist) - 1))
    best = min(max(best, 0), len(hist) - 1)
    return hist[0].value, hist[best].value, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--data", default=None, help="scenario preset (default: the suite's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", default=None, help="a subset of the suite's run labels")
    parser.add_argument("--csv", default=None,
                        help="per-run rows go to this CSV file as they finish; runs already in it are not repeated")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    from tlexp.core.config import compose
    from tlexp.pipeline import run_pipeline

    suite = SUITES[args.suite]
    data = args.data or suite["data"]
    labels = args.only or list(suite["runs"])
    out_root = os.environ.get("TLEXP_OUTPUTS", "outputs")
    rows = []
    if args.csv and os.path.exists(args.csv):
        rows = pd.read_csv(args.csv).to_dict("records")
    for label in labels:
        for seed in args.seeds:
            if any(r["data"] == data and r["run"] == label and int(r["seed"]) == seed for r in rows):
                continue
            cfg = compose([f"data={data}", *suite["runs"][label], f"seed={seed}",
                           "trainer.enable_progress_bar=false", "logger.predictions_sample=0",
                           f"paths.output_dir={out_root}/check/{args.suite}-{data}-{label}-{seed}", *args.overrides])
            res = run_pipeline(cfg)
            m = res["metrics"]
            row = {"data": data, "run": label, "seed": seed, "run_id": res["run_id"],
                   **{k: m.get(k, float("nan")) for k in suite["metrics"]},
                   "seconds": res["timings"]["time/total_s"]}
            if args.suite == "overlap":
                row["domain_acc_first"], row["domain_acc_best"], row["best_epoch"] = \
                    domain_acc_history(res["tracking_uri"], res["run_id"])
            rows.append(row)
            if args.csv:
                pd.DataFrame(rows).to_csv(args.csv, index=False)
            print(f"{data} {label:16s} seed {seed}: " + "  ".join(
                f"{k}={row[k]:.4f}" for k in suite["metrics"] + (["domain_acc_first", "domain_acc_best"]
                                                                 if args.suite == "overlap" else [])), flush=True)
    df = pd.DataFrame(rows)
    df = df[(df.data == data) & df.run.isin(labels) & df.seed.isin(args.seeds)]
    cols = [c for c in df.columns if c not in ("data", "run", "seed", "run_id")]
    agg = df.groupby("run", sort=False)[cols].agg(["mean", "std"])
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    print(f"\n{data}, mean and std over seeds {args.seeds}:\n{agg.round(4)}\n")
    key = "test_cold_k3/ndcg_at_10" if args.suite == "cold" else "test/ndcg_at_10"
    mean = df.groupby("run")[key].mean()
    for label in labels:
        if label != "scratch" and "scratch" in mean:
            print(f"{label}/scratch on {key} = {mean[label] / mean['scratch']:.2f}x")
    print("\nmarkdown:\n| run | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for label in labels:
        sub = df[df.run == label]
        cells = [f"{sub[c].mean():.4f} ± {sub[c].std(ddof=1) if len(sub) > 1 else 0:.4f}" for c in cols]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
