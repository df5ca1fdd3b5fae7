"""Fusion of several source models: the fusion head, the ensemble, and the strategy end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import mlflow_runs, tiny_cfg

from tlexp.strategies.fusion import FusionHead, simplex_grid, standardise

# The end-to-end tests share one cache of pretrained sources and train briefly.
FAST = ["data=ecommerce", "trainer.max_epochs=1", "pretrain.max_epochs=1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fusion_cache")


def cfg_for(outputs: Path, cache: Path, *overrides: str, run_dir: str = "run"):
    return tiny_cfg(outputs, f"paths.cache_dir={cache}", *FAST, *overrides, run_dir=run_dir)


def _head(mode: str) -> FusionHead:
    # 3 target users, 2 sources of dimension 2; user 0 known by both, user 1 by source 0 only, user 2 by none
    t0 = torch.tensor([[1.0, 0.0], [2.0, 2.0], [0.0, 0.0]])
    t1 = torch.tensor([[0.0, 3.0], [0.0, 0.0], [0.0, 0.0]])
    have = [torch.tensor([True, True, False]), torch.tensor([True, False, False])]
    return FusionHead([t0, t1], have, dim=2, mode=mode)


def test_weighted_and_gate_start_uniform_over_the_sources_that_know_the_user():
    users = torch.arange(3)
    for mode in ("weighted", "gate"):
        head = _head(mode)
        w = head.weights(users)
        if mode == "gate":  # per user: a softmax over the user's sources only
            assert w.tolist() == [[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]]
        else:               # one softmax over sources, zero where a source does not know the user
            assert w.tolist() == [[0.5, 0.5], [0.5, 0.0], [0.0, 0.0]]
        out = head(users)
        assert out[0].tolist() == [0.5, 1.5]              # (t0 + t1) / 2 through identity adapters
        assert torch.isfinite(out).all() and out[2].tolist() == [0.0, 0.0]
    with torch.no_grad():
        head = _head("weighted")
        head.logits.copy_(torch.tensor([0.0, torch.log(torch.tensor(3.0))]))  # softmax -> [0.25, 0.75]
    assert head.weights(users)[0].tolist() == pytest.approx([0.25, 0.75])


def test_gate_gradient_is_finite_for_users_no_source_knows():
    head = _head("gate")
    with torch.no_grad():
        head.gate.weight.normal_()
    head(torch.arange(3)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_concat_starts_as_the_average_of_the_sources():
    head = _head("concat")
    out = head(torch.arange(3))
    assert out.tolist() == [[0.5, 1.5], [1.0, 1.0], [0.0, 0.0]]


def test_simplex_grid_and_standardise():
    grid = simplex_grid(3, 2)
    assert len(grid) == 6 and all(sum(w) == pytest.approx(1) for w in grid)
    assert (0.5, 0.5, 0.0) in grid and simplex_grid(1, 10) == [(1.0,)]
    z = standardise(torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]]))
    assert z.mean(1).abs().max() < 1e-6 and z.std(1).tolist() == pytest.approx([1.0, 1.0])
    assert z[0].tolist() == pytest.approx([-1.0, 0.0, 1.0])


def test_ensemble_of_one_source_is_finetune_from_it(outputs: Path, cache: Path):
    """The fair single-source baseline on the same target split is fusion's ensemble of one source."""
    from tlexp.pipeline import run_pipeline

    # k-shot too: the ensemble adapts each member on the support exactly as finetune's baseline adapter does
    kshot = ["eval.kshot.shots=[1,3]", "eval.kshot.adapt_steps=2", "eval.kshot.adapt_lr=0.5"]
    ft = run_pipeline(cfg_for(outputs, cache, "strategy=finetune", "trainer.max_epochs=2", *kshot, run_dir="ft"))
    ens = run_pipeline(cfg_for(outputs, cache, "strategy=fusion", "strategy.fusion.sources=[news]",
                               "strategy.fusion.mode=ensemble", "trainer.max_epochs=2", *kshot, run_dir="ens"))
    keys = [k for k in ft["metrics"] if k.startswith(("test", "val"))]
    assert any(k.startswith("test_cold_k3/") for k in keys)
    assert keys and all(ens["metrics"][k] == pytest.approx(ft["metrics"][k], abs=1e-9) for k in keys)
    assert ens["metrics"]["fusion/weight_news"] == 1.0
    df = mlflow_runs(ft["tracking_uri"]).set_index("run_id")
    assert df.loc[ens["run_id"], "tags.pretrain_news_cache"] == "hit"  # finetune's pretraining, shared
    assert df.loc[ens["run_id"], "tags.pretrain_news_key"] == df.loc[ft["run_id"], "tags.pretrain_key"]


def test_each_mode_fuses_two_sources_and_logs_their_weights(outputs: Path, cache: Path):
    from tlexp.pipeline import run_pipeline

    for mode in ("concat", "weighted", "gate", "ensemble"):
        res = run_pipeline(cfg_for(outputs, cache, "strategy=fusion", "strategy.fusion.sources=[news,social]",
                                   f"strategy.fusion.mode={mode}", run_dir=mode))
        m = res["metrics"]
        assert 0 < m["test/ndcg_at_10"] <= 1 and 0 <= m["test_cold/ndcg_at_10"] <= 1
        row = mlflow_runs(res["tracking_uri"]).set_index("run_id").loc[res["run_id"]]
        assert row["params.fusion.sources"] == "news,social" and row["params.fusion.mode"] == mode
        assert 0.4 < row["metrics.fusion/users_news"] < 0.8  # the synthetic world: 60% of users per domain
        if mode in ("weighted", "ensemble"):
            assert m["fusion/weight_news"] + m["fusion/weight_social"] == pytest.approx(1.0)
        if mode == "gate":
            # every cold-start user is known by news (cold users are overlap users of the run's source)
            assert 0 < m["fusion/gate_cold_news"] <= 1
            assert m["fusion/gate_cold_news"] + m["fusion/gate_cold_social"] == pytest.approx(1.0, abs=1e-5)
            assert 0 < m["fusion/gate_news"] + m["fusion/gate_social"] < 1  # some users no source knows


def test_target_is_left_out_of_the_sources_and_unknown_sources_are_config_errors(outputs: Path, cache: Path):
    from tlexp.core.errors import ConfigError
    from tlexp.pipeline import run_pipeline

    with pytest.raises(ConfigError, match="no domain named 'nope'"):
        run_pipeline(cfg_for(outputs, cache, "strategy=fusion", "strategy.fusion.sources=[nope]"))
    with pytest.raises(ConfigError, match="other than the target"):
        run_pipeline(cfg_for(outputs, cache, "strategy=fusion", "strategy.fusion.sources=[ecommerce]"))
    with pytest.raises(ConfigError, match="strategy.fusion.mode"):
        run_pipeline(cfg_for(outputs, cache, "strategy=fusion", "strategy.fusion.mode=stack"))
