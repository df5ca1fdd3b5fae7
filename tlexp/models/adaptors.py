"""Small trainable maps from a frozen text space into a recommender's item space (UniSRec).

Text embeddings from a pretrained language model are anisotropic and carry domain-specific
offsets; UniSRec (Hou et al., KDD 2022) puts a *parametric whitening* layer on them and mixes
several such layers with a learned gate, so that one adaptor can serve items of different
domains. The adaptor is what makes text-based item vectors portable: it is trained on the
source, transferred by name, and fine-tuned on the target — no item IDs involved.
"""

from __future__ import annotations

import torch
from torch import nn


class MoEAdaptor(nn.Module):
    """A softmax-gated mixture of ``n_experts`` whitening layers (UniSRec's MoE adaptor).

    The gate reads the text embedding itself, so items of different kinds can lean on different
    experts. ``n_experts=1`` is a single whitening layer. All experts run as one matrix product
    (``(x - b_k) W_k = x W_k - b_k W_k``), which matters on CPU: the adaptor runs over every item
    a training step touches. Unlike UniSRec's code, the experts share one dropout mask.
    """

    def __init__(self, in_dim: int, out_dim: int, n_experts: int = 8, dropout: float = 0.2):
        super().__init__()
        self.n_experts, self.out_dim = n_experts, out_dim
        self.dropout = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(n_experts, in_dim))              # b_k: each expert's centre
        self.weight = nn.Parameter(torch.randn(in_dim, n_experts * out_dim) * 0.02)  # [W_1 ... W_E]
        self.gate = nn.Parameter(torch.zeros(in_dim, n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(-1, self.n_experts, self.out_dim)                   # (in, E, out)
        shift = torch.einsum("ei,ieo->eo", self.bias, w)                          # b_k W_k: (E, out)
        y = (self.dropout(x) @ self.weight).view(*x.shape[:-1], self.n_experts, self.out_dim) - shift
        weights = torch.softmax(x @ self.gate, dim=-1).unsqueeze(-1)             # (..., E, 1)
        return (weights * y).sum(-2)
