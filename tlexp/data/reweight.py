"""Alignment by resampling: importance weights for source training pairs, from a domain classifier.

Why: pretraining treats every source pair alike, but the target is a different population — other
users' activity, a different pull of the catalogue's head, a different share of users who live in
both domains. Under covariate shift the source examples that look like target examples are the
useful ones, and the right weight for a source example ``x`` is the density ratio
``p_target(x) / p_source(x)`` (Shimodaira 2000; Sugiyama et al. 2007). It is estimated without
estimating either density: a class-balanced logistic regression telling target pairs from source
pairs has the log density ratio as its optimal logit (Bickel et al., ICML 2007), so
``w(x) = exp(logit(x))``.

What a pair is described by (``features``; model-free, so that both domains have them):

* ``user_activity`` — the user's activity percentile among the domain's users (0 = least active,
  1 = most active);
* ``item_popularity`` — the item's popularity percentile among its domain's items (0 = rarest,
  1 = most popular).

Percentiles (average ranks over ties), not counts: the domains differ in size, and a raw count
would tell them apart by size alone (every source user "heavier"), leaving no overlap to reweight
— what should count is where in its own domain's head or tail a pair sits;
* ``overlap`` — 1 when the user also has a history in the other domain.

Features are standardised on the pooled pairs and expanded to degree ``degree`` (squares and
products), enough to represent the exact log ratio of two Gaussians. Weights are normalised to
mean 1 over the source pairs and capped at ``clip`` times their mean (importance weights have heavy
tails; a few huge weights would make training on a handful of pairs). Only **training** pairs
of either domain are read — no validation/test pair, and no cold-start user's held-out history.

The weights are used by resampling, not by multiplying losses: each epoch draws ``n`` source pairs
with replacement, with probability proportional to the weights (:class:`EpochWeightedSampler`), so
any loss (in-batch softmax included, whose negatives are the batch's other items) sees the
reweighted distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata
from torch.utils.data import Sampler

from tlexp.core.errors import ConfigError
from tlexp.data.scenario import DomainData

FEATURES = ("user_activity", "item_popularity", "overlap")
MAX_FIT_ROWS = 200_000  # per domain, for the classifier's fit (weights are then computed for every pair)


@dataclass(frozen=True)
class ReweightSettings:
    """``pretrain.reweight*`` (conf/pretrain/default.yaml); ``adapt.method=reweight`` turns it on."""

    features: tuple[str, ...] = FEATURES
    degree: int = 2
    clip: float = 10.0
    l2: float = 1e-4
    holdout: float = 0.2

    def __post_init__(self) -> None:
        where = "conf/pretrain/default.yaml"
        bad = [f for f in self.features if f not in FEATURES]
        if bad or not self.features:
            raise ConfigError(f"pretrain.reweight_features {list(self.features)}: use a non-empty subset of "
                              f"{list(FEATURES)} ({where})")
        if self.degree not in (1, 2):
            raise ConfigError(f"pretrain.reweight_degree={self.degree!r} must be 1 or 2 ({where})")
        if not self.clip > 1:
            raise ConfigError(f"pretrain.reweight_clip={self.clip!r} must be > 1 (a cap on weight / mean weight) "
                              f"({where}); e.g. pretrain.reweight_clip=10")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"pretrain.reweight_holdout={self.holdout!r} must be in (0, 1) ({where})")

    def key(self) -> dict:
        return {"features": list(self.features), "degree": self.degree, "clip": self.clip, "l2": self.l2,
                "holdout": self.holdout}


@dataclass
class ImportanceWeights:
    """One weight per source training pair (mean 1), and what the estimate looked like."""

    weights: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)
    histogram: dict[str, list[float]] = field(default_factory=dict)


# ----- features -----
def pair_features(data: DomainData, other_users: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(pairs, features) of ``data.train``: see the module docstring. ``other_users``: the other domain's
    user keys (for ``overlap``)."""
    users = data.train["user"].to_numpy()
    items = data.train["item"].to_numpy()
    cols = []
    for name in names:
        if name == "user_activity":
            cols.append(_percentile(np.bincount(users, minlength=data.n_users))[users])
        elif name == "item_popularity":
            cols.append(_percentile(np.bincount(items, minlength=data.n_items))[items])
        elif name == "overlap":
            shared = np.isin(data.users, other_users)
            cols.append(shared[users].astype(np.float64))
        else:  # guarded by ReweightSettings
            raise ValueError(name)
    return np.stack(cols, axis=1).astype(np.float64)


