"""Sequential backbones: causal self-attention over each user's item sequence (SASRec).

A user is represented by the Transformer's output at the last position of their history, so the
model needs no user-ID embedding: a user it has never seen is represented as soon as it knows
what they interacted with. That is what lets a sequence model pretrained on a source domain be
applied to a target one, and what the text variant (:mod:`tlexp.models.text_seq`) builds on.

Token conventions inside sequence tensors: ``0..n_items-1`` are items, ``pad_token = n_items``
marks padding (left side; never attended to, never a target) and ``bos_token = n_items + 1`` a
start-of-history token, whose output represents a user with no history (cold-start users).
``mask_token = n_items + 2`` stands for a masked item in augmented training sequences
(``augment=mask`` / ``cl4srec``); its vector is a training-only parameter of the objective
(:mod:`tlexp.training.augment`), lent to the model with :meth:`SequentialBackbone.masked_with`, so
that a model's parameters (and checkpoints) are the same with or without augmentation.
Positions are counted from the *end* of the sequence, so a history's representation does not
depend on how much padding precedes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tlexp.data.datamodule import pad_left, trim_padding, user_sequences
from tlexp.data.scenario import DomainData
from tlexp.core.errors import ConfigError
from tlexp.models.base import Backbone


def causal_mask(pad: torch.Tensor) -> torch.Tensor:
    """(B, L, L) boolean mask, True where query i may *not* attend to key j.

    Allowed: earlier-or-same positions that are not padding. A position always sees itself, so a
    padded query has one key and the softmax never divides by zero (its output is unused).
    """
    length = pad.shape[1]
    idx = torch.arange(length, device=pad.device)
    causal = idx.unsqueeze(0) <= idx.unsqueeze(1)                     # (L, L): key j <= query i
    allowed = causal.unsqueeze(0) & ~pad.unsqueeze(1)                   # (B, L, L)
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=pad.device).unsqueeze(0)
    return ~allowed


class CausalTransformer(nn.Module):
    """Positional embeddings + pre-norm Transformer encoder layers under a causal, padding-aware mask."""

    def __init__(self, dim: int, max_seq_len: int, n_layers: int = 2, n_heads: int = 2,
                 dropout: float = 0.2, ffn_dim: int | None = None):
        super().__init__()
        if dim % n_heads:
            raise ConfigError(f"backbone.dim={dim} must be divisible by backbone.n_heads={n_heads}")
        self.n_heads = n_heads
        self.pos_emb = nn.Embedding(max_seq_len, dim)
        self.in_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=ffn_dim or 4 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(dim)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(B, L, d) inputs and (B, L) padding flags -> (B, L, d) outputs (zero at padding)."""
        length = x.shape[1]
        if length > self.pos_emb.num_embeddings:
            raise ConfigError(f"a sequence of length {length} exceeds backbone.max_seq_len="
                              f"{self.pos_emb.num_embeddings}; raise max_seq_len")
        pos = torch.arange(length - 1, -1, -1, device=x.device)           # distance from the end
        h = self.dropout(self.in_norm(x + self.pos_emb(pos).unsqueeze(0)))
        mask = causal_mask(pad).repeat_interleave(self.n_heads, dim=0)   # (B * heads, L, L)
        h = self.layers(h, mask=mask)
        return self.out_norm(h) * (~pad).unsqueeze(-1)


