"""int8 serving (tlexp/serving/quantize.py): the int8 model ranks like fp32 through the run's own evaluation
plan, its scores really come from int8 modules, `tlexp recommend quantize=int8 export=...`, the export round trip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import assembled, finished_run, tiny_cfg

from tlexp.core.errors import ConfigError

# MLP towers, so that the towers have Linear layers to quantise (plain MF has none)
TOWERS = ["strategy=scratch", "backbone.tower_layers=[32]", "world.n_users=400", "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def tower_run(tmp_path_factory):
    """One finished tiny scratch run (two-tower with MLP towers) in its own embedded store, rebuilt."""
    from tlexp.serving.recommend import load_run

    out = tmp_path_factory.mktemp("quant") / "outputs"
    result = finished_run(out, *TOWERS)
    return out, result, load_run(result["run_id"], result["tracking_uri"], out)


def _top_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    ta, tb = a.topk(k).indices.tolist(), b.topk(k).indices.tolist()
    return sum(len(set(x) & set(y)) for x, y in zip(ta, tb, strict=True)) / (k * len(ta))


def test_int8_model_is_int8_and_ranks_like_fp32(tower_run):
    from tlexp.evaluation.plan import EvaluationPlan
    from tlexp.pipeline.build import eval_settings
    from tlexp.serving.quantize import int8_linears, quantize_recommender

    _, _, loaded = tower_run
    fp32 = loaded.model
    q = quantize_recommender(fp32, "int8")
    assert quantize_recommender(fp32, "none") is fp32
    # int8 where it should be; the fp32 model is left alone
    names = int8_linears(q)
    assert {"backbone.user_tower.0", "backbone.item_tower.0", "scorer.items"} <= set(names)
    assert int8_linears(fp32) == [] and not any(type(m) is torch.nn.Linear for m in q.modules())
    w = q.scorer.items.weight()
    target = loaded.scenario.target
    assert w.dtype == torch.qint8 and w.shape == (target.n_items, 32)
    assert w.q_per_channel_scales().numel() == target.n_items  # one scale per item
    assert q.quantization.item_matrix == (target.n_items, 32)
    # same ranking metric path as the run: the evaluation plan
    plan = EvaluationPlan(target, eval_settings(loaded.cfg))
    with torch.no_grad():
        m32, m8 = plan.test_metrics(fp32), plan.test_metrics(q)
        users = torch.arange(target.n_users)
        s32, s8 = fp32.score_fn()(users), q.score_fn()(users)
    assert m32["test/ndcg_at_10"] > 0.05
    assert abs(m8["test/ndcg_at_10"] - m32["test/ndcg_at_10"]) <= 0.02 * m32["test/ndcg_at_10"], (m32, m8)
    assert not torch.equal(s32, s8)  # the int8 path computed them, not the fp32 one
    assert (s8 - s32).abs().max() < 0.05 * s32.abs().max() and _top_overlap(s32, s8) > 0.9
    # a user's scores barely depend on the batch it is scored in (per-call activation scales)
    one = q.score_fn()(users[:1])
    assert torch.allclose(one, s8[:1], atol=0.02 * float(s32.abs().max()))


def test_recommend_cli_quantize_and_export(tower_run, tmp_path: Path, capsys, monkeypatch):
    from tlexp.cli.app import main
    from tlexp.serving.quantize import load_scorer, quantize_run
    from tlexp.serving.recommend import recommend

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out, result, loaded = tower_run
    target = loaded.scenario.target
    users = target.users[:3].tolist()
    run = f"run={result['run_id']}"
    assert main(["recommend", run, f"users={','.join(users)}", "k=5", "quantize=int8", f"outputs={out}",
                 f"out={tmp_path / 'recs.csv'}"]) == 0
    printed = capsys.readouterr().out
    assert "int8: 2 Linear layer(s) int8, item matrix" in printed
    import pandas as pd

    via_cli = pd.read_csv(tmp_path / "recs.csv", dtype={"user": str})
    direct = recommend(quantize_run(loaded, "int8"), users, k=5)
    assert via_cli["item"].tolist() == direct["item"].tolist()
    # export alone (no users): the int8 scorer of every user
    scorer = tmp_path / "scorer.pt"
    assert main(["recommend", run, f"export={scorer}", f"outputs={out}"]) == 0
    assert f"wrote the int8 scorer of {target.n_users} users" in capsys.readouterr().out
    assert load_scorer(scorer).n_items == target.n_items
    # bad modes: one line, exit code 2
    assert main(["recommend", run, "users=u1", "quantize=fp16", f"outputs={out}"]) == 2
    err = capsys.readouterr().err
    assert "quantize='fp16' is unknown; use quantize=none" in err and len(err.strip().splitlines()) == 1
    assert main(["recommend", run, "quantize=none", f"export={scorer}", f"outputs={out}"]) == 2
    assert "export= writes the int8 scorer" in capsys.readouterr().err
    assert main(["recommend", "--help"]) == 0 and "quantize=none|int8" in capsys.readouterr().out


def test_export_round_trip_reproduces_the_scores(tower_run, tmp_path: Path):
    from tlexp.serving.quantize import export_scorer, load_scorer, quantize_recommender

    _, _, loaded = tower_run
    q = quantize_recommender(loaded.model)
    path = export_scorer(q, tmp_path / "s.pt")
    scorer = load_scorer(path)
    users = torch.arange(loaded.scenario.target.n_users)
    with torch.no_grad():
        assert torch.equal(scorer(users), q.score_fn()(users))  # the same users in one batch: bit for bit
        assert torch.equal(scorer(users[5:9]), q.scorer(q.user_factors(users)[5:9]))
    # tensors only, so a pickle with code in it is refused, as is a file of another kind
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="is not a tlexp int8 scorer"):
        load_scorer(tmp_path / "other.pt")
    (tmp_path / "code.pt").write_bytes(b"not a torch file")
    with pytest.raises(Exception):  # noqa: B017 - torch's own unpickling error
        load_scorer(tmp_path / "code.pt")


def test_text_seq_lora_quantises_encoder_and_transformer(outputs: Path, tiny_encoder: Path, tmp_path: Path):
    """Untrained (no fit needed): LoRA merged, every Linear of encoder and Transformer int8, scores close."""
    from tlexp.serving.quantize import export_scorer, int8_linears, load_scorer, quantize_recommender

    cfg = tiny_cfg(outputs, "backbone=text_seq", "strategy=scratch", f"backbone.encoder.name_or_path={tiny_encoder}",
                   "backbone.encoder.mode=lora", "backbone.encoder.max_length=12", "backbone.dim=32")
    model = assembled(cfg).built.model.eval()
    q = quantize_recommender(model)
    names = int8_linears(q)
    assert q.quantization.merged_lora == 1 and not any("lora_" in n for n, _ in q.named_modules())
    assert any("encoder.layer.0.attention.self.query" in n for n in names)
    assert any(n.endswith("seq_encoder.layers.layers.0.linear1") for n in names)
    assert any("lora_A" in n for n, _ in model.named_modules())  # the original keeps its adapters
    users = torch.arange(200)
    with torch.no_grad():
        s32, s8 = model.score_fn()(users), q.score_fn()(users)
        assert _top_overlap(s32, s8) > 0.9 and (s8 - s32).abs().max() < 0.05 * s32.abs().max()
        # the backbone's own score survives the factorisation (cosine / temperature)
        u, i = torch.randn(4, 32), torch.randn(7, 32)
        a, b = model.backbone.score_factors(u, i)
        assert torch.allclose(a @ b.T, model.backbone.score(u, i), atol=1e-5)
        scorer = load_scorer(export_scorer(q, tmp_path / "text.pt", users=users))
        assert torch.equal(scorer(users), s8)  # exported in the same batch as scored: bit for bit
        with pytest.raises(ConfigError, match="no vector for some of these users"):
            scorer(torch.tensor([250]))


def test_a_recommender_that_scores_its_own_way_keeps_its_scores(outputs: Path):
    """item-item (like fusion's ensemble) has no user x item matrix: int8 Linear layers only (none here)."""
    from tlexp.serving.quantize import describe, export_scorer, quantize_recommender

    model = assembled(tiny_cfg(outputs, "strategy=itemknn")).built.model.eval()
    q = quantize_recommender(model)
    assert q is not model and "scores its own way: its item side stays fp32" in describe(q)
    users = torch.arange(50)
    with torch.no_grad():
        assert torch.equal(q.score_fn()(users), model.score_fn()(users))
    with pytest.raises(ConfigError, match="has no int8 scorer to export"):
        export_scorer(q, outputs / "x.pt")


def test_modes_are_checked():
    from tlexp.serving.quantize import check_mode

    assert check_mode(None) == "none" and check_mode("INT8") == "int8"
    with pytest.raises(ConfigError, match="quantize='int4' is unknown"):
        check_mode("int4")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
