"""`tlexp explain`: parts of a recommended item's score per history item, adding up exactly."""

from __future__ import annotations

import copy
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import finished_run

SMALL = ["world.n_users=400", "trainer.max_epochs=2", "pretrain.max_epochs=2", "logger.predictions_sample=20"]


def _finished_run(tmp_path_factory, name: str, *overrides: str):
    from tlexp.serving.recommend import load_run

    out = tmp_path_factory.mktemp(name) / "outputs"
    result = finished_run(out, *SMALL, *overrides)
    return out, result, load_run(result["run_id"], result["tracking_uri"], out)


@pytest.fixture(scope="module")
def finetune(tmp_path_factory):
    return _finished_run(tmp_path_factory, "explain_ft", "strategy=finetune")


def _users(result, cold: bool) -> list[str]:
    from mlflow.tracking import MlflowClient

    path = MlflowClient(result["tracking_uri"]).download_artifacts(result["run_id"], "predictions.csv")
    pred = pd.read_csv(path, dtype={"user": str})
    return pred.loc[pred["cold_start"] == cold, "user"].tolist()


def test_parts_add_up_to_the_score_and_cold_users_are_explained_by_source_items(finetune):
    from tlexp.serving.explain import explain

    _, result, loaded = finetune
    warm, cold = _users(result, False)[:2], _users(result, True)[:2]
    table = explain(loaded, warm + cold, k=3, top=1000)
    assert set(table["method"]) == {"projection (dot)"}
    for _, g in table.groupby(["user", "rank"]):
        assert g["part"].sum() == pytest.approx(g["score"].iloc[0], abs=1e-4)   # exact split of the score
        assert g["share"].abs().sum() == pytest.approx(1.0, abs=1e-6)
    domains = table[table["history_item"] != "(rest)"].groupby("user")["domain"].agg(set)
    assert all(domains[u] == {"source"} for u in cold)          # cold users have no target history
    assert all("target" in domains[u] for u in warm)
    # the explained items are the user's top recommendations
    from tlexp.serving.recommend import recommend

    recs = recommend(loaded, warm, k=3)
    shown = table[table["user"].isin(warm)].drop_duplicates(["user", "rank"])
    assert shown["item"].tolist() == recs["item"].tolist()


def test_a_single_history_item_that_is_the_nearest_neighbour_gets_share_one(finetune):
    """A user whose vector is exactly their one history item's vector is recommended that item's
    nearest neighbour (by the model's own score), and the explanation gives that history item all of it."""
    from tlexp.serving.explain import explain

    _, result, loaded = finetune
    loaded = copy.copy(loaded)
    loaded.source_model = None
    target = loaded.scenario.target
    user = _users(result, False)[0]
    u = int(target.user_index(np.asarray([user], dtype=object))[0])
    j = int(target.train.loc[target.train["user"] == u, "item"].iloc[0])
    scenario = copy.copy(loaded.scenario)
    tgt = copy.copy(target)
    tgt.train = pd.concat([target.train[target.train["user"] != u], target.train[(target.train["user"] == u)].head(1)])
    tgt.valid = target.valid[target.valid["user"] != u]
    scenario.target = tgt
    loaded.scenario = scenario
    model = copy.deepcopy(loaded.model)
    backbone = model.backbone
    with torch.no_grad():
        backbone.user_emb.weight[u] = backbone.item_emb.weight[j]
        items = backbone.item_repr()
        sims = items @ items[j]
        sims[j] = -torch.inf
        nearest = int(torch.argmax(sims))
    loaded.model = model
    table = explain(loaded, [user], k=1, top=3)
    assert table["item"].iloc[0] == target.items[nearest]
    top = table.iloc[0]
    assert top["history_item"] == str(target.items[j]) and top["domain"] == "target"
    assert top["share"] == pytest.approx(1.0, abs=1e-5)
    assert table.loc[table["history_item"] == "(rest)", "part"].abs().max() < 1e-5