class SequentialBackbone(Backbone):
    """Shared machinery: per-user histories, sequence encoding, causal training pairs.

    Subclasses say how an item becomes a vector (:meth:`item_repr`); the same vectors feed the
    sequence (inputs) and score the next item (outputs), as in SASRec and UniSRec.
    """

    needs_history = True
    id_tables: tuple[str, ...] = ()  # parameters indexed by item id: moved by item key on transfer

    def __init__(self, data: DomainData, dim: int = 64, max_seq_len: int = 50, n_layers: int = 2,
                 n_heads: int = 2, dropout: float = 0.2, ffn_dim: int | None = None,
                 batch_size: int | None = 128, source_history: bool = True):
        super().__init__()
        if max_seq_len < 2:
            raise ConfigError(f"backbone.max_seq_len={max_seq_len} must be at least 2")
        self.n_users, self.n_items = data.n_users, data.n_items
        self.dim, self.max_seq_len, self.batch_size = dim, int(max_seq_len), batch_size
        self.pad_token, self.bos_token, self.mask_token = self.n_items, self.n_items + 1, self.n_items + 2
        self.source_offset = self.n_items + 3  # tokens from here on: a source domain's items
        self.source_history = bool(source_history)
        self.register_buffer("src_item_table", torch.zeros(0), persistent=False)
        self.bos = nn.Parameter(torch.randn(dim) * 0.02)
        self.seq_encoder = CausalTransformer(dim, self.max_seq_len, n_layers, n_heads, dropout, ffn_dim)
        # Evaluation histories (not checkpointed: they are data, rebuilt from the domain).
        train = user_sequences([data.train], data.n_users)
        train_valid = user_sequences([data.train, data.valid], data.n_users)
        self.register_buffer("hist_val", self._histories(train), persistent=False)
        self.register_buffer("hist_test", self._histories(train_valid), persistent=False)

    def _histories(self, seqs: list[list[int]]) -> torch.Tensor:
        return pad_left([[self.bos_token] + s for s in seqs], self.max_seq_len, self.pad_token)

    def history(self, users: torch.Tensor, split: str | None = None) -> torch.Tensor:
        """(B, max_seq_len) tokens a user is represented by: train items for ``"val"`` (and when
        no split is given), train + valid items for ``"test"``."""
        table = self.hist_test if split == "test" else self.hist_val
        return table[users]

    @contextmanager
    def masked_with(self, vector: torch.Tensor | None) -> Iterator[None]:
        """Within the block, ``mask_token`` inputs read ``vector`` (a parameter the caller owns and
        trains; not registered here, so the model's state_dict does not change)."""
        self.__dict__["_mask_vector"] = vector
        try:
            yield
        finally:
            self.__dict__.pop("_mask_vector", None)

    def input_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, d) vectors of a token sequence: items via :meth:`item_repr`, BOS learned, padding 0,
        source-domain items (cold-start users' source histories) via :meth:`source_item_inputs`,
        masked items (augmented training sequences) the vector lent by :meth:`masked_with`."""
        real = seq < self.n_items
        out = torch.zeros(*seq.shape, self.dim, device=seq.device, dtype=self.bos.dtype)
        if real.any():
            uniq, inverse = torch.unique(seq[real], return_inverse=True)
            out[real] = self.item_repr(uniq).to(out.dtype)[inverse]
        src = seq >= self.source_offset
        if src.any():
            uniq, inverse = torch.unique(seq[src] - self.source_offset, return_inverse=True)
            out[src] = self.source_item_inputs(uniq).to(out.dtype)[inverse]
        masked = seq == self.mask_token
        if masked.any():
            vector = self.__dict__.get("_mask_vector")
            if vector is None:
                raise RuntimeError("a sequence holds mask tokens but no mask vector was lent (masked_with)")
            out = torch.where(masked.unsqueeze(-1), vector.to(out.dtype).expand_as(out), out)
        return torch.where((seq == self.bos_token).unsqueeze(-1), self.bos.expand_as(out), out)

    def sequence_repr(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, d): at each position, the representation of the history up to and including it."""
        return self.seq_encoder(self.input_vectors(seq), seq == self.pad_token)

    def user_repr(self, batch: dict[str, Any]) -> torch.Tensor:
        seq = batch["seq"] if "seq" in batch else self.history(batch["user"], batch.get("split"))
        return self.last_outputs(seq)

    def last_outputs(self, seq: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """(B, d) outputs at the last position, computed in chunks of similar length.

        Histories are mostly short; sorting by length and trimming each chunk's padding (which
        changes nothing, positions being counted from the end) saves most of the compute.
        """
        lengths = (seq != self.pad_token).sum(1)
        order = torch.argsort(lengths)
        out = torch.empty(seq.shape[0], self.dim, device=seq.device, dtype=self.bos.dtype)
        for lo in range(0, seq.shape[0], chunk):
            idx = order[lo: lo + chunk]
            width = max(int(lengths[idx].max()), 1)
            out[idx] = self.sequence_repr(seq[idx, -width:])[:, -1]
        return out

    def training_pairs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every non-padding position with the item that follows it (causal training on all positions).

        Pair batches (no ``seq``; e.g. a strategy that only has (user, item) pairs) fall back to the
        user's train history as the query.
        """
        if "seq" not in batch:
            return super().training_pairs(batch)
        batch = trim_padding(batch, self.pad_token)
        h = self.sequence_repr(batch["seq"])
        keep = batch["target"] >= 0
        return h[keep], batch["target"][keep]

    # ----- cold-start users: their source-domain sequence -----
    def source_item_table(self, source: Backbone) -> torch.Tensor | None:
        """Input features of ``source``'s items that this model can turn into vectors (None: it cannot)."""
        return None

    def source_item_inputs(self, items: torch.Tensor) -> torch.Tensor:
        """(len(items), d) input vectors of source-domain items (indices into ``src_item_table``)."""
        raise NotImplementedError

    def attach_source_histories(self, source: Backbone, user_map: torch.Tensor) -> int:
        """Represent users with no history here by their history in ``source``. Returns how many.

        A sequence model needs no user ID, only items it can embed: after transfer, a cold-start
        user's representation is the (transferred) model read over their source-domain sequence —
        the cross-domain cold-start case, handled by the sequence itself.
        """
        table = self.source_item_table(source)
        if table is None or not isinstance(source, SequentialBackbone):
            return 0
        empty = (self.hist_test != self.pad_token).sum(1) <= 1   # only the start token
        users = torch.nonzero(empty & (user_map >= 0)).flatten()
        if users.numel() == 0:
            return 0
        rows = source.hist_test[user_map[users]]
        rows = torch.where(rows < source.n_items, rows + self.source_offset,
                           torch.where(rows == source.bos_token, self.bos_token, self.pad_token))
        if rows.shape[1] >= self.max_seq_len:
            rows = rows[:, -self.max_seq_len:]
        else:
            rows = torch.cat([torch.full((rows.shape[0], self.max_seq_len - rows.shape[1]), self.pad_token),
                              rows], dim=1)
        self.src_item_table = table.detach().clone().to(self.hist_test.device)
        self.hist_val[users] = rows.to(self.hist_val.device)
        self.hist_test[users] = rows.to(self.hist_test.device)
        return int(users.numel())

    def transfer_from(self, source: Backbone, user_map: torch.Tensor, item_map: torch.Tensor,
                      init_new_users: str = "mean") -> list[str]:
        """Everything by name and shape, except item-ID tables, whose rows move by item key.

        With ``source_history``, users without history in this domain (cold-start users) are then
        represented by their source-domain sequence (:meth:`attach_source_histories`).
        """
        src = source.state_dict()
        moved = []
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name not in src or src[name].shape[1:] != param.shape[1:]:
                    continue
                if name.startswith(self.id_tables):
                    have = item_map >= 0
                    if have.any():
                        param[have] = src[name][item_map[have]]
                        moved.append(name)
                elif src[name].shape == param.shape:
                    param.copy_(src[name])
                    moved.append(name)
        self.n_source_histories = self.attach_source_histories(source, user_map) if self.source_history else 0
        return moved


class SASRec(SequentialBackbone):
    """SASRec (Kang & McAuley, 2018): item-ID embeddings shared by inputs and outputs, dot-product scores."""

    name = "sasrec"
    id_tables = ("item_emb",)

    def __init__(self, data: DomainData, dim: int = 64, max_seq_len: int = 50, n_layers: int = 2,
                 n_heads: int = 2, dropout: float = 0.2, ffn_dim: int | None = None,
                 batch_size: int | None = 128, init_std: float = 0.02, source_history: bool = True,
                 name: str = "sasrec"):
        super().__init__(data, dim, max_seq_len, n_layers, n_heads, dropout, ffn_dim, batch_size, source_history)
        self.item_emb = nn.Embedding(self.n_items, dim)
        nn.init.normal_(self.item_emb.weight, std=init_std)

    def item_repr(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_emb.weight if items is None else self.item_emb(items)

    def source_item_table(self, source: Backbone) -> torch.Tensor | None:
        """The source model's own item embeddings (frozen copies): it was trained to read them."""
        emb = getattr(source, "item_emb", None)
        return emb.weight if emb is not None and emb.weight.shape[1] == self.dim else None

    def source_item_inputs(self, items: torch.Tensor) -> torch.Tensor:
        return self.src_item_table[items]
