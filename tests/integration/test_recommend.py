"""`tlexp recommend`: a finished run's model, rebuilt from MLflow, gives the run's own predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import finished_run, tiny_cfg

from tlexp.core.errors import ConfigError

SMALL = ["world.n_users=400", "trainer.max_epochs=2", "pretrain.max_epochs=2"]


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    """One finished tiny finetune run in its own embedded store."""
    out = tmp_path_factory.mktemp("rec") / "outputs"
    return out, finished_run(out, "strategy=finetune", *SMALL)


def _predictions(result) -> pd.DataFrame:
    from mlflow.tracking import MlflowClient

    path = MlflowClient(result["tracking_uri"]).download_artifacts(result["run_id"], "predictions.csv")
    return pd.read_csv(path, dtype={"user": str})


def test_recommend_equals_the_runs_predictions_sample(finetune_run):
    from tlexp.serving.recommend import load_run, recommend

    out, result = finetune_run
    pred = _predictions(result)
    assert len(pred) == 20 and pred["cold_start"].any() and (~pred["cold_start"]).any()
    loaded = load_run(result["run_id"], result["tracking_uri"], out)
    recs = recommend(loaded, pred["user"].tolist(), k=10)
    got = recs.groupby("user", sort=False)["item"].apply(" ".join)
    assert got.index.tolist() == pred["user"].tolist()
    assert got.tolist() == pred["top_10"].tolist()
    # k distinct items per user, none of them seen in training or validation
    target = loaded.scenario.target
    seen = pd.concat([target.train, target.valid])
    for user, g in recs.groupby("user"):
        assert len(g) == 10 and g["item"].nunique() == 10 and g["rank"].tolist() == list(range(1, 11))
        assert g["score"].is_monotonic_decreasing
        u = target.user_index(np.array([user], dtype=object))[0]
        seen_items = set(target.items[seen.loc[seen["user"] == u, "item"]])
        assert not seen_items & set(g["item"])
    # titles come from the item table
    info = target.item_info.set_index("item")
    assert (recs["title"].to_numpy() == info.loc[recs["item"], "text"].to_numpy()).all()
    assert recs["title"].str.len().gt(0).all()


def test_exclude_all_also_drops_held_out_items(finetune_run):
    from tlexp.serving.recommend import load_run, recommend

    out, result = finetune_run
    loaded = load_run(result["run_id"], result["tracking_uri"], out)
    target = loaded.scenario.target
    users = target.users[np.unique(target.test["user"])[:30]].tolist()
    recs = recommend(loaded, users, k=20, exclude="all")
    test_items = target.test.assign(item=target.items[target.test["item"]], user=target.users[target.test["user"]])
    pairs = set(zip(test_items["user"], test_items["item"], strict=True))
    assert not any((u, i) in pairs for u, i in zip(recs["user"], recs["item"], strict=True))
    with_history = recommend(loaded, users, k=20)
    assert any((u, i) in pairs for u, i in zip(with_history["user"], with_history["item"], strict=True))
    # the hit column is exactly "among the user's held-out test items"
    expected = [(u, i) in pairs for u, i in zip(with_history["user"], with_history["item"], strict=True)]
    assert with_history["hit"].tolist() == expected and any(expected)
    assert not recs["hit"].any()


def test_history_shows_the_last_known_items_of_each_user(finetune_run):
    from tlexp.serving.recommend import load_run, user_history

    out, result = finetune_run
    loaded = load_run(result["run_id"], result["tracking_uri"], out)
    target = loaded.scenario.target
    users = target.users[np.unique(target.train["user"])[:5]].tolist()[::-1]
    hist = user_history(loaded, users, n=3)
    assert list(dict.fromkeys(hist["user"])) == users  # in the order asked
    known = pd.concat([target.train, target.valid])
    for user, g in hist.groupby("user", sort=False):
        u = target.user_index(np.array([user], dtype=object))[0]
        mine = known[known["user"] == u]
        assert g["item"].tolist() == target.items[mine["item"].to_numpy()[-3:]].tolist()
        assert g["split"].iloc[-1] == ("valid" if (target.valid["user"] == u).any() else "train")


def test_cli_reads_users_from_a_file_and_writes_csv(finetune_run, tmp_path: Path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tlexp.cli.app import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # it would win over outputs=

    out, result = finetune_run
    pred_file = MlflowClient(result["tracking_uri"]).download_artifacts(result["run_id"], "predictions.csv")
    rc = main(["recommend", f"run={result['run_id']}", f"users={pred_file}", "k=10",
               f"out={tmp_path / 'recs.csv'}", f"outputs={out}"])
    assert rc == 0
    printed = capsys.readouterr().out
    recs = pd.read_csv(tmp_path / "recs.csv", dtype={"user": str})
    pred = _predictions(result)
    assert recs.groupby("user", sort=False)["item"].apply(" ".join).tolist() == pred["top_10"].tolist()
    assert pred["user"].iloc[0] in printed and "top-10 for 20 user(s)" in printed
    # a plain list of ids works too, and bad input is one clear line with exit code 2
    assert main(["recommend", f"run={result['run_id']}", f"users={pred['user'].iloc[0]}", "k=3",
                 f"outputs={out}"]) == 0
    assert main(["recommend", "run=0123abc", "users=u1", f"outputs={out}"]) == 2
    assert "run '0123abc' is not in the store" in capsys.readouterr().err
    assert main(["recommend", f"run={result['run_id']}", "users=nobody", f"outputs={out}"]) == 2
    assert "user(s) nobody are not in the target domain 'social'" in capsys.readouterr().err
    assert main(["recommend", "users=u1"]) == 2
    assert "needs run=" in capsys.readouterr().err


def test_popular_run_needs_no_checkpoint(outputs: Path):
    from tlexp.pipeline import run_pipeline
    from tlexp.serving.recommend import load_run, recommend

    result = run_pipeline(tiny_cfg(outputs, "strategy=popular"))
    pred = _predictions(result)
    recs = recommend(load_run(result["run_id"], result["tracking_uri"], outputs), pred["user"].tolist(), k=10)
    assert recs.groupby("user", sort=False)["item"].apply(" ".join).tolist() == pred["top_10"].tolist()
    with pytest.raises(ConfigError, match="exclude='seen'"):
        recommend(load_run(result["run_id"], result["tracking_uri"], outputs), ["u1"], exclude="seen")


@pytest.mark.parametrize("strategy", [
    ["strategy=popular"], ["strategy=scratch"], ["strategy=finetune"], ["strategy=distill"],
    ["strategy=fusion", "strategy.fusion.mode=gate"], ["strategy=fusion", "strategy.fusion.mode=ensemble"],
    ["strategy=meta", "meta.test_shots=[1]"], ["strategy=adapt"], ["strategy=emcdr"], ["strategy=ease"],
    ["strategy=itemknn"]], ids=lambda s: "-".join(x.split("=")[-1] for x in s))
def test_the_reloaded_model_reproduces_the_runs_test_metrics(strategy, outputs: Path):
    """Reloaded = evaluated: what `tlexp recommend` serves is the model whose metrics the run logged
    (fusion's validation-chosen ensemble weights and EMCDR's after-fit mapping included)."""
    from tlexp.evaluation.plan import EvaluationPlan
    from tlexp.pipeline import run_pipeline
    from tlexp.pipeline.build import eval_settings
    from tlexp.serving.recommend import load_run

    result = run_pipeline(tiny_cfg(outputs, *strategy, *SMALL, "strategy.fusion.sources=[news,video]"
                                   if "strategy=fusion" in strategy else "seed=0"))
    loaded = load_run(result["run_id"], result["tracking_uri"], outputs)
    plan = EvaluationPlan(loaded.scenario.target, eval_settings(loaded.cfg))
    got = plan.test_metrics(loaded.model)
    logged = {k: v for k, v in result["metrics"].items() if k in got}
    assert logged and set(logged) == set(got)
    for k, v in logged.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
