"""The console and the MLflow record as a user meets them (#14): a quiet, labelled single run whose
record says what produced it, a data sweep nested in one experiment with its compare report, the
run list of a sweep, and the Python API."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import run_cli

SMALL = ["world.n_users=800", "source.n_items=300", "target.n_items=300", "trainer.max_epochs=2",
         "pretrain.max_epochs=2", "logger.predictions_sample=10"]
WARNING_LINE = re.compile(r"(\w+Warning\b|warnings\.warn|^\s*warn\()", re.MULTILINE)


@pytest.mark.slow
def test_a_run_is_quiet_names_its_stages_and_records_what_produced_it(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "TLEXP_OUTPUTS": str(tmp_path / "outputs"), "PYTHONWARNINGS": "default"}
    # the default trainer (progress bars on), a smaller world; optimizer.lr names the run
    proc = run_cli(["run", "optimizer.lr=0.002", *SMALL], env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert WARNING_LINE.search(console) is None, WARNING_LINE.search(console).group(0)
    assert "INFO" not in console and "v_num" not in console
    stages = [line.split(":")[0] for line in proc.stdout.splitlines() if re.match(r"^(data|pretrain|transfer|"
                                                                                 r"train|evaluate|track): ", line)]
    assert stages == ["data", "pretrain", "transfer", "evaluate", "track"]
    assert "pretrain · epoch 2/2" in proc.stdout and "target · epoch 2/2" in proc.stdout
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    run_id = run.info.run_id
    tail = proc.stdout.strip().splitlines()[-4:]
    assert any(run_id in line for line in tail) and any("tlexp ui" in line for line in tail)
    # what produced it
    tags = run.data.tags
    assert run.info.run_name == "finetune two_tower lr=0.002 n_users=800 source.n_items=300 target.n_items=300 " \
                                "trainer.max_epochs=2 pretrain.max_epochs=2 s0"  # logger.* left out
    assert tags["mlflow.source.name"] == "tlexp run" and tags["mlflow.user"]
    assert tags["tlexp.command"].startswith("tlexp run optimizer.lr=0.002 world.n_users=800")
    assert tags["tlexp.overrides"].split() == ["optimizer.lr=0.002", *SMALL]
    assert int(tags["best_epoch"]) in (1, 2)  # counted from 1, as on the bar
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # the UI draws a metric whose latest step is 0 as a bar per run: every final test value
    assert [m.step for m in client.get_metric_history(run_id, "test/ndcg_at_10")] == [0]
    assert max(m.step for m in client.get_metric_history(run_id, "val/ndcg_at_10")) > 0  # a curve
    # the run's log, with the stage lines, is an artifact
    log = Path(client.download_artifacts(run_id, "run.log", str(tmp_path))).read_text()
    for stage in ("data:", "pretrain:", "transfer:", "evaluate:"):
        assert f"[tlexp][INFO] - {stage}" in log


@pytest.fixture(scope="module")
def data_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("datasweep")
    uri = f"sqlite:///{out / 'store.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "TLEXP_OUTPUTS": str(out / "outputs")}
    proc = run_cli(["run", "-m", "data=social,ecommerce", "strategy=scratch", "seed=0", *SMALL, "trainer=debug"],
                   env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return uri, env, proc


@pytest.mark.slow
def test_a_data_sweep_nests_every_job_under_its_parent_in_one_experiment(data_sweep, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    uri, _, _ = data_sweep
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("tlexp.sweep_parent") == "true"]
    kids = [r for r in runs if r.data.tags.get("tlexp.sweep_parent") != "true"]
    assert len(parents) == 1 and len(kids) == 2
    parent = parents[0]
    assert {r.info.experiment_id for r in runs} == {parent.info.experiment_id}
    assert client.get_experiment(parent.info.experiment_id).name == "sweep data=social,ecommerce"
    assert all(k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids)
    assert sorted(k.data.tags["target"] for k in kids) == ["ecommerce", "social"]
    assert all(k.info.status == "FINISHED" for k in kids) and parent.info.status == "FINISHED"
    # the sweep's compare report, one table per scenario, is attached to the parent
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert {"compare/compare.md", "compare/compare_0.png", "compare/compare_1.png"} <= files
    report = Path(client.download_artifacts(parent.info.run_id, "compare/compare.md", str(tmp_path))).read_text()
    assert report.count("## ") == 2 and "scratch" in report


def _parent_id(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return next(r.info.run_id for r in runs if r.data.tags.get("tlexp.sweep_parent") == "true")


@pytest.mark.slow
def test_runs_lists_the_jobs_of_a_sweep(data_sweep):
    uri, env, _ = data_sweep
    proc = run_cli(["runs", "--sweep", "latest", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 2 and {r["target"] for r in rows} == {"social", "ecommerce"}
    assert all(r["status"] == "FINISHED" and 0 <= r["metrics"]["test/ndcg_at_10"] <= 1 for r in rows)
    assert len({r["sweep_id"] for r in rows}) == 1
    table = run_cli(["runs", "--sweep", rows[0]["sweep_id"]], env)
    assert table.returncode == 0 and all(r["run_id"] in table.stdout for r in rows)
    # a sweep's parent holds no model: recommend says so and names a job
    parent = run_cli(["recommend", f"run={_parent_id(uri)}", "users=u1"], env)
    assert parent.returncode == 2 and "is the parent of sweep" in parent.stderr and "run=" in parent.stderr
    missing = run_cli(["runs", "--sweep", "nope"], env)
    assert missing.returncode == 2 and "sweep 'nope' has no runs" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_the_python_api_returns_the_logged_metrics_and_run_id(tmp_path: Path, monkeypatch):
    import tlexp
    from helpers import TINY, mlflow_runs

    from tlexp.core.errors import ConfigError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = tlexp.run([*TINY, "strategy=popular"], outputs=tmp_path / "outputs")
    df = mlflow_runs(result.tracking_uri).set_index("run_id")
    assert df.loc[result.run_id, "status"] == "FINISHED"
    assert result["test/ndcg_at_10"] == pytest.approx(df.loc[result.run_id, "metrics.test/ndcg_at_10"], abs=1e-12)
    assert Path(result.run_dir).is_dir() and Path(result.run_dir).parent.parent.name == "runs"
    with pytest.raises(ConfigError, match="strategy/nope"):
        tlexp.run(["strategy=nope"], outputs=tmp_path / "outputs")
