"""The k-shot protocol: support = first k interactions in time order, never a test positive."""

from __future__ import annotations

from pathlib import Path

from helpers import tiny_cfg


N_ITEMS = 12


def test_kshot_segments_for_scratch_through_config(outputs: Path):
    from tlexp.pipeline import run_pipeline

    none = run_pipeline(tiny_cfg(outputs, "strategy=scratch", "eval.kshot.shots=[1,3]", run_dir="a"))
    steps = run_pipeline(tiny_cfg(outputs, "strategy=scratch", "eval.kshot.shots=[1,3]",
                                  "eval.kshot.adapt_steps=3", "eval.kshot.adapt_lr=0.5", run_dir="b"))
    for res in (none, steps):
        keys = {"test_cold_k1/ndcg_at_10", "test_cold_k3/ndcg_at_10", "test_cold_k3/recall_at_20"}
        assert keys <= set(res["metrics"])
    # the same trained model (same seed): only the adaptation differs, and it changes the k-shot numbers
    assert none["metrics"]["test/ndcg_at_10"] == steps["metrics"]["test/ndcg_at_10"]
    assert none["metrics"]["test_cold_k3/ndcg_at_10"] != steps["metrics"]["test_cold_k3/ndcg_at_10"]
    off = run_pipeline(tiny_cfg(outputs, "strategy=popular", run_dir="c"))  # eval.kshot.shots=[] by default
    assert not any(k.startswith("test_cold_k") for k in off["metrics"])
