"""Decoder LLMs as item-text encoders: a tiny random Llama, saved as a Hugging Face folder, through a
full ``tlexp run`` (LoRA on its attention projections, last-token pooling, a tokenizer with no pad token)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TINY, mlflow_runs

SMALL = ["world.n_users=400", "trainer.max_epochs=1", "pretrain.max_epochs=1", "backbone.dim=16",
         "logger.predictions_sample=0", "+trainer.limit_train_batches=4", "backbone.max_seq_len=10"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tlexp.models.tiny_llm import save_tiny_causal_lm

    texts = [f"{a} {b} for the {c}" for a in ("red", "blue", "acrylic", "wooden", "steel")
             for b in ("pen", "desk", "easel", "paper", "lamp") for c in ("office", "studio", "kitchen")]
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny_llama"), texts, hidden=32, layers=2, heads=4, kv_heads=2)


def test_tlexp_run_with_a_decoder_llm_lora_last_pooling(outputs: Path, tiny_llama: Path):
    import json

    import tlexp
    from transformers import AutoConfig, AutoModel

    result = tlexp.run([*TINY, *SMALL, "backbone=text_seq", "strategy=finetune",
                        f"backbone.encoder.name_or_path={tiny_llama}", "backbone.encoder.pooling=last",
                        "backbone.encoder.mode=lora", "backbone.encoder.lora.r=4", "backbone.encoder.max_length=12",
                        "backbone.encoder.gradient_checkpointing=true"], outputs=outputs)
    row = mlflow_runs(result.tracking_uri).set_index("run_id").loc[result.run_id]
    assert row["status"] == "FINISHED" and result["test/ndcg_at_10"] > 0
    assert row["tags.text_encoder_pooling"] == "last" and row["tags.text_encoder_mode"] == "lora"
    assert AutoConfig.from_pretrained(tiny_llama).model_type == "llama"
    assert json.loads((tiny_llama / "tokenizer_config.json").read_text()).get("pad_token") is None
    # LoRA on peft's default Llama targets q_proj (32 -> 32) and v_proj (32 -> 2 kv heads x 8 = 16), r = 4
    lora = 2 * 4 * ((32 + 32) + (32 + 16))
    base = AutoModel.from_pretrained(tiny_llama).num_parameters()
    assert row["metrics.text_encoder/params_trainable"] == lora
    assert row["metrics.text_encoder/params_total"] == base + lora
    # in the whole model only the LLM's own weights are frozen
    assert int(row["params.params_total"]) - int(row["params.params_trainable"]) == base


def test_last_token_pooling_ignores_padding_on_either_side(tiny_llama: Path):
    import torch

    from tlexp.models.text_encoder import encode_texts, load_encoder, pool

    model, tok = load_encoder(str(tiny_llama))
    assert tok.pad_token == tok.eos_token and tok.padding_side == "right"
    texts = ["red pen", "a wooden desk for the office studio", "lamp"]
    batch = encode_texts(model, tok, texts, pooling="last", max_length=16, normalize=False, progress=False)
    alone = torch.cat([encode_texts(model, tok, [t], pooling="last", max_length=16, normalize=False,
                                    progress=False) for t in texts])
    assert torch.allclose(batch, alone, atol=1e-5)  # padding changed nothing
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]


def test_llm_loading_refuses_what_cannot_work_here(tiny_llama: Path):
    from tlexp.core.errors import ConfigError
    from tlexp.models.text_encoder import TextItemTower

    enc = {"name_or_path": str(tiny_llama), "mode": "frozen", "pooling": "last", "cache_dir": None}
    with pytest.raises(ConfigError, match=r"backbone.encoder.load_in=4bit needs a CUDA GPU"):
        TextItemTower(["a pen"], {**enc, "load_in": "4bit"}, 8, None)
    with pytest.raises(ConfigError, match=r"backbone.encoder.dtype='int3' is unknown"):
        TextItemTower(["a pen"], {**enc, "dtype": "int3"}, 8, None)
    with pytest.raises(ConfigError, match=r"backbone.encoder.lora.target_modules=\['query'\].*q_proj"):
        TextItemTower(["a pen"], {**enc, "mode": "lora", "lora": {"target_modules": ["query"]}}, 8, None)
