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

    In-batch negatives are drawn in proportion to item popularity, which without correction
    teaches the model to rank popular items *down*; the logQ correction (Yi et al., RecSys 2019)
    subtracts log(sampling probability) from each candidate's logit. The item frequencies come
    from the training data via :meth:`attach`. Other rows carrying the positive's item are masked
    so that an item is never its own negative.
    """

    def __init__(self, temperature: float = 1.0, logq_correction: bool = True):
        super().__init__()
        self.temperature = temperature
        self.logq_correction = logq_correction
        self.register_buffer("log_q", torch.zeros(0), persistent=False)

    def attach(self, item_counts: torch.Tensor) -> None:
        """Learn the sampling distribution of in-batch negatives: training counts per item."""
        q = item_counts.float() + 1.0
        self.log_q = (q / q.sum()).log()

    def forward(self, backbone: Backbone, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u = backbone.user_repr(batch)
        items = batch["item"]
        v = backbone.item_repr(items)
        logits = backbone.score(u, v) / self.temperature
        if self.logq_correction and self.log_q.numel():
            logits = logits - self.log_q.to(logits.device)[items].unsqueeze(0)
        same = items.unsqueeze(0) == items.unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, -torch.inf)
        return F.cross_entropy(logits, torch.arange(u.shape[0], device=u.device))
