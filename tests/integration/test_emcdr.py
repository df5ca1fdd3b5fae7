"""EMCDR: the mapping (identity start, recovers a known map) and cold-start users scored through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_cfg


def test_emcdr_scores_cold_users_with_mapped_source_embeddings(outputs: Path):
    from helpers import assembled

    from tlexp.pipeline import run_pipeline

    emcdr = run_pipeline(tiny_cfg(outputs, "strategy=emcdr", run_dir="e"))
    scratch = run_pipeline(tiny_cfg(outputs, "strategy=scratch", run_dir="s"))
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(emcdr["tracking_uri"]).get_run(emcdr["run_id"]).data
    assert logged.metrics["emcdr/map_users"] == int(logged.params["emcdr.train_overlap_users"]) > 0
    assert logged.metrics["emcdr/map_val_mse"] >= 0
    # same seed, same target training: warm users are scored identically, cold users differently
    assert emcdr["metrics"]["test_warm/ndcg_at_10"] == pytest.approx(scratch["metrics"]["test_warm/ndcg_at_10"])
    assert emcdr["metrics"]["test_cold/ndcg_at_10"] > scratch["metrics"]["test_cold/ndcg_at_10"]

    # the cold users' vectors are exactly the mapping of their source representation
    cfg = tiny_cfg(outputs, "strategy=emcdr", "trainer.max_epochs=1", run_dir="x")
    asm = assembled(cfg)
    asm.strategy.after_fit(asm.built, asm.inputs)
    model, scenario = asm.built.model, asm.scenario
    cold = torch.from_numpy(scenario.target.cold_users[:5])
    warm = torch.from_numpy(scenario.target.train["user"].unique()[:5])
    with torch.no_grad():
        src_rows = asm.inputs.user_map()[cold]
        pre = asm.inputs.models["source"].backbone
        expected = model.mapping(pre.user_repr({"user": src_rows}))
        assert torch.allclose(model.user_vectors(cold), expected, atol=1e-6)
        assert torch.allclose(model.user_vectors(warm), model.backbone.user_repr({"user": warm}))
