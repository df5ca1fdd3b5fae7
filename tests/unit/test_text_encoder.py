"""The text encoder: real HF loading, pooling, the frozen-embedding cache and its key, LoRA.

A tiny randomly initialised BERT (built here from a BertConfig, with MiniLM's tokenizer files)
stands in for a real encoder, saved to disk so that the real ``AutoModel``/``AutoTokenizer``
loading path runs. One test loads the shipped all-MiniLM-L6-v2 itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import save_tiny_encoder  # noqa: E402

from tlexp.core.errors import ConfigError  # noqa: E402
from tlexp.models.text_encoder import (  # noqa: E402
    TextItemTower,
    embed_texts,
    embedding_cache_key,
    encode_texts,
    item_texts,
    load_encoder,
    pool,
    resolve_model_path,
)

TEXTS = ["red acrylic paint set", "printer ink cartridge black", "", "a much longer title about a wooden easel "
         "for painting on canvas, adjustable height", "sewing machine needles"]


def test_tiny_encoder_round_trip_and_pooling(tiny_encoder: Path):
    model, tok = load_encoder(str(tiny_encoder))
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    emb = encode_texts(model, tok, TEXTS, pooling="mean", max_length=16, normalize=False, batch_size=2,
                       progress=False)
    assert emb.shape == (len(TEXTS), 32)
    # the same as encoding each text alone (length-sorted batching puts results back in order)
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            t = tok([text], truncation=True, max_length=16, return_tensors="pt")
            hidden = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
            torch.testing.assert_close(emb[i], hidden[0].mean(0), atol=1e-5, rtol=1e-4)
            cls = encode_texts(model, tok, [text], pooling="cls", max_length=16, normalize=False, progress=False)
            torch.testing.assert_close(cls[0], hidden[0, 0], atol=1e-5, rtol=1e-4)
    unit = encode_texts(model, tok, TEXTS, max_length=16, normalize=True, progress=False)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(len(TEXTS)))
    # mean pooling ignores padding positions
    h = torch.randn(2, 4, 3)
    m = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(pool(h, m, "mean")[0], h[0, :2].mean(0))
    with pytest.raises(ConfigError, match="pooling"):
        pool(h, m, "max")


def test_minilm_offline_default_gives_meaningful_embeddings():
    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert Path(path, "model.safetensors").exists()
    emb, info = embed_texts(["acrylic paint set for artists", "watercolor paints for painting",
                             "laser printer toner cartridge"], progress=False)
    assert emb.shape == (3, 384) and info["cache"] == "off"
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # paint is closer to paint than to toner


def test_cache_key_covers_encoder_texts_and_pooling(tmp_path: Path, tiny_encoder: Path):
    base = embedding_cache_key(str(tiny_encoder), TEXTS, "mean", 16, True)
    assert base == embedding_cache_key(str(tiny_encoder), list(TEXTS), "mean", 16, True)
    assert base != embedding_cache_key(str(tiny_encoder), TEXTS[:-1] + ["other"], "mean", 16, True)
    assert base != embedding_cache_key(str(tiny_encoder), TEXTS, "cls", 16, True)
    assert base != embedding_cache_key(str(tiny_encoder), TEXTS, "mean", 32, True)
    other = save_tiny_encoder(tmp_path / "other", seed=1)  # another encoder (other weights)
    assert base != embedding_cache_key(str(other), TEXTS, "mean", 16, True)


def test_frozen_cache_hit_reuses_identical_embeddings(tmp_path: Path, tiny_encoder: Path):
    kw = dict(name_or_path=str(tiny_encoder), max_length=16, progress=False, cache_dir=tmp_path / "cache")
    first, info1 = embed_texts(TEXTS, batch_size=2, **kw)
    second, info2 = embed_texts(TEXTS, batch_size=4, **kw)  # batch size is not part of the key
    assert info1["cache"] == "miss" and info1["encode_s"] > 0
    assert info2["cache"] == "hit" and info2["encode_s"] == 0.0 and info2["key"] == info1["key"]
    assert torch.equal(first, second)
    assert (tmp_path / "cache" / info1["key"] / "embeddings.pt").exists()
    third, info3 = embed_texts(TEXTS, pooling="cls", batch_size=2, **kw)
    assert info3["cache"] == "miss" and not torch.allclose(first, third)


def test_text_tower_config_errors(tiny_encoder: Path):
    with pytest.raises(ConfigError, match="mode"):
        TextItemTower(TEXTS, {"name_or_path": str(tiny_encoder), "mode": "half"}, 8)
    with pytest.raises(ConfigError, match="could not be loaded"):
        TextItemTower(TEXTS, {"name_or_path": "/nonexistent/encoder-folder", "mode": "lora"}, 8)
    with pytest.raises(ConfigError, match="unknown key"):
        TextItemTower(TEXTS, {"name_or_path": str(tiny_encoder), "pooler": "mean"}, 8)


def _lora_numbers(hidden: int, layers: int, r: int, modules: int) -> int:
    """LoRA adds A (r x in) and B (out x r) per adapted square projection."""
    return layers * modules * r * (hidden + hidden)


def test_lora_trains_only_adapters_and_round_trips(tmp_path: Path, tiny_encoder: Path):
    enc = {"name_or_path": str(tiny_encoder), "mode": "lora", "max_length": 16,
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]}}
    torch.manual_seed(0)
    tower = TextItemTower(TEXTS, enc, 8, None)
    encoder_trainable = sum(p.numel() for p in tower.encoder.parameters() if p.requires_grad)
    assert encoder_trainable == _lora_numbers(32, 2, 4, 2)
    adaptor = sum(p.numel() for p in tower.adaptor.parameters())
    assert sum(p.numel() for p in tower.parameters() if p.requires_grad) == encoder_trainable + adaptor
    assert sum(p.numel() for p in tower.parameters()) > 30_000 * 32  # the frozen base is still there
    with torch.no_grad():  # make the adapters matter (peft starts B at zero)
        for name, p in tower.encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    tower.eval()
    before = tower.text_vectors().detach()
    files = tower.export(tmp_path)
    assert {f.name for f in files} >= {"adapter_config.json", "adapter_model.safetensors"}
    fresh = TextItemTower(TEXTS, enc, 8, None).eval()
    assert not torch.allclose(fresh.text_vectors(), before, atol=1e-4)
    reloaded = TextItemTower(TEXTS, {**enc, "adapter_path": str(tmp_path / "lora_adapter")}, 8, None).eval()
    torch.testing.assert_close(reloaded.text_vectors().detach(), before)
    assert sum(p.numel() for p in reloaded.encoder.parameters() if p.requires_grad) == encoder_trainable


def test_full_mode_trains_the_whole_encoder(tiny_encoder: Path):
    tower = TextItemTower(TEXTS, {"name_or_path": str(tiny_encoder), "mode": "full", "max_length": 16}, 8, None)
    assert all(p.requires_grad for p in tower.encoder.parameters())
    out = tower(torch.tensor([0, 3]))
    out.sum().backward()
    assert tower.encoder.model.embeddings.word_embeddings.weight.grad is not None


def test_item_texts_add_the_category_once():
    import pandas as pd

    info = pd.DataFrame({"item": ["a", "b", "c"], "text": ["oil paint", "ink. Office", ""],
                         "category": ["Arts", "Office", "Tools"]})
    assert item_texts(info) == ["oil paint. Arts", "ink. Office", "Tools"]
