"""``distill``: a large teacher's knowledge squeezed into a small student for the target domain.

The **teacher** (``strategy.teacher``: a large backbone) is pretrained on the source and fine-tuned
on the target exactly like the ``finetune`` strategy — both stages cached, so a sweep over student
settings trains it once. It is frozen: its item representations and each user's top-K unseen items
are computed once before training, its user representations once per step, and every loss term
reads them from one :class:`~tlexp.models.distill_losses.DistillStep` (no term runs the teacher).

The **student** (``strategy.student``: a small backbone) is the module's backbone. By default
(``student.init: source``) it is itself pretrained on the source (cached) and its overlap users
carry their source embedding, as in ``finetune`` (the ``transfer`` group): distillation works on the target's training
users, so without this a cold-start user — who has no target rows — would keep a random embedding
and the student could not beat ``scratch`` on them. ``student.init: scratch`` turns it off (an
ablation: what the teacher alone can pass on).

The loss is a weighted sum of terms declared in YAML (``strategy.losses``, torchdistill-style);
a weight of 0 removes a term. The run logs ``params_teacher``, ``params_student``,
``compression_ratio`` (teacher / student parameters), the teacher's test metrics as
``teacher_test*/...`` beside the student's ``test*/...``, and the inference time per 1,000 users
of each (full ranking over all items + top-K).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from tlexp.core.errors import ConfigError
from tlexp.data.scenario import Scenario
from tlexp.evaluation.metrics import topk_items
from tlexp.models.base import Backbone, backbone_name, query_users
from tlexp.models.distill_losses import DistillStep, total_loss
from tlexp.models.recommender import Recommender
from tlexp.strategies.base import Built, Need, SourceModel, Strategy, StrategyInputs, Teacher
from tlexp.training.module import LossObjective, TrainingModule
from tlexp.training.pretraining import TeacherSettings
from tlexp.training.transfer import TransferSettings, lr_scales, transfer_weights


@dataclass(frozen=True)
class TeacherSpec:
    backbone: dict[str, Any] = field(default_factory=dict)     # a conf/backbone node
    transfer: TransferSettings = field(default_factory=TransferSettings)
    max_epochs: int | None = None
    patience: int | None = None


@dataclass(frozen=True)
class StudentSpec:
    backbone: dict[str, Any] = field(default_factory=dict)     # a conf/backbone node
    init: str = "source"                                        # source | scratch

    def __post_init__(self) -> None:
        if self.init not in ("source", "scratch"):
            raise ConfigError(f"strategy.student.init must be 'source' or 'scratch', got '{self.init}'")


@dataclass(frozen=True)
class CandidateSpec:
    teacher_top_k: int = 10
    num_random: int = 50


@dataclass(frozen=True)
class DistillSettings:
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    student: StudentSpec = field(default_factory=StudentSpec)
    candidates: CandidateSpec = field(default_factory=CandidateSpec)
    losses: dict[str, Any] = field(default_factory=dict)       # name -> term node (_target_, weight, ...)


@torch.no_grad()
def top_unseen(backbone: Backbone, users: torch.Tensor, seen_user: torch.Tensor, seen_item: torch.Tensor,
               k: int, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's top-``k`` items by ``backbone`` among items not in its (seen) pairs: (items, valid).

    ``valid`` is False where a user has fewer than ``k`` unseen items (the row is padded).
    """
    items = backbone.item_repr()
    out, ok = [], []
    order = torch.argsort(seen_user)
    su, si = seen_user[order], seen_item[order]
    for lo in range(0, users.numel(), batch_size):
        u = users[lo: lo + batch_size]
        scores = backbone.score(backbone.user_repr({"user": u, "split": "val"}), items).float()
        left = torch.searchsorted(su, u)
        right = torch.searchsorted(su, u, right=True)
        rows = torch.repeat_interleave(torch.arange(u.numel()), right - left)
        idx = torch.cat([torch.arange(a, b) for a, b in zip(left.tolist(), right.tolist(), strict=True)]) \
            if rows.numel() else torch.zeros(0, dtype=torch.long)
        scores[rows, si[idx]] = -torch.inf
        top = topk_items(scores, k)
        out.append(top)
        ok.append(scores.gather(1, top) > -torch.inf)
    if not out:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k, dtype=torch.bool)
    return torch.cat(out), torch.cat(ok)


