"""Throughput of tlexp's paths against plain baselines, measured side by side in one process.

1. Training: samples/s of the Lightning path (a Scratch strategy in a Trainer, exactly what
   `tlexp run` uses, validation off) vs a plain PyTorch loop over the same model, loss, optimizer
   and DataLoader. Aim: ratio >= 0.9.
2. Evaluation: users/s of the vectorised full-ranking evaluator vs a naive per-user loop
   (score one user, mask, sort, compute metrics in Python). Aim: ratio >= 20.

Each measurement is repeated (alternating the two sides) and the median is reported.

    python scripts/bench_train.py [--epochs 3] [--repeats 3] [overrides...]
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
import warnings

import numpy as np
import torch


def plain_loop(model, loss_fn, loader, opt, epochs: int) -> float:
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += batch["user"].shape[0]
    return n / (time.perf_counter() - t0)


def lightning_loop(module, datamodule, epochs: int) -> float:
    import lightning.pytorch as pl

    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0)
    n = len(datamodule.train_set) * epochs
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return n / (time.perf_counter() - t0)


def naive_eval(eval_set, user_vecs: torch.Tensor, item_vecs: torch.Tensor, k: int = 10) -> float:
    """Per-user loop, the obvious way: one score vector, mask, full sort, metrics in Python."""
    n_items = item_vecs.shape[0]
    total = 0.0
    for row, u in enumerate(eval_set.users):
        s = (user_vecs[u] @ item_vecs.T).numpy().copy()
        a, b = eval_set.mask.indptr[row], eval_set.mask.indptr[row + 1]
        s[eval_set.mask.indices[a:b]] = -np.inf
        order = np.lexsort((np.arange(n_items), -s))[:k]
        a, b = eval_set.truth.indptr[row], eval_set.truth.indptr[row + 1]
        truth = set(eval_set.truth.indices[a:b].tolist())
        dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(order) if i in truth)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(truth), k)))
        total += dcg / idcg
    return total / eval_set.n_users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-users", type=int, default=600, help="users timed in the naive eval loop")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    from hydra.utils import instantiate

    from tlexp.core.config import compose
    from tlexp.data.datamodule import RecDataModule
    from tlexp.evaluation.evaluator import EvalSet, evaluate, make_eval_set
    from tlexp.models.base import build_backbone
    from tlexp.models.recommender import Recommender
    from tlexp.pipeline import load_scenario
    from tlexp.training.module import LossObjective, Optimisation, TrainingModule

    cfg = compose(["paths.output_dir=outputs/bench", *args.overrides])
    scenario, _ = load_scenario(cfg)
    target = scenario.target
    print(f"scenario {scenario.name}: {target.n_users} users, {target.n_items} items, "
          f"{len(target.train)} training pairs; torch threads {torch.get_num_threads()}")

    def fresh():
        torch.manual_seed(0)
        backbone = build_backbone(cfg.backbone, target)
        return backbone, instantiate(cfg.loss), instantiate(cfg.optimizer)

    plain, light = [], []
    for _ in range(args.repeats):
        backbone, loss, opt_factory = fresh()
        dm = RecDataModule(target, cfg.batch_size)
        plain.append(plain_loop(backbone, loss, dm.train_dataloader(), opt_factory(backbone.parameters()), args.epochs))
        backbone, loss, opt_factory = fresh()
        module = TrainingModule(Recommender(backbone), LossObjective(loss), Optimisation(opt_factory))
        light.append(lightning_loop(module, RecDataModule(target, cfg.batch_size), args.epochs))
    p, lt = statistics.median(plain), statistics.median(light)
    print(f"training   plain loop {p:12,.0f} samples/s | lightning {lt:12,.0f} samples/s | "
          f"ratio lightning/plain = {lt / p:.2f}x  (aim >= 0.9)")

    backbone, _, _ = fresh()
    backbone.eval()
    test_set = make_eval_set(target, "test")
    with torch.no_grad():
        users = backbone.user_repr({"user": torch.arange(target.n_users)})
        items = backbone.item_repr()
        score_fn = lambda u: users[u] @ items.T
        n = min(args.naive_users, test_set.n_users)
        subset = EvalSet(test_set.name, test_set.users[:n], *_slice(test_set, n), test_set.n_items,
                         segments={"": np.ones(n, dtype=bool)})
        fast, slow = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            evaluate(test_set, score_fn, list(cfg.eval.ks), cfg.eval.batch_size)
            fast.append(test_set.n_users / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            naive_eval(subset, users, items)
            slow.append(n / (time.perf_counter() - t0))
        # same numbers both ways on the subset (a benchmark of a wrong result is worth nothing)
        ref = naive_eval(subset, users, items)
        got = evaluate(subset, score_fn, [10])["test/ndcg_at_10"]
        assert abs(ref - got) < 1e-6, (ref, got)
    f, s = statistics.median(fast), statistics.median(slow)
    print(f"evaluation naive loop {s:12,.0f} users/s   | vectorised {f:12,.0f} users/s   | "
          f"ratio = {f / s:.1f}x  (aim >= 20; vectorised computes 6 metrics x {len(cfg.eval.ks)} K + coverage, "
          f"naive only ndcg@10)")


def _slice(es, n: int):
    from tlexp.evaluation.evaluator import CSR

    def cut(c: CSR) -> CSR:
        return CSR(c.indptr[: n + 1].copy(), c.indices[: c.indptr[n]].copy())

    return cut(es.truth), cut(es.mask)


if __name__ == "__main__":
    main()
