"""How tlexp scales with the synthetic world: data build, one training epoch, full-ranking evaluation.

For each scale s the world has 6,000·s users and 1,500·s items per domain (the default world is s=1).
Each scale runs in its own process, so its peak RSS is its own. Measured per scale:

1. build — generate both domains, split, cache the scenario (``load_scenario``, what ``tlexp run``
   does first); seconds and peak RSS after it;
2. one training epoch of the default ``two_tower`` on the target through the Lightning path that
   ``tlexp run`` uses (validation off); seconds, samples/s, peak RSS;
3. full-ranking evaluation of a fixed sample of test users (the first ``--eval-users`` of the test
   set: every item ranked, history masked, 6 metrics x 3 K + coverage) against the bound: a bare
   batched ``users @ items.T`` + ``topk`` over the same users and items in the same process, same
   batch size. Ratio = bound seconds / evaluator seconds (1.0 = as fast as the bare kernels).

    python scripts/bench_scale.py --scales 1 10 100 [--eval-users 4096] [--out outputs/bench_scale.md]

Growth per 10x of interactions is printed for time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def one_scale(scale: int, eval_users: int, root: str) -> dict:
    import logging
    import warnings

    import numpy as np
    import torch
    from hydra.utils import instantiate

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from bench_train import _slice, lightning_loop

    from tlexp.core.config import compose
    from tlexp.data.datamodule import RecDataModule
    from tlexp.evaluation.evaluator import EvalSet, evaluate, make_eval_set
    from tlexp.evaluation.metrics import topk_items
    from tlexp.models.base import build_backbone
    from tlexp.models.recommender import Recommender
    from tlexp.pipeline import load_scenario
    from tlexp.training.module import LossObjective, Optimisation, TrainingModule

    out: dict = {"scale": scale}
    cfg = compose([f"world.n_users={6000 * scale}", f"source.n_items={1500 * scale}",
                   f"target.n_items={1500 * scale}", f"paths.output_root={root}", f"paths.output_dir={root}/run"])
    t0 = time.perf_counter()
    scenario, _ = load_scenario(cfg)
    target = scenario.target
    out.update(build_s=time.perf_counter() - t0, build_peak_gb=peak_gb(), users=int(target.n_users),
               items=int(target.n_items), interactions=int(len(scenario.source.train) + len(target.train)
                                                            + len(target.valid) + len(target.test)))

    torch.manual_seed(0)
    backbone = build_backbone(cfg.backbone, target)
    module = TrainingModule(Recommender(backbone), LossObjective(instantiate(cfg.loss)),
                            Optimisation(instantiate(cfg.optimizer)))
    dm = RecDataModule(target, cfg.batch_size)
    t0 = time.perf_counter()
    rate = lightning_loop(module, dm, 1)
    out.update(epoch_s=time.perf_counter() - t0, train_samples_per_s=rate, train_peak_gb=peak_gb())

    backbone.eval()
    test = make_eval_set(target, "test")
    n = min(eval_users, test.n_users)
    subset = EvalSet(test.name, test.users[:n], *_slice(test, n), test.n_items, segments={"": np.ones(n, bool)})
    bs = int(cfg.eval.batch_size)
    with torch.no_grad():
        items = backbone.item_repr()
        score_fn = lambda u: backbone.score(backbone.user_repr({"user": u}), items)  # noqa: E731
        ev, bound = [], []
        for _ in range(3):  # alternate, keep the best of 3 of each
            t0 = time.perf_counter()
            evaluate(subset, score_fn, list(cfg.eval.ks), bs)
            ev.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for lo in range(0, n, bs):
                u = torch.from_numpy(subset.users[lo: lo + bs])
                topk_items(backbone.user_repr({"user": u}) @ items.T, max(cfg.eval.ks))
            bound.append(time.perf_counter() - t0)
    out.update(eval_users=n, eval_s=min(ev), bound_s=min(bound), eval_ratio=min(bound) / min(ev),
               eval_peak_gb=peak_gb())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--eval-users", type=int, default=4096)
    parser.add_argument("--out", default="outputs/bench_scale.md")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_scale(args.one, args.eval_users, args.root)))
        return
    rows = []
    for s in args.scales:
        with tempfile.TemporaryDirectory(prefix=f"tlexp-scale{s}-") as root:
            t0 = time.time()
            res = subprocess.run([sys.executable, __file__, "--one", str(s), "--root", root,
                                  "--eval-users", str(args.eval_users)], capture_output=True, text=True)
            if res.returncode != 0:
                print(f"scale {s}x failed after {time.time() - t0:.0f} s: {res.stderr.strip().splitlines()[-1:]}")
                break
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{s:>4}x  {r['users']:>9,} users {r['items']:>8,} items {r['interactions']:>11,} interactions | "
                  f"build {r['build_s']:7.1f} s {r['build_peak_gb']:5.2f} GB | epoch {r['epoch_s']:7.1f} s "
                  f"{r['train_peak_gb']:5.2f} GB | eval {r['eval_users']} users {r['eval_s']:6.2f} s vs bound "
                  f"{r['bound_s']:6.2f} s = {r['eval_ratio']:.2f}x | peak {r['eval_peak_gb']:5.2f} GB", flush=True)
    load = os.getloadavg()
    lines = [f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (after the run); torch threads default", "",
             "| scale | users (target) | items (target) | interactions (both) | build s | build peak GB | epoch s | "
             "train peak GB | eval users | eval s | bound s | eval / bound | peak GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scale']}x | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | "
                     f"{r['build_s']:.1f} | {r['build_peak_gb']:.2f} | {r['epoch_s']:.1f} | {r['train_peak_gb']:.2f} | "
                     f"{r['eval_users']} | {r['eval_s']:.2f} | {r['bound_s']:.2f} | {r['eval_ratio']:.2f} | "
                     f"{r['eval_peak_gb']:.2f} |")
    for a, b in zip(rows, rows[1:], strict=False):
        g = b["interactions"] / a["interactions"]
        lines.append(f"\n{a['scale']}x -> {b['scale']}x: interactions x{g:.1f}; build time x"
                     f"{b['build_s'] / a['build_s']:.1f}, build peak RSS "
                     f"x{b['build_peak_gb'] / a['build_peak_gb']:.1f}, epoch x{b['epoch_s'] / a['epoch_s']:.1f}, "
                     f"overall peak RSS x{b['eval_peak_gb'] / a['eval_peak_gb']:.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