class DistillObjective(LossObjective):
    """Σ weight · term over the declared loss terms, all reading one :class:`DistillStep` per batch.

    Holds the frozen teacher, its item representations and each user's top-K unseen items
    (computed once), and the terms (with their own parameters, e.g. hint projections).
    """

    def __init__(self, teacher: Backbone, terms: nn.ModuleDict, loss: nn.Module, cand_top_k: int, cand_random: int):
        super().__init__(loss)
        self.teacher = teacher
        self.terms = terms
        self.cand_top_k, self.cand_random = int(cand_top_k), int(cand_random)
        self.register_buffer("teacher_items", torch.zeros(0), persistent=False)
        self.register_buffer("teacher_top", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self.register_buffer("teacher_top_ok", torch.zeros(0, 0, dtype=torch.bool), persistent=False)

    def train(self, mode: bool = True) -> DistillObjective:
        """Lightning puts the module in train mode each epoch; the teacher stays in eval (no dropout)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def make_step(self, student: Backbone, batch: dict[str, torch.Tensor]) -> DistillStep:
        """One forward pass of student and teacher for the batch, shared by every term.

        Works on the student's training queries (one per (user, item) pair for ID backbones, one
        per sequence position for sequential ones), so that every backbone can be a student.
        """
        teacher = self.teacher
        sq, pos = student.training_pairs(batch)
        users = query_users(batch, sq.shape[0])
        b, n_items, dev = sq.shape[0], student.n_items, sq.device
        terms = list(self.terms.values())
        with torch.no_grad():
            if "seq" in batch and not getattr(teacher, "needs_history", False):
                tq = teacher.user_repr({"user": users})       # an ID teacher: the position's user
            else:
                tq = teacher.training_pairs(batch)[0]
        top_all, top_ok = self.teacher_top[users], self.teacher_top_ok[users]
        empty = torch.zeros(b, 0, device=dev)
        step = dict(student_item=empty, teacher_item=empty, candidates=empty.long(), cand_mask=empty.bool(),
                    student_cand_scores=empty, teacher_cand_scores=empty, top_items=empty.long(),
                    top_mask=empty.bool(), student_top_scores=empty, student_neg_scores=empty)
        if any(t.needs_items for t in terms):
            step["student_item"] = student.item_repr(pos)
            step["teacher_item"] = self.teacher_items[pos]
        if any(t.needs_candidates for t in terms):
            rand = torch.randint(0, n_items, (1, self.cand_random), device=dev).expand(b, -1)
            k = self.cand_top_k
            cands = torch.cat([pos.unsqueeze(1), top_all[:, :k], rand], dim=1)
            same = cands.unsqueeze(2) == cands.unsqueeze(1)                     # (B, C, C)
            earlier = torch.ones(cands.shape[1], cands.shape[1], dtype=torch.bool, device=dev).tril(-1)
            mask = ~(same & earlier).any(-1)                                     # first occurrence only
            mask[:, 1: 1 + k] &= top_ok[:, :k]                                   # padded top items
            s_items = student.item_repr(cands.flatten()).view(b, cands.shape[1], -1)
            step.update(candidates=cands, cand_mask=mask,
                        student_cand_scores=student.score_pairs(sq, s_items),
                        teacher_cand_scores=teacher.score_pairs(tq, self.teacher_items[cands]))
        k_rank = max((t.needs_top_k for t in terms), default=0)
        if k_rank:
            top = top_all[:, :k_rank]
            neg = torch.randint(0, n_items, top.shape, device=dev)
            both = student.item_repr(torch.cat([top, neg], 1).flatten()).view(b, 2 * k_rank, -1)
            scores = student.score_pairs(sq, both)
            step.update(top_items=top, top_mask=top_ok[:, :k_rank],
                        student_top_scores=scores[:, :k_rank], student_neg_scores=scores[:, k_rank:])
        cached = PairsCache(student, sq, pos)  # the rec loss reuses the student's queries
        return DistillStep(batch=batch, student=student, rec_loss=lambda: self.loss(cached, batch),
                           student_user=sq, teacher_user=tq, **step)

    def step(self, module: TrainingModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, values = total_loss(self.terms, self.make_step(module.model.backbone, batch))
        n = batch["user"].shape[0]
        module.log_train("train/loss", loss, batch_size=n, prog_bar=True)
        for name, v in values.items():
            module.log_train(f"train/loss_{name}", v, batch_size=n)
        return loss


def repr_dim(backbone: Backbone) -> int:
    """Width of a backbone's representations (read from one item: works for any backbone)."""
    with torch.no_grad():
        return int(backbone.item_repr(torch.zeros(1, dtype=torch.long)).shape[-1])


