"""Training objectives for implicit feedback. Each takes the backbone and a batch of positives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tlexp.models.base import Backbone


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``, without a (B x N) copy when the temperature is 1 (x / 1.0 == x exactly)."""
    return logits if temperature == 1.0 else logits / temperature


class BPRLoss(nn.Module):
    """Bayesian personalised ranking: -log σ(s(u, i+) - s(u, i-)) with uniform random negatives.

    Negatives are not filtered against the user's positives: with thousands of items the chance
    of a collision is ~|history|/n_items, the standard approximation (and much cheaper).
    """

    def __init__(self, num_negatives: int = 1):
        super().__init__()
        self.num_negatives = num_negatives

    def forward(self, backbone: Backbone, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u, items = backbone.training_pairs(batch)
        pos = backbone.item_repr(items)
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
        u, items = backbone.training_pairs(batch)
        v = backbone.item_repr(items)
        # B x B work dominates a step on CPU: each op below makes one new tensor at most, and edits
        # in place only a tensor this method made (never the backbone's own output, whose backward
        # may need it); bit-identical to the out-of-place chain, about a quarter faster per step
        logits = _scaled(backbone.score(u, v), self.temperature)
        owned = self.temperature != 1.0
        if self.logq_correction and self.log_q.numel():
            correction = self.log_q.to(logits.device)[items].unsqueeze(0)
            logits = logits.sub_(correction) if owned else logits - correction
            owned = True
        same = items.unsqueeze(0) == items.unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill_(same, -torch.inf) if owned else logits.masked_fill(same, -torch.inf)
        return F.cross_entropy(logits, torch.arange(u.shape[0], device=u.device))


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy of each positive against all items, or against sampled negatives.

    ``num_negatives=0``: the full softmax over the catalogue (SASRec/UniSRec fine-tuning's
    objective; exact, and cheap while ``n_items`` × positions per batch fits in memory).
    ``num_negatives=N``: sampled softmax against ``N`` items drawn uniformly per batch and shared by
    all its positions (uniform sampling needs no logQ correction); a sampled item equal to the
    positive is masked. Use it for large catalogues or when item vectors are expensive (LoRA
    encoders compute only the items the batch needs).
    """

    def __init__(self, num_negatives: int = 0, temperature: float = 1.0):
        super().__init__()
        self.num_negatives = int(num_negatives)
        self.temperature = temperature

    def forward(self, backbone: Backbone, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        q, items = backbone.training_pairs(batch)
        if self.num_negatives <= 0:
            logits = _scaled(backbone.score(q, backbone.item_repr()), self.temperature)
            return F.cross_entropy(logits, items)
        neg = torch.randint(0, backbone.n_items, (self.num_negatives,), device=q.device)
        cand, inverse = torch.unique(torch.cat([items, neg]), return_inverse=True)
        v = backbone.item_repr(cand)
        pos_s = backbone.score_pairs(q, v[inverse[: items.numel()]]).unsqueeze(1)
        neg_s = backbone.score(q, v[inverse[items.numel():]])
        neg_s = neg_s.masked_fill(neg.unsqueeze(0) == items.unsqueeze(1), -torch.inf)
        logits = _scaled(torch.cat([pos_s, neg_s], dim=1), self.temperature)
        return F.cross_entropy(logits, torch.zeros_like(items))


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (NT-Xent) between two views: row i of ``z1`` and of ``z2`` are a positive pair,
    every other row of either view a negative (2B - 2 per anchor, as in CL4SRec). Cosine similarities
    divided by ``temperature``."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device), -torch.inf)
    n = z1.shape[0]
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return F.cross_entropy(sim, positive)
