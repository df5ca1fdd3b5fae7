"""Vectorised full-ranking top-K metrics.

Ranking rule (documented, and shared with the reference implementation in the tests): items
are ordered by score, descending; **ties are broken by the lower item index first**. The rule
matters for untrained models and popularity counts, where ties are common; ``torch.topk`` alone
leaves tie order unspecified, so :func:`topk_items` repairs the rows that have a tie at the
K-th place, which keeps the cost of a plain ``topk`` for everything else.

Per-user definitions (RecBole's), for a user with truth set G and top-K list R:
    hit@K       = 1[|R ∩ G| > 0]
    recall@K    = |R ∩ G| / |G|
    precision@K = |R ∩ G| / K
    f1@K        = 2 P R / (P + R)  (0 when both are 0)
    ndcg@K      = sum_{r: R_r in G} 1/log2(r + 2) / sum_{r < min(|G|, K)} 1/log2(r + 2)
    mrr@K       = 1 / (first rank in R that is in G, 1-based), 0 if none
Segment values are the means over users; coverage@K is |∪ R| / n_items over the segment.
"""

from __future__ import annotations

import torch

METRICS = ("recall", "ndcg", "hit", "mrr", "precision", "f1")


def topk_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the top-``k`` items per row: score descending, ties by lower index."""
    k = min(k, scores.shape[1])
    extra = 1 if k < scores.shape[1] else 0
    vals, idx = scores.topk(k + extra, dim=1)
    # An item tied with the K-th score was left out exactly when the (K+1)-th score equals the K-th:
    # only those rows need the full repair (one topk of K+1 instead of a pass over all scores).
    rows = (vals[:, k] == vals[:, k - 1]).nonzero().squeeze(1) if extra else vals.new_zeros(0, dtype=torch.long)
    vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    kth = vals[:, -1:]
    if rows.numel():
        s, t = scores[rows], kth[rows]
        above, eq = s > t, s == t
        need = k - above.sum(1, keepdim=True)
        chosen = above | (eq & (eq.cumsum(1) <= need))
        idx[rows] = chosen.nonzero()[:, 1].view(-1, k)
        vals[rows] = s.gather(1, idx[rows])
    # Order the K chosen items by (score desc, index asc): sort by index, then stable by score.
    by_index = idx.argsort(dim=1)
    idx, vals = idx.gather(1, by_index), vals.gather(1, by_index)
    by_score = vals.argsort(dim=1, descending=True, stable=True)
    return idx.gather(1, by_score)


def per_user_metrics(hits: torch.Tensor, n_truth: torch.Tensor, ks: list[int]) -> dict[str, torch.Tensor]:
    """Per-user metric values from a (B, maxK) 0/1 hit matrix in rank order and |G| per user."""
    hits = hits.float()
    n_truth = n_truth.float().clamp(min=1)
    max_k = hits.shape[1]
    ranks = torch.arange(max_k, dtype=torch.float32, device=hits.device)
    discount = 1.0 / torch.log2(ranks + 2.0)
    dcg = (hits * discount).cumsum(1)
    n_hits = hits.cumsum(1)
    ideal = discount.cumsum(0)
    # Rank of the first hit (0-based); max_k where none.
    first = torch.where(hits.any(1), hits.argmax(1), torch.full_like(n_truth, max_k, dtype=torch.long))
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        kk = min(k, max_k)
        h = n_hits[:, kk - 1]
        idcg = ideal[(n_truth.long().clamp(max=kk) - 1)]
        p = h / k
        r = h / n_truth
        out[f"recall_at_{k}"] = r
        out[f"precision_at_{k}"] = p
        out[f"hit_at_{k}"] = (h > 0).float()
        out[f"ndcg_at_{k}"] = dcg[:, kk - 1] / idcg
        out[f"mrr_at_{k}"] = torch.where(first < kk, 1.0 / (first.float() + 1.0), torch.zeros_like(r))
        out[f"f1_at_{k}"] = torch.where(p + r > 0, 2 * p * r / (p + r).clamp(min=1e-12), torch.zeros_like(r))
    return out
