"""Fusion of several source models: the fusion head, the ensemble, and the strategy end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import mlflow_runs, tiny_cfg


# The end-to-end tests share one cache of pretrained sources and train briefly.
FAST = ["data=ecommerce", "trainer.max_epochs=1", "pretrain.max_epochs=1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fusion_cache")


def cfg_for(outputs: Path, cache: Path, *overrides: str, run_dir: str = "run"):
    return tiny_cfg(outputs, f"paths.cache_dir={cache}", *FAST, *overrides, run_dir=run_dir)


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
