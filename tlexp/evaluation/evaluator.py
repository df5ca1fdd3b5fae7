"""Full-ranking evaluation of one split, by user segment, shared by every strategy.

An :class:`EvalSet` fixes, for one split, which users are evaluated, their held-out items, the
items masked from their ranking (what they interacted with before), and the segments (all /
cold / warm). :func:`accumulate` scores users in batches against *all* items, so the cost is a
(B × n_items) matrix product plus ``topk`` per batch. It returns sums rather than means, so that
data-parallel ranks can each take a shard of users and add their results up exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from tlexp.data.scenario import DomainData
from tlexp.evaluation.metrics import METRICS, per_user_metrics, topk_items


@dataclass
class CSR:
    """Rows of item indices, one row per evaluated user (compressed sparse rows)."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_pairs(cls, row: np.ndarray, col: np.ndarray, n_rows: int) -> CSR:
        order = np.lexsort((col, row))
        row, col = row[order], col[order]
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.add.at(indptr, row + 1, 1)
        return cls(np.cumsum(indptr), col.astype(np.int64))

    def rows(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row-within-batch, item) index pairs for rows lo..hi-1."""
        a, b = self.indptr[lo], self.indptr[hi]
        lengths = np.diff(self.indptr[lo: hi + 1])
        r = np.repeat(np.arange(hi - lo), lengths)
        return torch.from_numpy(r), torch.from_numpy(self.indices[a:b])

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)


@dataclass
class EvalSet:
    """What to evaluate for one split: users, truth, masks, segments (boolean per user)."""

    name: str
    users: np.ndarray
    truth: CSR
    mask: CSR
    n_items: int
    segments: dict[str, np.ndarray] = field(default_factory=dict)
    # Segments judged against their own held-out items (e.g. only the cold items of a user's test
    # set); segments absent here use ``truth``.
    segment_truth: dict[str, CSR] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.users.size)


def _csr_for(users: np.ndarray, frame: pd.DataFrame) -> CSR:
    pos = pd.Index(users).get_indexer(frame["user"].to_numpy())
    keep = pos >= 0
    return CSR.from_pairs(pos[keep], frame["item"].to_numpy()[keep], users.size)


def make_eval_set(data: DomainData, split: str, mask_history: bool = True) -> EvalSet:
    """Eval set for ``split`` ('valid' or 'test') of a split domain.

    Masked items: train items for valid; train + valid items for test (the user's whole known
    history, as RecBole does for general models). ``mask_history=False`` masks nothing: RecBole's
    protocol for *sequential* models, whose full-ranking evaluation leaves the history in the
    ranking (``eval.mask_history``, what scripts/bench_peer.py sets for SASRec).
    Segments: ``cold`` = the split's cold-start users (validation cold
    users for valid, test cold users for test: their whole history is that split), ``warm`` = the
    rest; for test, ``cold_items`` = test interactions whose item never occurs in the training split
    (the users who have any, judged on those items only): ID models cannot know such items, text
    models can.
    """
    truth_frame = getattr(data, split)
    history = data.train if split == "valid" else pd.concat([data.train, data.valid])
    users = np.unique(truth_frame["user"].to_numpy()).astype(np.int64)
    cold_users = data.valid_cold_users if split == "valid" else data.cold_users
    cold = np.isin(users, cold_users)
    segments = {"": np.ones(users.size, dtype=bool)}
    if cold_users.size:
        segments["_cold"] = cold
        segments["_warm"] = ~cold
    segment_truth: dict[str, CSR] = {}
    if split == "test":
        cold_rows = truth_frame[~truth_frame["item"].isin(np.unique(data.train["item"].to_numpy()))]
        if len(cold_rows):
            segments["_cold_items"] = np.isin(users, cold_rows["user"].to_numpy())
            segment_truth["_cold_items"] = _csr_for(users, cold_rows)
    if not mask_history:
        history = history.iloc[:0]
    return EvalSet(name="val" if split == "valid" else split, users=users,
                   truth=_csr_for(users, truth_frame), mask=_csr_for(users, history),
                   n_items=data.n_items, segments=segments, segment_truth=segment_truth)


@dataclass
class Accumulator:
    """Metric sums, user counts and top-K item coverage per segment (addable across ranks)."""

    sums: torch.Tensor       # (n_segments, n_metric_keys)
    counts: torch.Tensor     # (n_segments,)
    covered: torch.Tensor    # (n_segments, n_ks, n_items): how often each item was in a top-K list
    keys: list[str]
    segments: list[str]
    ks: list[int]

    def as_tensor(self) -> torch.Tensor:
        return torch.cat([self.sums.flatten(), self.counts, self.covered.flatten()])

    def load_tensor(self, t: torch.Tensor) -> None:
        a, b = self.sums.numel(), self.counts.numel()
        self.sums = t[:a].view_as(self.sums)
        self.counts = t[a: a + b]
        self.covered = t[a + b:].view_as(self.covered)

    def result(self, prefix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for s, seg in enumerate(self.segments):
            n = float(self.counts[s])
            if n == 0:
                continue
            for j, key in enumerate(self.keys):
                out[f"{prefix}{seg}/{key}"] = float(self.sums[s, j]) / n
            for j, k in enumerate(self.ks):
                out[f"{prefix}{seg}/coverage_at_{k}"] = float((self.covered[s, j] > 0).sum()) / self.covered.shape[-1]
        return out


ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def accumulate(eval_set: EvalSet, score_fn: ScoreFn, ks: list[int], batch_size: int = 1024,
               rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu") -> Accumulator:
    """Score this rank's shard of users (every ``world_size``-th batch) and sum their metrics.

    ``score_fn(user_indices) -> (B, n_items)`` scores; masked items get -inf before ranking.
    """
    ks = sorted(ks)
    max_k = max(ks)
    keys = [f"{m}_at_{k}" for k in ks for m in METRICS]
    seg_names = list(eval_set.segments)
    seg_masks = torch.from_numpy(np.stack([eval_set.segments[s] for s in seg_names])).float()
    sums = torch.zeros(len(seg_names), len(keys))
    counts = torch.zeros(len(seg_names))
    covered = torch.zeros(len(seg_names), len(ks), eval_set.n_items)
    n_truth_all = eval_set.truth.lengths()
    own_truth = {i: (eval_set.segment_truth[s], eval_set.segment_truth[s].lengths())
                 for i, s in enumerate(seg_names) if s in eval_set.segment_truth}
    shared = torch.tensor([i not in own_truth for i in range(len(seg_names))]).float().unsqueeze(1)
    starts = list(range(0, eval_set.n_users, batch_size))[rank::world_size]
    for lo in starts:
        hi = min(lo + batch_size, eval_set.n_users)
        users = torch.from_numpy(eval_set.users[lo:hi]).to(device)
        scores = score_fn(users).float().contiguous()
        n = eval_set.n_items
        mr, mi = eval_set.mask.rows(lo, hi)
        scores.view(-1)[(mr * n + mi).to(device)] = -torch.inf  # flat index: one cheap scatter
        top = topk_items(scores, max_k).cpu()
        truth = torch.zeros((hi - lo) * n, dtype=torch.bool)
        tr, ti = eval_set.truth.rows(lo, hi)
        truth[tr * n + ti] = True
        hits = truth.view(hi - lo, n).gather(1, top)
        values = per_user_metrics(hits, torch.from_numpy(n_truth_all[lo:hi]), ks)
        mat = torch.stack([values[k] for k in keys], dim=1)            # (B, n_keys)
        seg = seg_masks[:, lo:hi]                                       # (S, B)
        sums += (seg * shared) @ mat
        for i, (csr, n_truth) in own_truth.items():                     # segments with their own truth
            truth_i = torch.zeros(hi - lo, eval_set.n_items, dtype=torch.bool)
            r, c = csr.rows(lo, hi)
            truth_i[r, c] = True
            values_i = per_user_metrics(truth_i.gather(1, top), torch.from_numpy(n_truth[lo:hi]), ks)
            sums[i] += seg[i] @ torch.stack([values_i[k] for k in keys], dim=1)
        counts += seg.sum(1)
        for s in range(len(seg_names)):
            rows = top[seg[s].bool()]
            for j, k in enumerate(ks):  # counts (not flags), so that ranks' results simply add up
                covered[s, j] += torch.bincount(rows[:, :k].flatten(), minlength=n)
    return Accumulator(sums, counts, covered, keys, seg_names, ks)


def evaluate(eval_set: EvalSet, score_fn: ScoreFn, ks: list[int], batch_size: int = 1024,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """All users on one process: ``{'<split><segment>/<metric>_at_<k>': value}``."""
    return accumulate(eval_set, score_fn, ks, batch_size, device=device).result(eval_set.name)


def top_items(eval_set: EvalSet, score_fn: ScoreFn, users: np.ndarray, k: int,
              device: torch.device | str = "cpu") -> np.ndarray:
    """Top-``k`` item indices for some of the eval set's users, with their history masked."""
    pos = pd.Index(eval_set.users).get_indexer(users)
    scores = score_fn(torch.from_numpy(users).to(device)).float()
    for b, p in enumerate(pos):
        a, e = eval_set.mask.indptr[p], eval_set.mask.indptr[p + 1]
        scores[b, torch.from_numpy(eval_set.mask.indices[a:e]).to(device)] = -torch.inf
    return topk_items(scores, k).cpu().numpy()
