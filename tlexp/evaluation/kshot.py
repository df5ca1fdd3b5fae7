"""The k-shot protocol for cold-start users, shared by every strategy so that they compare fairly.

A cold-start user's whole target history is their test set (see ``tlexp/data/scenario.py``). For
each ``k`` in ``shots`` the protocol reveals the user's **first k target interactions in time
order** as a *support set*, lets the strategy adapt on it, and ranks all items for the *rest*:

* the support items are masked from the ranking and are never test positives;
* the cohort is the same for every ``k`` — cold users with more than ``max(shots)`` interactions —
  so that ``test_cold_k1`` … ``test_cold_k5`` differ only in how much the model was shown;
* metrics are the shared full-ranking ones, logged as segments ``test_cold_k<k>/<metric>_at_<K>``.

How a strategy adapts is an :data:`Adapter`: ``(users, support) -> scores`` over all items. Three
come ready: no adaptation (score with the model as it is), a few plain gradient steps on the user
representation (:func:`gradient_step_adapter`, what every recommender gets through
``eval.kshot.adapt_steps``) and the meta-learned inner loop (``tlexp/strategies/meta.py``). The
support loss is one softmax over all items per user (:func:`support_loss`), the same in all three.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.func import grad, vmap

from tlexp.data.scenario import DomainData
from tlexp.evaluation.evaluator import CSR, EvalSet, accumulate

# (user indices (B,), support item indices (B, k)) -> (B, n_items) scores
Adapter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ScorePairs = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class KShotSet:
    """One ``k``: the eval set (truth = history after the support, mask = support) and the support."""

    k: int
    eval_set: EvalSet
    support: torch.Tensor  # (n_users, k) item indices, rows aligned with eval_set.users

    def support_of(self, users: torch.Tensor) -> torch.Tensor:
        pos = pd.Index(self.eval_set.users).get_indexer(users.cpu().numpy())
        if (pos < 0).any():
            raise KeyError("k-shot support requested for users outside the k-shot cohort")
        return self.support[torch.from_numpy(pos)].to(users.device)


def cold_histories(data: DomainData, split: str = "test") -> pd.DataFrame:
    """The cold-start users' target interactions in time order (user, item, timestamp): the test cold
    users' (``split="test"``) or the validation cold users' (``split="valid"``)."""
    frame, users = (data.valid, data.valid_cold_users) if split == "valid" else (data.test, data.cold_users)
    frame = frame[frame["user"].isin(users)]
    return frame.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)


def kshot_sets(data: DomainData, shots: list[int], name: str | None = None, split: str = "test") -> list[KShotSet]:
    """One :class:`KShotSet` per ``k`` over the same cohort (cold users with > max(shots) items) of
    ``split``'s cold users; named ``<name>_k<k>`` (default ``test_cold`` / ``val_cold``)."""
    shots = sorted({int(k) for k in shots})
    if not shots or shots[0] < 1:
        raise ValueError(f"k-shot shots must be positive integers, got {shots}")
    name = name or ("val_cold" if split == "valid" else "test_cold")
    hist = cold_histories(data, split)
    position = hist.groupby("user").cumcount().to_numpy()
    size = hist.groupby("user")["item"].transform("size").to_numpy()
    keep = size > shots[-1]
    hist, position = hist[keep].reset_index(drop=True), position[keep]
    users = np.unique(hist["user"].to_numpy()).astype(np.int64)
    row = pd.Index(users).get_indexer(hist["user"].to_numpy())
    items = hist["item"].to_numpy().astype(np.int64)
    out = []
    for k in shots:
        sup = position < k
        support = np.empty((users.size, k), dtype=np.int64)
        support[row[sup], position[sup]] = items[sup]
        eval_set = EvalSet(name=f"{name}_k{k}", users=users,
                           truth=CSR.from_pairs(row[~sup], items[~sup], users.size),
                           mask=CSR.from_pairs(row[sup], items[sup], users.size),
                           n_items=data.n_items, segments={"": np.ones(users.size, dtype=bool)})
        out.append(KShotSet(k, eval_set, torch.from_numpy(support)))
    return out


def evaluate_kshot(data: DomainData, shots: list[int], adapter: Adapter, ks: list[int],
                   batch_size: int = 1024, device: torch.device | str = "cpu", split: str = "test") -> dict[str, float]:
    """``{'<split>_cold_k<k>/<metric>_at_<K>': value}`` for each ``k`` in ``shots`` ({} if no cohort)."""
    out: dict[str, float] = {}
    for ks_set in kshot_sets(data, shots, split=split):
        if ks_set.eval_set.n_users == 0:
            continue
        fn = lambda users, s=ks_set: adapter(users, s.support_of(users))  # noqa: E731
        out.update(accumulate(ks_set.eval_set, fn, ks, batch_size, device=device).result(ks_set.eval_set.name))
    return out


def support_loss(user: torch.Tensor, items: torch.Tensor, support: torch.Tensor,
                 score: ScorePairs, weight: torch.Tensor | None = None) -> torch.Tensor:
    """One user's loss on their support items: mean of ``-log softmax`` over all items at each.

    ``user`` (d,), ``items`` (n_items, d) all item representations, ``support`` (k,) indices,
    ``weight`` (k,) optional 0/1 padding mask. Written per user so that ``vmap`` batches it.
    """
    logp = torch.log_softmax(score(user.unsqueeze(0), items).squeeze(0), dim=-1)
    picked = logp[support]
    if weight is None:
        return -picked.mean()
    return -(picked * weight).sum() / weight.sum().clamp(min=1.0)


def adapt_user_vectors(z0: torch.Tensor, items: torch.Tensor, support: torch.Tensor, steps: int,
                       lr: float, score: ScorePairs) -> torch.Tensor:
    """``steps`` plain gradient steps of each user's vector on their own support loss (vmap over users)."""
    g = vmap(grad(lambda z, s: support_loss(z, items, s, score)))
    z = z0
    for _ in range(int(steps)):
        z = z - lr * g(z, support)
    return z


def gradient_step_adapter(backbone: torch.nn.Module, user_vectors: Callable[[torch.Tensor], torch.Tensor],
                          steps: int = 0, lr: float = 0.1) -> Adapter:
    """The baseline adapter: the user representation, moved by ``steps`` gradient steps (0 = none).

    ``user_vectors(users) -> (B, d)`` is how the strategy represents users before adaptation
    (the backbone's ``user_repr``, or e.g. EMCDR's mapped source embedding for cold users).
    """

    def adapter(users: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            items = backbone.item_repr()
            z = user_vectors(users)
        if steps > 0:
            with torch.enable_grad():
                z = adapt_user_vectors(z, items, support, steps, lr, backbone.score).detach()
        return backbone.score(z, items)

    return adapter