@pytest.mark.parametrize("backbone", ["sasrec"])
def test_sequential_models_use_integrated_gradients_and_stay_complete(tmp_path_factory, backbone):
    from tlexp.serving.explain import explain

    _, result, loaded = _finished_run(tmp_path_factory, f"explain_{backbone}", f"backbone={backbone}",
                                      "strategy=scratch", "backbone.dim=16", "backbone.max_seq_len=10",
                                      "+trainer.limit_train_batches=4")
    user = _users(result, False)[0]
    table = explain(loaded, [user], items=[str(loaded.scenario.target.items[0])], top=50)
    assert set(table["method"]) == {"integrated gradients"}
    assert table["part"].sum() == pytest.approx(table["score"].iloc[0], abs=1e-3)
    hist = table[table["history_item"] != "(rest)"]
    t = loaded.scenario.target
    u = int(t.user_index(np.asarray([user], dtype=object))[0])
    seen = pd.concat([t.train, t.valid])
    known = set(map(str, t.items[seen.loc[seen["user"] == u, "item"].to_numpy()]))
    assert set(hist["history_item"]) <= known and len(hist) == min(len(known), 10)  # the last max_seq_len items


def test_explain_cli_one_line_errors(finetune, capsys, monkeypatch):
    from tlexp.cli.app import main

    out, result, loaded = finetune
    monkeypatch.setenv("TLEXP_OUTPUTS", str(out))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    user = _users(result, False)[0]
    cases = [([f"run={result['run_id']}", "users=nobody"], "user(s) nobody are not in the target domain"),
             ([f"run={result['run_id']}", f"users={user}", "items=no-such-item"], "item(s) no-such-item are not"),
             (["run=0123abc", f"users={user}"], "run '0123abc' is not in the store"),
             ([f"run={result['run_id']}", f"users={user}", "top=x"], "top='x' is not a whole number")]
    for args, message in cases:
        assert main(["explain", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert main(["explain", f"run={result['run_id']}", f"users={user}", "k=2", "top=2",
                 f"out={out / 'why.csv'}"]) == 0
    shown = capsys.readouterr().out
    assert "because of" in shown and "(rest)" not in shown and "beyond the history" in shown
    written = pd.read_csv(out / "why.csv")
    assert written["rank"].max() == 2 and len(written) == 2 * 3


def test_recommend_explain_column_and_int8_explanations(finetune, capsys, monkeypatch):
    from tlexp.cli.app import main
    from tlexp.serving.explain import explain
    from tlexp.serving.quantize import quantize_run

    out, result, loaded = finetune
    monkeypatch.setenv("TLEXP_OUTPUTS", str(out))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    warm, cold = _users(result, False)[0], _users(result, True)[0]
    assert main(["recommend", f"run={result['run_id']}", f"users={warm},{cold}", "k=3", "--explain",
                 f"out={out / 'recs.csv'}"]) == 0
    recs = pd.read_csv(out / "recs.csv", dtype={"user": str})
    why = explain(loaded, [warm, cold], k=3, top=1)
    why = why[why["history_item"] != "(rest)"]
    assert recs["because"].str.contains(r"\((?:target|source), [+-]\d+ %\)").all()
    assert recs.loc[recs["user"] == cold, "because"].str.contains("(source,", regex=False).all()
    assert recs["because"].iloc[0].startswith(str(why["history_title"].iloc[0]))
    # int8: the same explanation machinery over the int8 towers; parts still add up to what they explain
    q = explain(quantize_run(loaded, "int8"), [warm], k=2, top=1000)
    for _, g in q.groupby("rank"):
        assert g["part"].sum() == pytest.approx(g["score"].iloc[0], rel=0.02, abs=2e-3)
    assert main(["explain", f"run={result['run_id']}", f"users={warm}", "quantize=int4"]) == 2
    assert "quantize" in capsys.readouterr().err
