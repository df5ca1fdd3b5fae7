"""The evaluation plan: everything a run evaluates, in one place, executed by the pipeline only.

A plan fixes the splits (validation, test), the segments (all / warm / cold users, cold items),
the k-shot cold-start protocol, the cut-offs and the monitor — from the ``eval`` config group —
and evaluates any *scorer* on them: the run's model, extra scorers a strategy declares (a
distillation teacher: ``teacher_test*/...``), or candidates a strategy wants chosen on validation
(fusion's ensemble weights). Strategies never call the evaluator themselves, so every number a
run logs comes from the same code, and nothing is ever selected on a test metric.

Validation mirrors test: ``val`` (all users), ``val_warm``, ``val_cold`` (the validation cold
users, whose whole target history is their validation set) and ``val_cold_k<k>`` (the k-shot
protocol on them); ``val_combined/<metric>`` is the mean of the segments in ``eval.combine``
(default ``val`` and ``val_cold``). ``eval.monitor`` may name any of these keys: early stopping,
checkpointing, a strategy's choices and sweeps all read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from tlexp.core.errors import ConfigError
from tlexp.data.scenario import DomainData
from tlexp.evaluation.evaluator import EvalSet, evaluate, make_eval_set
from tlexp.evaluation.kshot import Adapter, evaluate_kshot
from tlexp.evaluation.metrics import topk_items

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


class Scorer(Protocol):
    """What the plan evaluates (a :class:`tlexp.models.recommender.Recommender`)."""

    device: torch.device

    def score_fn(self, split: str = "test") -> ScoreFn: ...

    def kshot_adapter(self, steps: int = 0, lr: float = 0.1) -> Adapter: ...


@dataclass(frozen=True)
class KShotSettings:
    """``eval.kshot``: each cold user's first k target interactions shown, the rest ranked."""

    shots: tuple[int, ...] = ()
    adapt_steps: int = 0
    adapt_lr: float = 0.1


@dataclass(frozen=True)
class EvalSettings:
    """The ``eval`` config group."""

    ks: tuple[int, ...] = (5, 10, 20)
    batch_size: int = 1024
    monitor: str = "val/ndcg_at_10"
    combine: tuple[str, ...] = ("val", "val_cold")  # val_combined/<metric> = their mean
    kshot: KShotSettings = field(default_factory=KShotSettings)
    mask_history: bool = True  # False: the known history stays in the ranking (RecBole's sequential protocol)

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"eval.ks={list(self.ks)} must be positive cut-offs, e.g. [5,10,20] "
                              "(conf/eval/default.yaml)")
        split, _, name = self.monitor.partition("/")
        if not split.startswith("val") or not name:
            raise ConfigError(f"eval.monitor='{self.monitor}' must be a validation metric such as val/ndcg_at_10, "
                              "val_cold/ndcg_at_10 or val_combined/ndcg_at_10 (early stopping and every choice are "
                              "made on validation, never on test)")
        bad = [p for p in self.combine if not p.startswith("val")]
        if bad:
            raise ConfigError(f"eval.combine={list(self.combine)}: {bad} are not validation segments; use e.g. "
                              "[val, val_cold] or [val_warm, val_cold_k3]")


@dataclass
class Candidate:
    """One option a strategy wants chosen on validation (e.g. a weighting of ensemble members)."""

    name: str
    apply: Callable[[], None]         # make the model use this option
    params: dict[str, str] = field(default_factory=dict)  # what to record when it is chosen


@dataclass
class Selection:
    chosen: Candidate
    value: float
    values: dict[str, float]


