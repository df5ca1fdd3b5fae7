"""Domain adaptation: the alignment pieces (GRL, MMD, CORAL) and the ``adapt`` strategy end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_cfg


def test_adapt_logs_domain_accuracy_and_alignment_loss_per_epoch(outputs: Path):
    from mlflow.tracking import MlflowClient

    from tlexp.pipeline import run_pipeline

    dann = run_pipeline(tiny_cfg(outputs, "strategy=adapt", "adapt.method=dann", "adapt.warmup_epochs=2", run_dir="d"))
    client = MlflowClient(dann["tracking_uri"])
    run = client.get_run(dann["run_id"])
    assert run.data.params["adapt.method"] == "dann" and run.data.params["strategy.name"] == "adapt"
    for key in ("train/domain_acc", "train/domain_acc_user", "train/domain_acc_item", "train/align_loss",
                "train/rec_loss", "train/dann_lambda"):
        assert len(client.get_metric_history(dann["run_id"], key)) == 3, key  # one point per epoch
    lam = sorted(client.get_metric_history(dann["run_id"], "train/dann_lambda"), key=lambda m: m.step)
    lam = [m.value for m in lam]
    assert 0 < lam[0] < lam[1] < lam[2] <= 1  # the warm-up of the reversal coefficient
    acc = client.get_metric_history(dann["run_id"], "train/domain_acc")
    assert all(0 <= m.value <= 1 for m in acc)
    assert 0 < dann["metrics"]["test/ndcg_at_10"] <= 1
    # coral: the alignment term is the CORAL distance, and the probe still reports separability
    cor = run_pipeline(tiny_cfg(outputs, "strategy=adapt", "adapt.method=coral", "adapt.align_on=[item]", run_dir="c"))
    hist = client.get_metric_history(cor["run_id"], "train/align_loss")
    assert len(hist) == 3 and all(m.value > 0 for m in hist)
    assert len(client.get_metric_history(cor["run_id"], "train/domain_acc_item")) == 3
    assert not client.get_metric_history(cor["run_id"], "train/domain_acc_user")


def test_adapt_rejects_an_unknown_method(outputs: Path):
    from tlexp.core.errors import ConfigError
    from tlexp.pipeline import run_pipeline

    with pytest.raises(ConfigError, match="adapt.method 'wasserstein'"):
        run_pipeline(tiny_cfg(outputs, "strategy=adapt", "adapt.method=wasserstein"))


def test_adapt_reweight_pretrains_on_importance_resampled_source_pairs(outputs: Path):
    """adapt.method=reweight: the source model is pretrained on importance-resampled pairs (its own
    cache entry, shared with finetune + pretrain.reweight=true), the weights' summary is logged, the
    weights are what importance_weights computes, and no alignment loss is added."""
    import json

    import numpy as np
    from mlflow.tracking import MlflowClient

    from tlexp.core.errors import ConfigError
    from tlexp.data.reweight import ReweightSettings, importance_weights
    from tlexp.pipeline import run_pipeline
    from tlexp.pipeline.build import load_scenario

    out = run_pipeline(tiny_cfg(outputs, "strategy=adapt", "adapt.method=reweight", run_dir="r"))
    client = MlflowClient(out["tracking_uri"])
    run = client.get_run(out["run_id"])
    m, tags = run.data.metrics, run.data.tags
    assert tags["pretrain_reweight"] == "on"
    assert 0 < m["pretrain/reweight_ess_share"] <= 1 and 0 <= m["pretrain/reweight_auc"] <= 1
    assert m["pretrain/reweight_w_min"] <= m["pretrain/reweight_w_p50"] <= m["pretrain/reweight_w_max"] <= 10
    assert all(h.value == 0 for h in client.get_metric_history(out["run_id"], "train/align_loss"))
    assert len(client.get_metric_history(out["run_id"], "train/domain_acc")) == 3
    saved = json.loads(open(client.download_artifacts(out["run_id"], "pretrain_reweight.json")).read())
    assert sum(saved["histogram"]["pairs"]) == len(load_scenario(tiny_cfg(outputs))[0].source.train)
    # the cached weights are the estimator's, for this source and target
    scenario, _ = load_scenario(tiny_cfg(outputs))
    entry = outputs / "cache" / "pretrain" / tags["pretrain_key"]
    again = importance_weights(scenario.source, scenario.target, ReweightSettings(), seed=0)
    assert np.allclose(np.load(entry / "weights.npy"), again.weights)
    # unweighted pretraining keeps its own key; finetune + pretrain.reweight=true shares the reweighted one
    plain = run_pipeline(tiny_cfg(outputs, "strategy=finetune", run_dir="p"))
    ft = run_pipeline(tiny_cfg(outputs, "strategy=finetune", "pretrain.reweight=true", run_dir="f"))
    plain_tags = client.get_run(plain["run_id"]).data.tags
    ft_tags = client.get_run(ft["run_id"]).data.tags
    assert plain_tags["pretrain_key"] != tags["pretrain_key"] and "pretrain_reweight" not in plain_tags
    assert ft_tags["pretrain_key"] == tags["pretrain_key"] and ft_tags["pretrain_cache"] == "hit"
    with pytest.raises(ConfigError, match="works on \\(user, item\\) pairs"):
        run_pipeline(tiny_cfg(outputs, "backbone=sasrec", "strategy=finetune", "pretrain.reweight=true",
                              run_dir="s"))
