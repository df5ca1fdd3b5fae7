"""Sweeps: joblib multirun nested under one MLflow parent run, the shared pretraining cache, the
Optuna sweeper, launcher/experiment presets — and `tlexp compare` on the sweep's runs.

The two sweeps run as `tlexp` subprocesses (Hydra owns the process: logging, cwd, singletons),
once per module, on a tiny world with the debug trainer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from itertools import product
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import ROOT, TINY, mlflow_runs

SMALL = [*TINY, "world.n_users=400", "trainer.max_epochs=2", "pretrain.max_epochs=2"]


def _tlexp(out: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TLEXP_OUTPUTS": str(out), "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "tlexp.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _uri(out: Path) -> str:
    return f"sqlite:///{out.resolve() / 'mlflow.db'}"


def _split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    is_parent = df.get("tags.tlexp.sweep_parent", pd.Series(index=df.index, dtype=object)).fillna("") == "true"
    return df[is_parent], df[~is_parent]


# --------------------------------------------------------------------------- the cache lock
def test_cache_lock_makes_concurrent_builders_build_once(tmp_path: Path):
    """Two processes want the same entry at once: one builds (slowly), the other waits and hits."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from tlexp.core.cache import cached_dir
        def build(p):
            with open({str(tmp_path / 'builds.txt')!r}, 'a') as f:
                f.write('built\\n')
            time.sleep(1.5)
            (p / 'x').write_text('payload')
        path, hit = cached_dir({str(tmp_path / 'cache' / 'pretrain')!r}, 'k1', build)
        print('hit' if hit else 'miss', (path / 'x').read_text())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outs == ["hit payload", "miss payload"]
    assert (tmp_path / "builds.txt").read_text().count("built") == 1
    assert sorted(p.name for p in (tmp_path / "cache" / "pretrain").iterdir()) == ["k1"]  # locks live elsewhere


