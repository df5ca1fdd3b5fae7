"""Backbones side by side on one scenario: mean ± std over seeds of the test metrics that matter.

Each run is a normal ``tlexp run`` (in this process, through ``run_pipeline``), logged to the MLflow
store like any other; results are also appended to a JSON-lines file so that an interrupted check
resumes where it stopped (a (label, seed) pair already there is not run again).

    python scripts/backbone_check.py --data arts_office --seeds 0 1 2 \\
        --runs sasrec:scratch text_seq:finetune two_tower:scratch two_tower:finetune sasrec:finetune
    python scripts/backbone_check.py --data scientific --seeds 0 1 2 \\
        --runs text_seq:scratch text_seq:finetune "text_seq:zero-shot@text_seq:finetune:trainer.max_epochs=0"

A run spec is ``[label@]backbone:strategy[:override,override,...]``. ``--extra`` overrides apply
to every run. The table is printed as Markdown (for docs/backbones.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

KEYS = ["test/ndcg_at_10", "test/recall_at_10", "test_warm/ndcg_at_10", "test_cold/ndcg_at_10",
        "test_cold_items/ndcg_at_10", "test_cold_items/recall_at_10", "val/ndcg_at_10"]


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``[label@]backbone:strategy[:override,override]`` -> (label, overrides)."""
    label, _, body = spec.rpartition("@")
    parts = body.split(":", 2)
    if len(parts) < 2:
        raise SystemExit(f"run spec '{spec}': expected [label@]backbone:strategy[:override,...]")
    extra = [o for o in (parts[2].split(",") if len(parts) > 2 else []) if o]
    return label or f"{parts[0]}:{parts[1]}", [f"backbone={parts[0]}", f"strategy={parts[1]}", *extra]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="arts_office")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--results", default=None, help="JSON-lines file (default outputs/backbone_check/<data>.jsonl)")
    ap.add_argument("--table-only", action="store_true", help="print the table of stored results and exit")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_root = Path(os.environ.get("TLEXP_OUTPUTS", "outputs"))
    results = Path(args.results or out_root / "backbone_check" / f"{args.data}.jsonl")
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if results.exists():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done[(r["label"], r["seed"])] = r

    specs = [parse_spec(s) for s in args.runs]
    if not args.table_only:
        from tlexp.core.config import compose
        from tlexp.pipeline import run_pipeline

        for seed in args.seeds:
            for label, overrides in specs:
                if (label, seed) in done:
                    continue
                ov = [f"data={args.data}", f"seed={seed}", "trainer.enable_progress_bar=false",
                      "logger.predictions_sample=0", f"paths.output_dir={out_root}/backbone_check/runs/"
                      f"{args.data}-{label.replace(':', '-')}-s{seed}", *args.extra, *overrides]
                t0 = time.time()
                res = run_pipeline(compose(ov))
                rec = {"label": label, "seed": seed, "overrides": ov, "seconds": round(time.time() - t0, 1),
                       "run_id": res["run_id"], "metrics": res["metrics"], "timings": res["timings"],
                       "segments": res["segments"]}
                with results.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                done[(label, seed)] = rec
                print(f"{label} seed {seed}: test/ndcg_at_10={res['metrics'].get('test/ndcg_at_10', float('nan')):.4f}"
                      f" ({rec['seconds']:.0f} s)", flush=True)

    print(f"\n{args.data}, seeds {args.seeds} — mean ± std (n)\n")
    print("| run | " + " | ".join(KEYS) + " | minutes/run |")
    print("|---|" + "---|" * (len(KEYS) + 1))
    for label, _ in specs:
        recs = [done[(label, s)] for s in args.seeds if (label, s) in done]
        if not recs:
            continue
        cells = []
        for k in KEYS:
            vals = np.array([r["metrics"][k] for r in recs if k in r["metrics"]])
            cells.append(f"{vals.mean():.4f} ± {vals.std(ddof=1) if len(vals) > 1 else 0:.4f}" if len(vals) else "—")
        minutes = np.mean([r["seconds"] for r in recs]) / 60
        print(f"| {label} (n={len(recs)}) | " + " | ".join(cells) + f" | {minutes:.1f} |")


if __name__ == "__main__":
    main()