def _percentile(counts: np.ndarray) -> np.ndarray:
    """Each entry's rank among ``counts`` as a share in [0, 1] (ties share their average rank)."""
    return (rankdata(counts, method="average") - 1) / max(len(counts) - 1, 1)


def expand(x: np.ndarray, degree: int) -> np.ndarray:
    """``x`` with, for degree 2, every square and pairwise product appended."""
    if degree == 1:
        return x
    d = x.shape[1]
    extra = [x[:, i] * x[:, j] for i in range(d) for j in range(i, d)]
    return np.concatenate([x, np.stack(extra, axis=1)], axis=1)


# ----- the domain classifier -----
def fit_log_ratio(source: np.ndarray, target: np.ndarray, degree: int = 2, l2: float = 1e-4,
                  seed: int = 0) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, float]]:
    """Fit ``log p_target(x) / p_source(x)`` by class-balanced logistic regression on ``expand(x)``.

    Returns (function from raw features to the estimated log ratio, fit statistics). Balanced classes
    (each domain's loss averaged over its own rows) make the optimal logit the log density ratio
    with no prior term. Full-batch L-BFGS in float64: deterministic and converged, not a schedule.
    """
    pooled = np.concatenate([source, target])
    mean, std = pooled.mean(0), pooled.std(0)
    std = np.where(std > 0, std, 1.0)

    def design(x: np.ndarray) -> torch.Tensor:
        z = expand((x - mean) / std, degree)
        return torch.from_numpy(np.concatenate([z, np.ones((len(z), 1))], axis=1))

    xs, xt = design(source), design(target)
    torch.manual_seed(seed)
    coef = torch.zeros(xs.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([coef], lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (bce(xs @ coef, torch.zeros(len(xs), dtype=torch.float64))
                + bce(xt @ coef, torch.ones(len(xt), dtype=torch.float64))) / 2
        loss = loss + l2 * coef[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    fitted = coef.detach()
    with torch.no_grad():
        final = float((bce(xs @ fitted, torch.zeros(len(xs), dtype=torch.float64))
                       + bce(xt @ fitted, torch.ones(len(xt), dtype=torch.float64))) / 2)

    def log_ratio(x: np.ndarray) -> np.ndarray:
        return (design(x) @ fitted).numpy()

    return log_ratio, {"loss": final}


def auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties counted half): 0.5 = the domains look alike."""
    s = np.concatenate([scores_pos, scores_neg])
    ranks = s.argsort(kind="stable").argsort(kind="stable").astype(np.float64) + 1
    # average ranks over ties
    uniq, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    n_pos, n_neg = len(scores_pos), len(scores_neg)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


def normalise(weights: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """Mean 1, and no weight above ``clip`` × the mean of the *capped* weights.

    The cap ``t`` solves ``t = clip · mean(min(w, t))`` (a fixed point, reached by iterating from
    above): capping against the uncapped mean would let one huge weight inflate the mean and so its
    own cap. Returns (weights, the share of them that were capped).
    """
    w = weights / weights.mean()
    t = clip
    for _ in range(200):
        nxt = clip * np.minimum(w, t).mean()
        if abs(nxt - t) <= 1e-12 * t:
            break
        t = nxt
    capped = float((w > t).mean())
    w = np.minimum(w, t)
    return w / w.mean(), capped


def weight_summary(w: np.ndarray) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Quantiles, effective sample size (share of n) and a 20-bin histogram of log10 weights."""
    q = np.quantile(w, [0.01, 0.1, 0.5, 0.9, 0.99])
    stats = {"ess_share": float(w.sum() ** 2 / (len(w) * (w ** 2).sum())), "w_min": float(w.min()),
             "w_p01": float(q[0]), "w_p10": float(q[1]), "w_p50": float(q[2]), "w_p90": float(q[3]),
             "w_p99": float(q[4]), "w_max": float(w.max())}
    counts, edges = np.histogram(np.log10(np.maximum(w, 1e-12)), bins=20)
    return stats, {"log10_weight_edges": edges.round(6).tolist(), "pairs": counts.astype(int).tolist()}


def importance_weights(source: DomainData, target: DomainData, settings: ReweightSettings,
                       seed: int = 0) -> ImportanceWeights:
    """Importance weights of ``source.train`` pairs towards ``target.train`` pairs.

    The classifier is fitted on all but a held-out share ``holdout`` of each domain's pairs (drawn
    from ``seed``); its AUC on the held-out pairs says how different the domains are before
    (``auc``), and the weighted AUC on them how different they still are after reweighting
    (``auc_after``, 0.5 = the reweighted source is indistinguishable on these features).
    ``smd_<feature>_before/after``: the standardised mean difference of each feature between target
    and (re)weighted source pairs.
    """
    names = list(settings.features)
    xs = pair_features(source, target.users, names)
    xt = pair_features(target, source.users, names)
    if len(xs) == 0 or len(xt) == 0:
        raise ConfigError(f"reweighting needs training pairs in both domains ({source.name}: {len(xs)}, "
                          f"{target.name}: {len(xt)})")
    rng = np.random.default_rng(seed)
    hold_s = rng.random(len(xs)) < settings.holdout
    hold_t = rng.random(len(xt)) < settings.holdout
    fit_s, fit_t = _at_most(np.flatnonzero(~hold_s), rng), _at_most(np.flatnonzero(~hold_t), rng)
    log_ratio, fit = fit_log_ratio(xs[fit_s], xt[fit_t], settings.degree, settings.l2, seed)
    raw = np.exp(np.clip(log_ratio(xs), -30, 30))
    w, capped = normalise(raw, settings.clip)
    stats, hist = weight_summary(w)
    ls, lt = log_ratio(xs[hold_s]), log_ratio(xt[hold_t])
    stats["auc"] = auc(lt, ls)
    stats["auc_after"] = _weighted_auc(lt, ls, w[hold_s])
    stats["clipped_share"] = capped
    stats["classifier_loss"] = fit["loss"]
    for j, name in enumerate(names):
        spread = np.sqrt((xs[:, j].var() + xt[:, j].var()) / 2) or 1.0
        stats[f"smd_{name}_before"] = float((xt[:, j].mean() - xs[:, j].mean()) / spread)
        stats[f"smd_{name}_after"] = float((xt[:, j].mean() - np.average(xs[:, j], weights=w)) / spread)
    return ImportanceWeights(w.astype(np.float64), stats, hist)


def _at_most(rows: np.ndarray, rng: np.random.Generator, n: int = MAX_FIT_ROWS) -> np.ndarray:
    """``rows``, or a random ``n`` of them: a few features need no more to fit, and the fit stays seconds."""
    return rows if len(rows) <= n else np.sort(rng.choice(rows, size=n, replace=False))


def _weighted_auc(pos: np.ndarray, neg: np.ndarray, neg_weights: np.ndarray) -> float:
    """AUC with the negatives (source pairs) weighted: P(score_target > score_source) under the weights."""
    order = np.argsort(neg, kind="stable")
    neg, wn = neg[order], neg_weights[order]
    cum = np.concatenate([[0.0], np.cumsum(wn)])
    below = cum[np.searchsorted(neg, pos, side="left")]
    upto = cum[np.searchsorted(neg, pos, side="right")]
    return float(((below + upto) / 2).sum() / (len(pos) * wn.sum()))


# ----- the sampler -----
class EpochWeightedSampler(Sampler[int]):
    """``n`` indices drawn with replacement, with probability ∝ ``weights``, afresh for every epoch from
    (seed, epoch) — reproducible, and the same epochs after a resume (Lightning calls ``set_epoch``)."""

    def __init__(self, weights: np.ndarray | torch.Tensor, seed: int, n: int | None = None) -> None:
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        self.n = int(len(self.weights) if n is None else n)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def indices(self) -> torch.Tensor:
        # numpy, not torch.multinomial: the latter is limited to 2^24 categories (source pairs)
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        p = self.weights.numpy() / float(self.weights.sum())
        return torch.from_numpy(rng.choice(len(p), size=self.n, replace=True, p=p))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())