# --------------------------------------------------------------------------- joblib multirun
@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("joblib") / "outputs"
    # ~50-90 s; the bound catches an exit that waits for loky's idle workers (300 s), as tlexp's fast
    # exit once did when it ran the atexit handlers without threading's exit hooks (cli/app.py entry)
    proc = _tlexp(out, "run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                  "strategy=scratch,finetune", "seed=0,1,2", *SMALL, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_joblib_multirun_leaves_six_children_under_one_parent(joblib_sweep):
    out, proc = joblib_sweep
    assert "database is locked" not in proc.stdout + proc.stderr
    parents, kids = _split(mlflow_runs(_uri(out)))
    assert len(parents) == 1 and len(kids) == 6
    parent = parents.iloc[0]
    assert parent["status"] == "FINISHED" and parent["tags.sweep.jobs"] == "6" and parent["tags.sweep.finished"] == "6"
    assert (kids["status"] == "FINISHED").all()
    assert (kids["tags.mlflow.parentRunId"] == parent["run_id"]).all()
    assert (kids["tags.sweep_id"] == parent["tags.sweep_id"]).all() and parent["tags.sweep_id"]
    assert (kids["experiment_id"] == parent["experiment_id"]).all()
    # no lost or duplicated job: each (strategy, seed) exactly once, job numbers 0..5
    pairs = sorted(zip(kids["tags.strategy"], kids["tags.seed"], strict=True))
    assert pairs == sorted(product(["finetune", "scratch"], ["0", "1", "2"]))
    assert sorted(kids["tags.sweep_job"].astype(int)) == list(range(6))
    assert f"compare: tlexp compare --sweep {parent['tags.sweep_id']}" in proc.stdout
    sweep_file = json.loads(next((out / "multirun").rglob("tlexp_sweep.json")).read_text())
    assert sweep_file["parent_run_id"] == parent["run_id"]


def test_sweep_pretrains_once_per_seed(joblib_sweep):
    out, _ = joblib_sweep
    _, kids = _split(mlflow_runs(_uri(out)))
    fine = kids[kids["tags.strategy"] == "finetune"]
    assert sorted(fine["tags.pretrain_cache"]) == ["miss"] * 3
    assert fine.groupby("tags.seed")["tags.pretrain_key"].nunique().eq(1).all()
    assert fine["tags.pretrain_key"].nunique() == 3
    entries = [p.name for p in (out / "cache" / "pretrain").iterdir() if not p.name.startswith(".")]
    assert sorted(entries) == sorted(fine["tags.pretrain_key"])
    assert kids.loc[kids["tags.strategy"] == "scratch", "tags.pretrain_cache"].isna().all()


def test_learning_curves_are_an_artifact_of_each_trained_run(joblib_sweep):
    from mlflow.tracking import MlflowClient

    out, _ = joblib_sweep
    _, kids = _split(mlflow_runs(_uri(out)))
    client = MlflowClient(_uri(out))
    for rid in kids["run_id"]:
        arts = [a.path for a in client.list_artifacts(rid, "plots")]
        assert arts == ["plots/learning_curves.png"], rid
    png = Path(client.download_artifacts(kids["run_id"].iloc[0], "plots/learning_curves.png")).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_compare_on_the_sweep_equals_pandas(joblib_sweep, tmp_path: Path, capsys, monkeypatch):
    """`tlexp compare` numbers = pandas on mlflow.search_runs of the same runs; the plot is a real PNG."""
    from scipy import stats

    from tlexp.cli.app import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # it would win over --outputs

    out, _ = joblib_sweep
    plot, csv = tmp_path / "cmp.png", tmp_path / "cmp.csv"
    rc = main(["compare", "--outputs", str(out), "--sweep", "latest", "--metric", "test_cold/ndcg_at_10",
               "--csv", str(csv), "--plot", str(plot)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "finetune" in printed and "scratch" in printed and "baseline" in printed
    table = pd.read_csv(csv).set_index("strategy")
    _, kids = _split(mlflow_runs(_uri(out)))
    for col in ("test/ndcg_at_10", "test_warm/ndcg_at_10", "test_cold/ndcg_at_10"):
        agg = kids.groupby("tags.strategy")[f"metrics.{col}"].agg(["mean", "std"])
        for s in ("finetune", "scratch"):
            assert table.loc[s, f"{col} mean"] == pytest.approx(agg.loc[s, "mean"], abs=1e-12)
            assert table.loc[s, f"{col} std"] == pytest.approx(agg.loc[s, "std"], abs=1e-12)
    assert table["n"].tolist() == [3, 3]
    wide = kids.pivot(index="tags.seed", columns="tags.strategy", values="metrics.test_cold/ndcg_at_10")
    ref = stats.ttest_rel(wide["finetune"], wide["scratch"]).pvalue
    assert table.loc["finetune", "test_cold/ndcg_at_10 baseline"] == "scratch"  # the only non-transfer one
    assert table.loc["finetune", "test_cold/ndcg_at_10 p"] == pytest.approx(ref, rel=1e-9)
    gain = (wide["finetune"].mean() / wide["scratch"].mean() - 1) * 100
    assert table.loc["finetune", "test_cold/ndcg_at_10 gain_pct"] == pytest.approx(gain)
    png = plot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


# --------------------------------------------------------------------------- Optuna
@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("optuna") / "outputs"
    proc = _tlexp(out, "run", "-m", "hparams_search=finetune_optuna", "hydra.sweeper.n_trials=4",
                  *SMALL, "trainer.max_epochs=1", "pretrain.max_epochs=1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_optuna_sweep_optimises_validation_ndcg_and_tags_the_best_trial(optuna_sweep):
    from mlflow.tracking import MlflowClient

    out, proc = optuna_sweep
    parents, kids = _split(mlflow_runs(_uri(out)))
    assert len(parents) == 1 and len(kids) == 4 and (kids["status"] == "FINISHED").all()
    parent = parents.iloc[0]
    assert parent["tags.optuna.objective"] == "val/ndcg_at_10" and parent["tags.optuna.n_trials"] == "4"
    # every trial's objective value is its run's val/ndcg_at_10 (never the test metric)
    client = MlflowClient(_uri(out))
    history = {m.step: m.value for m in client.get_metric_history(parent["run_id"], "optuna/value")}
    kids = kids.assign(job=kids["tags.sweep_job"].astype(int)).set_index("job").sort_index()
    assert sorted(history) == list(range(4))
    for job, value in history.items():
        assert value == pytest.approx(kids.loc[job, "metrics.val/ndcg_at_10"], abs=1e-12)
    assert [history[j] for j in range(4)] != pytest.approx(kids["metrics.test/ndcg_at_10"].tolist())
    best_job = int(kids["metrics.val/ndcg_at_10"].idxmax())
    best = kids.loc[best_job]
    assert parent["tags.optuna.best_job"] == str(best_job)
    assert float(parent["tags.optuna.best_value"]) == pytest.approx(best["metrics.val/ndcg_at_10"], abs=1e-12)
    assert parent["tags.optuna.best_run_id"] == best["run_id"] and best["tags.optuna.best"] == "true"
    assert (kids["tags.optuna.best"].fillna("") == "true").sum() == 1
    best_params = json.loads(parent["tags.optuna.best_params"])
    assert set(best_params) == {"transfer.lr_scale", "transfer.init_new_users",
                                "transfer.carry_user_embeddings"}
    assert float(best["params.transfer.lr_scale"]) == pytest.approx(best_params["transfer.lr_scale"])
    assert best["params.transfer.init_new_users"] == best_params["transfer.init_new_users"]
    assert parent["params.best.transfer.init_new_users"] == best_params["transfer.init_new_users"]
    # printed, and written next to the sweep
    assert f"Optuna best trial #{best_job} (job {best_job}): val/ndcg_at_10 = " in proc.stdout
    res = yaml.safe_load(next((out / "multirun").rglob("optimization_results.yaml")).read_text())
    assert res["best_value"] == pytest.approx(best["metrics.val/ndcg_at_10"]) and res["n_trials"] == 4
    # the trials differ in transfer settings only, so they share one source pretraining
    assert sorted(kids["tags.pretrain_cache"]) == ["hit"] * 3 + ["miss"]
    assert kids["params.transfer.lr_scale"].nunique() == 4
