"""Knowledge-distillation loss terms: a teacher's knowledge as extra training signal for a student.

torchdistill's idea, applied to recommenders: a distillation setup is *data* — a list of terms,
each with a weight, declared in YAML (``conf/strategy/distill.yaml``) — not code. Every term reads
the same :class:`DistillStep`, which the strategy fills once per training step (teacher scores
computed once, shared by all terms), so adding a term never adds a teacher forward pass.

The terms:

- :class:`RecTerm` — the student's own recommendation loss (the run's ``loss``, e.g. BPR).
- :class:`SoftTargetTerm` — soft-target KD (Hinton et al. 2015): KL(teacher ‖ student) between
  temperature-softened score distributions over each row's candidate items, scaled by T² so that
  its gradient does not shrink as T grows. Padded/duplicate candidates are masked out of both
  distributions.
- :class:`RankingTerm` — ranking distillation (Tang & Wang, KDD 2018): the teacher's top-K items of
  a user become extra positives for the student, weighted by rank (w_r ∝ exp(-r/λ)), each against a
  random negative (a BPR pair), so that the term cannot be minimised by inflating every score.
- :class:`HintTerm` — embedding/hint distillation (FitNets): student representations projected to
  the teacher's dimension by a learnt linear map and matched with MSE.

The functional forms (:func:`soft_target_kd`, :func:`ranking_distillation`, :func:`hint_mse`,
:func:`rank_weights`) are what the unit tests check against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# ----- functional forms -----
def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked entries get the lowest finite value: they vanish from a softmax without NaN gradients."""
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)


def soft_target_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """T² · mean over rows of KL(softmax(teacher/T) ‖ softmax(student/T)) over each row's valid candidates.

    ``*_logits``: (B, C) scores of the same candidates; ``mask``: (B, C) bool, False for padded or
    duplicate candidates (excluded from both distributions). Rows without any valid candidate do
    not count. The T² factor keeps the gradient's scale independent of T (Hinton et al.).
    """
    if mask is None:
        mask = torch.ones_like(student_logits, dtype=torch.bool)
    t = float(temperature)
    log_ps = F.log_softmax(_masked(student_logits / t, mask), dim=-1)
    log_pt = F.log_softmax(_masked(teacher_logits.detach() / t, mask), dim=-1)
    pt = log_pt.exp().masked_fill(~mask, 0.0)
    kl = (pt * (log_pt - log_ps).masked_fill(~mask, 0.0)).sum(-1)
    rows = mask.any(-1)
    if not bool(rows.any()):
        return student_logits.sum() * 0.0
    return kl[rows].mean() * (t * t)


def rank_weights(k: int, lam: float) -> torch.Tensor:
    """(k,) weights of ranks 0..k-1: exp(-r/λ), normalised to sum to 1 (top of the list matters most)."""
    w = torch.exp(-torch.arange(k, dtype=torch.float32) / float(lam))
    return w / w.sum()


