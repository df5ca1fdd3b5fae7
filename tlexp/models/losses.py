"""Training objectives for implicit feedback. Each takes the backbone and a batch of positives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tlexp.models.base import Backbone


class BPRLoss(nn.Module):
    """Bayesian personalised ranking: -log σ(s(u, i+) - s(u, i-)) with uniform random negatives.

    Negatives are not filtered against the user's positives: with thousands of items the chance
    of a collision is ~|history|/n_items, the standard approximation (and much cheaper).
    """

    def __init__(self, num_negatives: int = 1):
        super().__init__()
        self.num_negatives = num_negatives

    def forward(self, backbone: Backbone, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u = backbone.user_repr(batch)
        pos = backbone.item_repr(batch["item"])
        neg_idx = torch.randint(0, backbone.n_items, (u.shape[0], self.num_negatives), device=u.device)
        neg = backbone.item_repr(neg_idx.flatten()).view(u.shape[0], self.num_negatives, -1)
        s_pos = backbone.score_pairs(u, pos).unsqueeze(1)
        s_neg = backbone.score_pairs(u, neg)
        return -F.logsigmoid(s_pos - s_neg).mean()


class InBatchSoftmaxLoss(nn.Module):
    """Sampled softmax: each positive against the batch's other positives as negatives.

    Other rows that carry the same item as the positive are masked so that an item is never its
    own negative.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, backbone: Backbone, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u = backbone.user_repr(batch)
        items = batch["item"]
        v = backbone.item_repr(items)
        logits = backbone.score(u, v) / self.temperature
        same = items.unsqueeze(0) == items.unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, -torch.inf)
        return F.cross_entropy(logits, torch.arange(u.shape[0], device=u.device))
