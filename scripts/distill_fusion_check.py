"""Does distillation pay, and does fusing several sources beat the best single source? Over seeds.

Runs the real pipeline in one process (every run is logged to MLflow like any `tlexp run`) and
prints mean ± std over seeds, then the issue's checks with the numbers behind them:

distill part (per seed): ``strategy=distill`` (student; the run also evaluates the teacher),
``strategy=scratch`` and ``strategy=finetune`` with the student's backbone (no teacher: what
the student gets from the data alone / from source pretraining alone).
  - the student has <= 15% of the teacher's parameters;
  - the student reaches >= 90% of the teacher's test/ndcg_at_10;
  - the student beats scratch with the same backbone on test/ and test_cold/ndcg_at_10.

fusion part (per seed): ``strategy=finetune`` from the run's source; "finetune from X" for every
other source X on the *same* target split (``strategy=fusion strategy.fusion.sources=[X]
strategy.fusion.mode=ensemble``, which is finetune from X — see tests/test_fusion.py); and
``strategy=fusion`` with all sources in each mode.
  - the best fusion mode beats finetune from the better single source on test_cold/ndcg_at_10.

    python scripts/distill_fusion_check.py --data ecommerce --sources news social --seeds 0 1 2
    python scripts/distill_fusion_check.py --data ml100k_genres --sources ml100k_action ml100k_drama \\
        --markdown docs/x.md -- trainer.max_epochs=50
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import warnings

import pandas as pd

SEGMENTS = ("test", "test_warm", "test_cold")
MODES = ("concat", "weighted", "gate", "ensemble")


def fmt(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {0.0 if pd.isna(std) else std:.4f}"


def finished_run(cfg, run_name: str) -> dict | None:
    """A FINISHED run named ``run_name`` in the run's store, shaped like run_pipeline's result (or None)."""
    from mlflow.tracking import MlflowClient

    from tlexp.tracking.store import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.logger.tracking_uri, cfg.paths.output_root)
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    if not exps:
        return None
    found = client.search_runs(exps, f"attributes.run_name = '{run_name}' and attributes.status = 'FINISHED'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    if not found:
        return None
    run = found[0]
    print(f"(reusing finished run {run.info.run_id} '{run_name}')")
    m = dict(run.data.metrics)
    return {"metrics": m, "run_id": run.info.run_id, "tracking_uri": uri,
            "timings": {"time/total_s": m.get("time/total_s", float("nan"))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="ecommerce", help="a conf/data preset")
    parser.add_argument("--sources", nargs="+", default=["news", "social"],
                        help="fusion sources (conf/domain names); the first should be the preset's source")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parts", nargs="+", default=["distill", "fusion"], choices=["distill", "fusion"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--ablation", action="store_true", help="also distill with each loss weight set to 0 in turn")
    parser.add_argument("--metric", default="ndcg_at_10")
    parser.add_argument("--markdown", help="append the tables to this file")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished runs of an earlier invocation (same data, arm, seed and overrides) "
                             "from the MLflow store instead of running them again")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    from tlexp.core.config import compose
    from tlexp.pipeline import run_pipeline

    out_root = os.environ.get("TLEXP_OUTPUTS", "outputs")
    student_bb = compose(["strategy=distill"]).strategy.student.backbone.name
    srcs = "[" + ",".join(args.sources) + "]"
    plan: list[tuple[str, str, list[str]]] = []  # (part, arm, overrides)
    if "distill" in args.parts:
        plan += [("distill", "distill", ["strategy=distill"]),
                 ("distill", f"scratch ({student_bb})", ["strategy=scratch", f"backbone={student_bb}"]),
                 ("distill", f"finetune ({student_bb})", ["strategy=finetune", f"backbone={student_bb}"])]
        if args.ablation:
            plan += [("distill", f"distill {t}=0", ["strategy=distill", f"strategy.losses.{t}.weight=0"])
                     for t in ("rec", "kd", "rank", "hint")]
            plan += [("distill", "distill student.init=scratch", ["strategy=distill", "strategy.student.init=scratch"])]
    if "fusion" in args.parts:
        plan += [("fusion", f"finetune from {args.sources[0]}", ["strategy=finetune"])]
        plan += [("fusion", f"finetune from {s}", ["strategy=fusion", f"strategy.fusion.sources=[{s}]",
                                                   "strategy.fusion.mode=ensemble"]) for s in args.sources[1:]]
        plan += [("fusion", f"fusion {m}", ["strategy=fusion", f"strategy.fusion.sources={srcs}",
                                            f"strategy.fusion.mode={m}"]) for m in args.modes]

    rows = []
    for part, arm, over in plan:
        for seed in args.seeds:
            slug = arm.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
            every = [f"data={args.data}", *over, f"seed={seed}", *args.overrides]
            run_name = f"check-{args.data}-{slug}-s{seed}-{hashlib.sha1(' '.join(every).encode()).hexdigest()[:8]}"
            cfg = compose([f"data={args.data}", *over, f"seed={seed}", "trainer.enable_progress_bar=false",
                           "logger.predictions_sample=0", f"run_name={run_name}",
                           f"paths.output_dir={out_root}/check/{args.data}-{slug}-{seed}", *args.overrides])
            res = finished_run(cfg, run_name) if args.resume else None
            res = res or run_pipeline(cfg)
            m = res["metrics"]
            row = {"part": part, "arm": arm, "seed": seed, "run_id": res["run_id"],
                   **{seg: m.get(f"{seg}/{args.metric}") for seg in SEGMENTS},
                   "seconds": res["timings"]["time/total_s"]}
            if arm == "distill":
                row.update({f"teacher_{seg}": m.get(f"teacher_{seg}/{args.metric}") for seg in SEGMENTS})
                row.update({"ms_teacher": m.get("time/teacher_ms_per_1k_users"),
                            "ms_student": m.get("time/student_ms_per_1k_users")})
                from mlflow.tracking import MlflowClient

                params = MlflowClient(res["tracking_uri"]).get_run(res["run_id"]).data.params
                row.update({"params_teacher": int(params["params_teacher"]),
                            "params_student": int(params["params_student"])})
            extra = {k: round(v, 3) for k, v in m.items() if k.startswith("fusion/") and "users_" not in k}
            rows.append(row)
            print(f"{args.data} {arm:28s} seed {seed}: " + "  ".join(f"{s}={row[s]:.4f}" for s in SEGMENTS)
                  + (f"  teacher test={row['teacher_test']:.4f} cold={row['teacher_test_cold']:.4f}"
                     if arm == "distill" else "") + (f"  {extra}" if extra else "")
                  + f"  ({row['seconds']:.0f}s)", flush=True)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 220)
    lines = [f"### `{args.data}` — {args.metric}, mean ± std over seeds {args.seeds}", ""]
    if args.overrides:
        lines += [f"Extra overrides: `{' '.join(args.overrides)}`", ""]
    checks: list[str] = []

    def table(sub: pd.DataFrame, extra_rows: list[tuple[str, dict]] | None = None) -> list[str]:
        out = ["| arm | test | test_warm | test_cold | seconds/run |", "|---|---|---|---|---|"]
        for name, vals in extra_rows or []:
            out.append(f"| {name} | " + " | ".join(vals.get(s, "") for s in (*SEGMENTS, "seconds")) + " |")
        for arm in dict.fromkeys(sub["arm"]):
            g = sub[sub["arm"] == arm]
            out.append(f"| {arm} | " + " | ".join(fmt(g[s].mean(), g[s].std()) for s in SEGMENTS)
                       + f" | {g['seconds'].mean():.0f} |")
        return out

    if "distill" in args.parts:
        d = df[df.part == "distill"]
        st = d[d.arm == "distill"]
        teacher = {s: fmt(st[f"teacher_{s}"].mean(), st[f"teacher_{s}"].std()) for s in SEGMENTS}
        teacher["seconds"] = "(cached; inside distill)"
        lines += ["**Distillation**", ""] + table(d, [("teacher (inside distill runs)", teacher)]) + [""]
        share = (st["params_student"] / st["params_teacher"]).mean()
        lines += [f"Parameters: teacher {int(st['params_teacher'].iloc[0]):,}, student "
                  f"{int(st['params_student'].iloc[0]):,} ({share:.1%}, compression "
                  f"{1 / share:.1f}x). Inference per 1,000 users (all items ranked, top-10): teacher "
                  f"{st['ms_teacher'].mean():.1f} ms, student {st['ms_student'].mean():.1f} ms.", ""]
        scratch = d[d.arm.str.startswith("scratch")]
        ratio = st["test"].mean() / st["teacher_test"].mean()
        checks += [f"student params / teacher params = {share:.3f} (<= 0.15: {'PASS' if share <= 0.15 else 'FAIL'})",
                   f"student / teacher test/{args.metric} = {st['test'].mean():.4f} / {st['teacher_test'].mean():.4f}"
                   f" = {ratio:.3f} (>= 0.90: {'PASS' if ratio >= 0.9 else 'FAIL'})"]
        for seg in ("test", "test_cold"):
            a, b = st[seg].mean(), scratch[seg].mean()
            checks.append(f"student vs scratch ({student_bb}) {seg}/{args.metric}: {a:.4f} vs {b:.4f} "
                          f"({'PASS' if a > b else 'FAIL'})")
    if "fusion" in args.parts:
        f = df[df.part == "fusion"]
        lines += ["**Fusion** of " + ", ".join(args.sources), ""] + table(f) + [""]
        means = f.groupby("arm")["test_cold"].mean()
        single = means[[a for a in means.index if a.startswith("finetune from")]]
        fused = means[[a for a in means.index if a.startswith("fusion")]]
        if len(single) and len(fused):
            checks.append(f"best fusion ({fused.idxmax()}) vs best single source ({single.idxmax()}) on "
                          f"test_cold/{args.metric}: {fused.max():.4f} vs {single.max():.4f} "
                          f"({'PASS' if fused.max() > single.max() else 'FAIL'})")
    lines += ["Checks:", ""] + [f"- {c}" for c in checks] + [""]
    text = "\n".join(lines)
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