def ranking_distillation(pos_scores: torch.Tensor, neg_scores: torch.Tensor, weights: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of Σ_r w_r · -log σ(s(u, top_r) - s(u, neg_r)) over valid ranks.

    ``pos_scores``: (B, K) student scores of the teacher's top-K items; ``neg_scores``: (B, K)
    scores of random negatives; ``weights``: (K,) by rank; ``mask``: (B, K) bool (False = padding).
    """
    if mask is None:
        mask = torch.ones_like(pos_scores, dtype=torch.bool)
    per = -F.logsigmoid(pos_scores - neg_scores) * weights.to(pos_scores)
    per = per.masked_fill(~mask, 0.0).sum(-1)
    rows = mask.any(-1)
    if not bool(rows.any()):
        return pos_scores.sum() * 0.0
    return per[rows].mean()


def hint_mse(student_repr: torch.Tensor, teacher_repr: torch.Tensor,
             projection: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Mean squared error between ``projection(student_repr)`` and the (fixed) teacher representation."""
    return F.mse_loss(projection(student_repr), teacher_repr.detach())


# ----- what a step shares with every term -----
@dataclass
class DistillStep:
    """Everything the terms need for one batch, computed once by the strategy.

    ``candidates`` (B, C) are each row's items for soft-target KD (its positive, the teacher's
    top items for the user, shared random items) with ``cand_mask`` False on padding/duplicates;
    ``top_items`` (B, K) the teacher's top-K unseen items per user (``top_mask`` False = padding);
    ``neg_items`` (B, K) random negatives paired with them. Scores are (B, C) / (B, K).
    """

    batch: dict[str, torch.Tensor]
    student: nn.Module
    rec_loss: Callable[[], torch.Tensor]
    student_user: torch.Tensor
    teacher_user: torch.Tensor
    student_item: torch.Tensor          # (B, d_s) representations of the batch's positives
    teacher_item: torch.Tensor          # (B, d_t)
    candidates: torch.Tensor
    cand_mask: torch.Tensor
    student_cand_scores: torch.Tensor
    teacher_cand_scores: torch.Tensor
    top_items: torch.Tensor
    top_mask: torch.Tensor
    student_top_scores: torch.Tensor
    student_neg_scores: torch.Tensor


class DistillTerm(nn.Module):
    """One weighted loss term; ``weight == 0`` turns it off (the strategy then never builds it)."""

    #: what the strategy must put into the step for this term (it computes only what some term needs)
    needs_top_k: int = 0            # the teacher's top-K unseen items per user (precomputed once)
    needs_candidates: bool = False  # candidate lists with student and teacher scores
    needs_items: bool = False       # student and teacher representations of the batch's positives

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def setup(self, student_dim: int, teacher_dim: int) -> None:
        """Create parameters that depend on the models' sizes (before training starts)."""

    def forward(self, step: DistillStep) -> torch.Tensor:
        raise NotImplementedError


class RecTerm(DistillTerm):
    """The student's own recommendation loss on the batch's positives (the run's ``loss``)."""

    def forward(self, step: DistillStep) -> torch.Tensor:
        return step.rec_loss()


class SoftTargetTerm(DistillTerm):
    """Soft-target KD over each row's candidates; see :func:`soft_target_kd`."""

    needs_candidates = True

    def __init__(self, weight: float = 1.0, temperature: float = 1.0):
        super().__init__(weight)
        if temperature <= 0:
            from tlexp.core.errors import ConfigError

            raise ConfigError(f"strategy.losses.kd.temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, step: DistillStep) -> torch.Tensor:
        return soft_target_kd(step.student_cand_scores, step.teacher_cand_scores, step.cand_mask,
                              self.temperature)


class RankingTerm(DistillTerm):
    """The teacher's top-K unseen items as rank-weighted extra positives; see :func:`ranking_distillation`."""

    def __init__(self, weight: float = 1.0, top_k: int = 10, lam: float = 5.0):
        super().__init__(weight)
        self.needs_top_k = int(top_k)
        self.register_buffer("weights", rank_weights(int(top_k), lam), persistent=False)

    def forward(self, step: DistillStep) -> torch.Tensor:
        k = self.needs_top_k
        return ranking_distillation(step.student_top_scores[:, :k], step.student_neg_scores[:, :k],
                                    self.weights, step.top_mask[:, :k])


class HintTerm(DistillTerm):
    """FitNets-style hints: student user (and item) representations, projected, matched to the teacher's."""

    def __init__(self, weight: float = 1.0, sides: tuple[str, ...] | list[str] = ("user", "item")):
        super().__init__(weight)
        self.sides = [str(x) for x in sides]
        bad = set(self.sides) - {"user", "item"}
        if bad or not self.sides:
            from tlexp.core.errors import ConfigError

            raise ConfigError("strategy.losses.hint.sides must be a non-empty subset of [user, item], "
                              f"got {self.sides}")
        self.needs_items = "item" in self.sides
        self.proj = nn.ModuleDict()

    def setup(self, student_dim: int, teacher_dim: int) -> None:
        for side in self.sides:
            self.proj[side] = nn.Linear(student_dim, teacher_dim)

    def forward(self, step: DistillStep) -> torch.Tensor:
        pairs = {"user": (step.student_user, step.teacher_user), "item": (step.student_item, step.teacher_item)}
        return sum(hint_mse(*pairs[side], self.proj[side]) for side in self.sides) / len(self.sides)


def total_loss(terms: nn.ModuleDict, step: DistillStep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ weight · term, and each term's unweighted value (for logging)."""
    if not len(terms):
        raise ValueError("no distillation term has a non-zero weight")
    values = {name: term(step) for name, term in terms.items()}
    total = sum(terms[name].weight * v for name, v in values.items())
    return total, values


__all__ = ["DistillStep", "DistillTerm", "HintTerm", "RankingTerm", "RecTerm", "SoftTargetTerm",
           "hint_mse", "rank_weights", "ranking_distillation", "soft_target_kd", "total_loss"]
