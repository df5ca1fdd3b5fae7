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