class EvaluationPlan:
    """The splits, segments and protocols of one run's target domain, and how to evaluate on them."""

    def __init__(self, target: DomainData, settings: EvalSettings, default_shots: Sequence[int] = ()):
        self.target = target
        self.settings = settings
        self.valid: EvalSet = make_eval_set(target, "valid", settings.mask_history)
        self.test: EvalSet = make_eval_set(target, "test", settings.mask_history)
        # k-shot: eval.kshot.shots, else what the strategy asks for (meta-learning: its test shots)
        self.shots = [int(k) for k in (settings.kshot.shots or default_shots)]

    @property
    def ks(self) -> list[int]:
        return [int(k) for k in self.settings.ks]

    @property
    def monitor(self) -> str:
        return self.settings.monitor

    def _evaluate(self, eval_set: EvalSet, score_fn: ScoreFn, device: torch.device) -> dict[str, float]:
        return evaluate(eval_set, score_fn, self.ks, self.settings.batch_size, device=device)

    # ----- validation -----
    def validate(self, model: Scorer, kshot: bool = True) -> dict[str, float]:
        """Every validation key: ``val*/<metric>_at_<k>`` for each segment (sequence backbones read the
        train history), ``val_cold_k<k>/...`` (unless ``kshot=False``) and ``val_combined/...``."""
        metrics = self._evaluate(self.valid, model.score_fn("val"), model.device)
        return {**metrics, **self.validation_extras(model, metrics, kshot)}

    @property
    def monitor_needs_kshot(self) -> bool:
        """Whether choosing by the monitor needs the validation k-shot protocol (a per-epoch cost)."""
        parts = [self.monitor.partition("/")[0]]
        if parts[0] == "val_combined":
            parts = list(self.settings.combine)
        return any(p.startswith("val_cold_k") for p in parts)

    def validation_extras(self, model: Scorer, metrics: dict[str, float], kshot: bool = True) -> dict[str, float]:
        """What validation adds to the ranking metrics of ``metrics``: k-shot and the combined keys."""
        out: dict[str, float] = {}
        if kshot and self.shots and self.target.valid_cold_users.size:
            k = self.settings.kshot
            out.update(evaluate_kshot(self.target, self.shots, model.kshot_adapter(k.adapt_steps, k.adapt_lr),
                                      self.ks, self.settings.batch_size, device=model.device, split="valid"))
        out.update(self.combined({**metrics, **out}))
        return out

    def epoch_extras(self, model: Scorer, metrics: dict[str, float]) -> dict[str, float]:
        """The extra keys of a per-epoch validation: k-shot only when the monitor needs it (it costs)."""
        return self.validation_extras(model, metrics, kshot=self.monitor_needs_kshot)

    def combined(self, metrics: dict[str, float]) -> dict[str, float]:
        """``val_combined/<metric>``: the mean of ``eval.combine``'s segments (when all of them were evaluated)."""
        parts = list(self.settings.combine)
        if not parts:
            return {}
        names = {k.partition("/")[2] for k in metrics if k.startswith(parts[0] + "/")}
        out = {}
        for name in sorted(names):
            values = [metrics.get(f"{p}/{name}") for p in parts]
            if all(v is not None for v in values):
                out[f"val_combined/{name}"] = float(sum(values) / len(values))
        return out

    def monitor_value(self, model: Scorer) -> float:
        """The monitored validation value of ``model`` as it is now (-1 if the monitor is not available)."""
        return self.validate(model, kshot=self.monitor_needs_kshot).get(self.monitor, -1.0)

    # ----- test -----
    def test_metrics(self, model: Scorer) -> dict[str, float]:
        """``test*/<metric>_at_<k>`` for every test segment (histories: train + valid)."""
        return self._evaluate(self.test, model.score_fn("test"), model.device)

    def kshot(self, model: Scorer) -> dict[str, float]:
        """``test_cold_k<k>/...``: the k-shot protocol on the test cold users (tlexp/evaluation/kshot.py)."""
        if not self.shots or not self.target.cold_users.size:
            return {}
        k = self.settings.kshot
        adapter = model.kshot_adapter(k.adapt_steps, k.adapt_lr)
        return evaluate_kshot(self.target, self.shots, adapter, self.ks, self.settings.batch_size, device=model.device)

    def extra(self, scorers: dict[str, Scorer]) -> dict[str, float]:
        """``<name>_test*/...`` for each extra scorer (e.g. a distillation teacher) on the test split."""
        out: dict[str, float] = {}
        for name, scorer in scorers.items():
            out.update({f"{name}_{k}": v for k, v in self.test_metrics(scorer).items()})
        return out

    def timings(self, scorers: dict[str, Scorer]) -> dict[str, float]:
        """``time/<name>_ms_per_1k_users``: full-ranking inference cost of each scorer (best of 3)."""
        users = torch.from_numpy(self.test.users)
        return {f"time/{name}_ms_per_1k_users": inference_ms_per_1k_users(scorer.score_fn, users.to(scorer.device))
                for name, scorer in scorers.items()}

    # ----- choices a strategy leaves to validation -----
    def select(self, model: Scorer, candidates: Sequence[Candidate]) -> Selection | None:
        """Apply each candidate to ``model`` in turn; keep the one with the best validation monitor (the
        first one on ties), which is applied again at the end."""
        best, chosen, values = -1.0, None, {}
        for c in candidates:
            c.apply()
            value = self.monitor_value(model)
            values[c.name] = value
            if value > best:
                best, chosen = value, c
        if chosen is None:
            return None
        chosen.apply()
        return Selection(chosen, best, values)

    def segment_sizes(self) -> dict[str, int]:
        """Users per segment, e.g. ``{'test': 3392, 'test_cold': 217, 'val': 3392, 'val_cold': 218, ...}``."""
        return {f"{s.name}{seg}": int(m.sum()) for s in (self.test, self.valid) for seg, m in s.segments.items()}

    def sample_users(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` test users (cold and warm mixed), sorted, for a predictions sample."""
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(self.test.users, size=min(n, self.test.n_users), replace=False))


@torch.no_grad()
def inference_ms_per_1k_users(score_fn_factory: Callable[[], ScoreFn], users: torch.Tensor, k: int = 10,
                              batch_size: int = 1024, repeats: int = 3) -> float:
    """Milliseconds to rank all items for 1,000 users (item representations + scores + top-k), best of ``repeats``."""
    users = users[:1000]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        score = score_fn_factory()
        for lo in range(0, users.numel(), batch_size):
            topk_items(score(users[lo: lo + batch_size]).float(), k)
        best = min(best, time.perf_counter() - t0)
    return best * 1000.0 * 1000.0 / max(users.numel(), 1)
