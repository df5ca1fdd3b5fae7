"""Sequential and text backbones: shapes, causal/padding masks, histories, transfer, cold items, e2e runs."""

from __future__ import annotations

from pathlib import Path

from helpers import mlflow_runs, tiny_cfg

from tlexp.pipeline import run_pipeline


# ----- end to end on the synthetic world -----

SMALL = ["world.n_users=400", "trainer.max_epochs=1", "pretrain.max_epochs=1", "backbone.dim=16",
         "logger.predictions_sample=0", "+trainer.limit_train_batches=4"]


def test_sasrec_end_to_end_with_pair_loss(outputs: Path):
    result = run_pipeline(tiny_cfg(outputs, "backbone=sasrec", "strategy=scratch", "loss=bpr", *SMALL,
                                   "backbone.max_seq_len=10"))
    m = result["metrics"]
    assert m["test/ndcg_at_10"] > 0 and "val/ndcg_at_10" in m
    df = mlflow_runs(result["tracking_uri"]).set_index("run_id")
    row = df.loc[result["run_id"]]
    assert row["tags.backbone"] == "sasrec" and row["params.loss._target_"].endswith("BPRLoss")


def test_text_seq_finetune_cache_and_reproducibility(outputs: Path, tiny_encoder: Path):
    over = ["backbone=text_seq", "strategy=finetune", f"backbone.encoder.name_or_path={tiny_encoder}",
            "backbone.encoder.max_length=16", *SMALL, "backbone.max_seq_len=10"]
    first = run_pipeline(tiny_cfg(outputs, *over, run_dir="a"))
    second = run_pipeline(tiny_cfg(outputs, *over, run_dir="b"))
    df = mlflow_runs(first["tracking_uri"]).set_index("run_id")
    a, b = df.loc[first["run_id"]], df.loc[second["run_id"]]
    assert a["tags.text_cache"] == "miss" and b["tags.text_cache"] == "hit"
    assert a["tags.pretrain_text_cache"] == "miss" and b["tags.pretrain_text_cache"] == "hit"
    assert a["tags.text_cache_key"] == b["tags.text_cache_key"]
    assert a["metrics.time/encode_s"] > 0 and b["metrics.time/encode_s"] == 0
    assert a["params.loss._target_"].endswith("CrossEntropyLoss") and a["params.loss.num_negatives"] == "1024"
    test_keys = [k for k in first["metrics"] if k.startswith("test")]
    assert test_keys and all(first["metrics"][k] == second["metrics"][k] for k in test_keys)
    assert first["metrics"]["test/ndcg_at_10"] > 0
    assert "bos" in a["params.transfer.moved"] and "item_tower.adaptor" in a["params.transfer.moved"]


def test_text_two_tower_lora_logs_counts_and_adapter(outputs: Path, tiny_encoder: Path):
    from mlflow.tracking import MlflowClient

    result = run_pipeline(tiny_cfg(
        outputs, "backbone=text_two_tower", "strategy=scratch", f"backbone.encoder.name_or_path={tiny_encoder}",
        "backbone.encoder.mode=lora", "backbone.encoder.lora.r=4", "backbone.encoder.max_length=12",
        "loss=sampled_ce", "loss.num_negatives=64", *SMALL))
    df = mlflow_runs(result["tracking_uri"]).set_index("run_id")
    row = df.loc[result["run_id"]]
    users = int(row["params.data.target_users"])
    lora = 2 * 2 * 4 * (32 + 32)                          # 2 layers x {query, value} x r (in + out)
    adaptor = 8 * (32 + 32 * 16) + 32 * 8                 # 8 whitening experts + the gate
    assert int(row["params.params_trainable"]) == lora + adaptor + users * 16
    assert int(row["params.params_total"]) > 1_000_000  # the frozen tiny BERT is part of the model
    assert row["tags.text_cache"] == "none" and result["metrics"]["test/ndcg_at_10"] > 0
    client = MlflowClient(result["tracking_uri"])
    files = {a.path for a in client.list_artifacts(result["run_id"], "backbone/lora_adapter")}
    assert "backbone/lora_adapter/adapter_model.safetensors" in files
    local = client.download_artifacts(result["run_id"], "backbone/lora_adapter", str(outputs / "dl"))
    from tlexp.models.text_encoder import TextItemTower

    enc = {"name_or_path": str(tiny_encoder), "mode": "lora", "max_length": 12, "adapter_path": local}
    tower = TextItemTower(["a pen", "an easel"], enc, 16, None)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in tower.encoder.named_parameters())
