"""``text_seq``: a sequential Transformer over items represented by their text (UniSRec-style).

Items are not looked up by ID: each item's text (title + category) goes through a pretrained
encoder and a small trainable adaptor (parametric whitening + mixture of experts), and those
vectors feed the causal Transformer of :mod:`tlexp.models.sasrec` and score the next item. Every
parameter is domain-independent, so a model pretrained on one catalogue scores the items of
another — including items nobody has interacted with yet — and ``finetune`` transfers all of it
by name (:meth:`SequentialBackbone.transfer_from`).

Scores are cosine similarities divided by ``temperature`` (as UniSRec's fine-tuning loss).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tlexp.data.scenario import DomainData
from tlexp.models.base import Backbone
from tlexp.models.sasrec import SequentialBackbone
from tlexp.models.text_encoder import TextItemTower, item_texts


class TextSeq(SequentialBackbone):
    """Causal Transformer over text-derived item vectors; no item-ID parameters at all."""

    name = "text_seq"

    def __init__(self, data: DomainData, encoder: Mapping[str, Any] | None = None, adaptor: Any = None,
                 dim: int = 64, max_seq_len: int = 50, n_layers: int = 2, n_heads: int = 2,
                 dropout: float = 0.2, ffn_dim: int | None = None, batch_size: int | None = 128,
                 temperature: float = 0.07, source_history: bool = True, name: str = "text_seq"):
        super().__init__(data, dim, max_seq_len, n_layers, n_heads, dropout, ffn_dim, batch_size, source_history)
        self.temperature = float(temperature)
        self.item_tower = TextItemTower(item_texts(data.item_info), encoder or {}, dim, adaptor)

    def item_repr(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_tower(items)

    def source_item_table(self, source: Backbone) -> torch.Tensor | None:
        """The source items' frozen text embeddings (same encoder): through this model's adaptor they
        land in the same space as this domain's items. Not available with a trainable encoder."""
        tower = getattr(source, "item_tower", None)
        if tower is None or tower.encoder is not None or self.item_tower.encoder is not None:
            return None
        mine = self.item_tower
        if tower.encoder_name != mine.encoder_name or tower.text_emb.shape[1] != mine.text_emb.shape[1]:
            return None
        return tower.text_emb

    def source_item_inputs(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_tower.adaptor(self.src_item_table[items])

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return F.normalize(users, dim=-1) @ F.normalize(items, dim=-1).T / self.temperature

    def score_factors(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(users, dim=-1) / self.temperature, F.normalize(items, dim=-1)

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return super().score_pairs(F.normalize(users, dim=-1), F.normalize(items, dim=-1)) / self.temperature

    def tracking_info(self) -> dict[str, dict]:
        return self.item_tower.tracking_info()

    def export(self, directory: Path) -> list[Path]:
        return self.item_tower.export(directory)
