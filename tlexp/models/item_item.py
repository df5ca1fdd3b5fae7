"""Item-to-item recommenders: a user's history times an item-item matrix (EASE, ItemKNN).

They need no training loop — the item-item matrix is fitted in closed form (EASE) or counted
(ItemKNN) from the target's training interactions — and they are strong non-transfer baselines on
sparse data, where ID embeddings trained from scratch are weak. A user's scores are ``x_u W``, with
``x_u`` their training history (0/1 per item). A user without training history (a cold-start user)
gets the items' training popularity instead: no item-item model can say anything about them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from tlexp.evaluation.kshot import Adapter
from tlexp.models.popularity import Popularity
from tlexp.models.recommender import Recommender, ScoreFn


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """The 0/1 user × item matrix of (user, item) pairs (repeated pairs count once)."""
    x = sp.csr_matrix((np.ones(users.size, dtype=np.float32), (users, items)), shape=(n_users, n_items))
    x.data[:] = 1.0
    return x


def ease_weights(x: sp.csr_matrix, reg: float) -> np.ndarray:
    """EASE (Steck, WWW 2019): ``B = I - P diag(1/diag(P))`` with ``P = (XᵀX + λI)⁻¹``, zero diagonal.

    Dense ``n_items²`` (float64 for the solve): the closed form of a ridge regression of each item on
    all the others, with the constraint that an item does not predict itself.
    """
    g = (x.T @ x).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += float(reg)
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b.astype(np.float32)


def knn_weights(x: sp.csr_matrix, neighbours: int = 100, shrink: float = 10.0) -> sp.csr_matrix:
    """Item-based kNN: cosine similarity ``x_i·x_j / (‖x_i‖‖x_j‖ + shrink)`` between item columns,
    without self-similarity, keeping each item's ``neighbours`` most similar items (as columns:
    ``W[i, j]`` is how much having ``i`` recommends ``j``)."""
    xc = x.tocsc().astype(np.float32)
    norms = np.sqrt(np.asarray(xc.multiply(xc).sum(0)).ravel())
    co = (xc.T @ xc).tocsr()                                   # co-occurrence counts, items x items
    co.setdiag(0)
    co.eliminate_zeros()
    co = co.tocoo()
    sim = co.data / (norms[co.row] * norms[co.col] + float(shrink))
    s = sp.csc_matrix((sim.astype(np.float32), (co.row, co.col)), shape=co.shape)
    if neighbours and neighbours < s.shape[0]:  # keep the top neighbours of each target item j (column)
        rows, cols, vals = [], [], []
        for j in range(s.shape[1]):
            a, b = s.indptr[j], s.indptr[j + 1]
            if b - a > neighbours:
                top = np.argpartition(-s.data[a:b], neighbours)[:neighbours] + a
            else:
                top = np.arange(a, b)
            rows.append(s.indices[top])
            cols.append(np.full(top.size, j))
            vals.append(s.data[top])
        s = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=s.shape)
    return s.tocsr()


class ItemItemRecommender(Recommender):
    """Scores ``x_u W`` (dense ``W``: EASE; sparse: ItemKNN); users without history: item popularity."""

    def __init__(self, popularity: Popularity, history: sp.csr_matrix, weights: np.ndarray | sp.csr_matrix):
        super().__init__(popularity)
        self.history = history.tocsr()
        self.has_history = np.asarray(self.history.sum(1)).ravel() > 0
        self.set_weights(weights)

    def set_weights(self, weights: np.ndarray | sp.csr_matrix) -> None:
        self.weights = weights.tocsr() if sp.issparse(weights) else np.asarray(weights, dtype=np.float32)

    def score_fn(self, split: str = "test") -> ScoreFn:
        popular = self.backbone.item_repr().T  # (1, n_items): training counts

        def score(users: torch.Tensor) -> torch.Tensor:
            u = users.cpu().numpy()
            rows = self.history[u] @ self.weights
            dense = rows.toarray() if sp.issparse(rows) else np.asarray(rows)
            out = torch.from_numpy(dense.astype(np.float32, copy=False)).to(users.device)
            cold = torch.from_numpy(~self.has_history[u]).to(users.device)
            if cold.any():
                out[cold] = popular.to(out)
            return out

        return score

    def kshot_adapter(self, steps: int = 0, lr: float = 0.1) -> Adapter:
        """k-shot: the k support items are the user's history row (``steps``/``lr`` do not apply)."""

        def adapter(users: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
            n = self.backbone.n_items
            rows = np.repeat(np.arange(support.shape[0]), support.shape[1])
            x = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, support.cpu().numpy().ravel())),
                              shape=(support.shape[0], n))
            out = x @ self.weights
            dense = out.toarray() if sp.issparse(out) else np.asarray(out)
            return torch.from_numpy(dense.astype(np.float32, copy=False)).to(users.device)

        return adapter