class Distill(Strategy):
    """Train a small student on the target from a frozen, fine-tuned large teacher + its own loss."""

    Settings = DistillSettings
    uses_transfer = True
    uses_source = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        specs = {n: spec for n, spec in self.settings.losses.items()
                 if spec is not None and float(spec.get("weight", 1.0)) != 0.0}  # off: never built
        if not specs:
            raise ConfigError("strategy=distill: every loss term in strategy.losses has weight 0; "
                              "give at least one (e.g. strategy.losses.rec.weight=1) a non-zero weight")
        self.term_specs = specs

    def backbone_spec(self) -> Any:
        """The student: ``strategy.student.backbone`` (any conf/backbone choice) on the target."""
        return self.settings.student.backbone

    def needs(self, scenario: Scenario) -> list[Need]:
        t = self.settings.teacher
        needs: list[Need] = [Teacher(t.backbone, TeacherSettings(t.transfer, t.max_epochs, t.patience))]
        if self.settings.student.init == "source":
            needs.append(SourceModel(key="student_source", backbone=self.settings.student.backbone))
        return needs

    def build(self, inputs: StrategyInputs) -> Built:
        teacher = inputs.models["teacher"].backbone
        teacher.eval()
        teacher.requires_grad_(False)
        student = inputs.backbone
        scales: dict[str, float] = {}
        if self.settings.student.init == "source":
            moved = transfer_weights(student, inputs.models["student_source"].backbone, inputs.user_map(),
                                     inputs.item_map(), self.transfer)
            inputs.log.log_params({"transfer.moved": ",".join(moved)})
            scales = lr_scales(moved, self.transfer.lr_scale)
        terms = nn.ModuleDict({name: instantiate(spec) for name, spec in self.term_specs.items()})
        cand = self.settings.candidates
        objective = DistillObjective(teacher, terms, inputs.make_loss(), cand.teacher_top_k, cand.num_random)
        s_dim, t_dim = repr_dim(student), repr_dim(teacher)
        for term in terms.values():
            term.setup(s_dim, t_dim)
        top_k = max([cand.teacher_top_k] + [t.needs_top_k for t in terms.values()])
        # The teacher is frozen: what it says about items and each user's top items is computed once.
        with torch.no_grad():
            objective.teacher_items = teacher.item_repr().detach().clone()
            train = inputs.target.train
            objective.teacher_top, objective.teacher_top_ok = top_unseen(
                teacher, torch.arange(inputs.target.n_users), torch.tensor(train["user"].to_numpy()),
                torch.tensor(train["item"].to_numpy()), max(top_k, 1))
        p_t, p_s = teacher.num_parameters(), student.num_parameters()
        inputs.log.set_tags({"teacher_backbone": backbone_name(self.settings.teacher.backbone)})
        inputs.log.log_params({"params_teacher": p_t, "params_student": p_s,
                               "compression_ratio": round(p_t / max(p_s, 1), 3),
                               "distill.terms": ",".join(f"{n}={t.weight:g}" for n, t in terms.items())})
        inputs.log.log_metrics({"distill/student_param_share": p_s / max(p_t, 1)})
        self.teacher = teacher
        return Built(Recommender(student), objective, inputs.pairs(), scales)

    def extra_scorers(self, built: Built) -> dict[str, Recommender]:
        """The teacher's test metrics are logged as ``teacher_test*/...`` beside the student's."""
        return {"teacher": Recommender(self.teacher).to(built.model.device)}

    def timed_scorers(self, built: Built) -> dict[str, Recommender]:
        return {"teacher": Recommender(self.teacher).to(built.model.device), "student": built.model}


class PairsCache:
    """A view of a backbone whose ``training_pairs`` returns already computed queries.

    Losses call ``backbone.training_pairs(batch)``; distillation has computed the student's queries
    for its own terms already, so the recommendation loss reuses them (one student forward per step).
    """

    def __init__(self, backbone: Backbone, queries: torch.Tensor, items: torch.Tensor):
        self._backbone, self._pairs = backbone, (queries, items)

    def training_pairs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pairs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backbone, name)
