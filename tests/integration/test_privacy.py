"""`privacy.dp=true` in a real run: DP-SGD on the target fit, the spent ε logged; what it cannot protect refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import mlflow_runs, tiny_cfg

from tlexp.core.errors import ConfigError

QUICK = ("trainer.max_epochs=2", "pretrain.max_epochs=1", "logger.predictions_sample=0", "backbone.dim=16")


def test_a_private_finetune_logs_the_epsilon_it_spent(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from tlexp.pipeline import run_pipeline

    # 2 epochs, patience 3: every planned step is taken, so the spent ε lands on the target
    out = run_pipeline(tiny_cfg(tmp_path, *QUICK, "strategy=finetune", "loss=bpr", "privacy.dp=true",
                                "privacy.target_epsilon=4", "privacy.max_grad_norm=0.5", run_dir="dp"))
    client = MlflowClient(out["tracking_uri"])
    run = client.get_run(out["run_id"])
    m = run.data.metrics
    assert math.isfinite(m["privacy/epsilon"]) and 3.8 < m["privacy/epsilon"] <= 4.0 + 0.01
    assert m["privacy/epsilon_planned"] == pytest.approx(m["privacy/epsilon"], rel=1e-6)  # every planned step taken
    assert m["privacy/max_grad_norm"] == 0.5 and m["privacy/noise_multiplier"] > 0 and m["privacy/steps"] > 0
    n_train = int(run.data.params["data.target_train"])
    assert m["privacy/delta"] == pytest.approx(0.1 / n_train)
    assert run.data.tags["privacy"] == "dp" and run.data.params["privacy.dp"] == "True"
    per_epoch = [h.value for h in sorted(client.get_metric_history(out["run_id"], "privacy/epsilon"),
                                         key=lambda h: h.step)]
    assert len(per_epoch) == 3 and 0 < per_epoch[0] < per_epoch[1] == pytest.approx(per_epoch[2])  # 2 epochs + final
    assert math.isfinite(out["metrics"]["test/ndcg_at_10"])

    # scratch, with the noise multiplier given: more noise spends less ε on the same steps
    noisy = run_pipeline(tiny_cfg(tmp_path, *QUICK, "strategy=scratch", "loss=ce", "privacy.dp=true",
                                  f"privacy.noise_multiplier={2 * m['privacy/noise_multiplier']}", run_dir="scratch"))
    spent = client.get_run(noisy["run_id"]).data.metrics["privacy/epsilon"]
    assert 0 < spent < m["privacy/epsilon"]


@pytest.mark.parametrize("overrides,message", [
    (["strategy=finetune"], r"loss=softmax .* use loss=bpr or loss=ce"),  # the two_tower default loss
    (["strategy=finetune", "loss=sampled_ce"], r"loss=sampled_ce .* use loss=bpr"),
    (["strategy=distill", "loss=bpr"], r"strategy=finetune and strategy=scratch only .* strategy=distill"),
    (["strategy=scratch", "loss=bpr", "regularize.l2=0.1"], r"privacy.dp=true: regularize"),
    (["strategy=scratch", "loss=bpr", "privacy.delta=0"], r"privacy.delta=0.0 must be between 0 and 1"),
    (["strategy=scratch", "loss=bpr", "privacy.max_grad_norm=oops"], r"privacy.max_grad_norm must be a number"),
])
def test_what_dp_cannot_protect_is_refused_before_a_run_is_recorded(tmp_path: Path, overrides, message):
    from tlexp.pipeline import run_pipeline

    with pytest.raises(ConfigError, match=message) as err:
        run_pipeline(tiny_cfg(tmp_path, "privacy.dp=true", *overrides))
    assert "\n" not in str(err.value)
    from tlexp.tracking.store import embedded_uri, sqlite_path

    uri = embedded_uri(tmp_path)
    store = sqlite_path(uri)
    assert store is not None and (not store.exists() or mlflow_runs(uri).empty)
