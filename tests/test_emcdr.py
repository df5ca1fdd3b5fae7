"""EMCDR: the mapping (identity start, recovers a known map) and cold-start users scored through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_cfg

from tlexp.core.errors import ConfigError
from tlexp.strategies.emcdr import Mapping, fit_mapping


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_mapping_starts_as_the_identity(kind: str):
    x = torch.randn(10, 6)
    assert torch.allclose(Mapping(6, 6, kind, hidden=[16])(x), x)
    assert Mapping(6, 4, kind, hidden=[16])(x).shape == (10, 4)
    with pytest.raises(ConfigError, match="linear or mlp"):
        Mapping(6, 6, "cubic")


def test_fit_mapping_recovers_a_linear_map():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3), torch.randn(3)
    x = torch.randn(400, 5)
    y = x @ a + b
    mapping = Mapping(5, 3, "linear")
    stats = fit_mapping(mapping, x, y, epochs=500, lr=0.05, batch_size=100)
    assert stats["map_val_mse"] < 1e-3 and stats["map_users"] == 400
    assert torch.allclose(mapping.net.weight.T, a, atol=0.05) and torch.allclose(mapping.net.bias, b, atol=0.05)


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
