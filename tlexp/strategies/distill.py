"""``distill``: a large teacher's knowledge squeezed into a small student for the target domain.

The **teacher** (``strategy.teacher``: a large backbone) is pretrained on the source and fine-tuned
on the target exactly like the ``finetune`` strategy — both stages cached, so a sweep over student
settings trains it once. It is frozen: its item representations and each user's top-K unseen items
are computed once before training, its user representations once per step, and every loss term
reads them from one :class:`~tlexp.models.distill_losses.DistillStep` (no term runs the teacher).

The **student** (``strategy.student``: a small backbone) is the module's backbone. By default
(``student.init: source``) it is itself pretrained on the source (cached) and its overlap users
carry their source embedding, as in ``finetune``: distillation works on the target's training
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

import time
from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tlexp.context import RunContext
from tlexp.errors import ConfigError
from tlexp.evaluation.evaluator import evaluate, make_eval_set
from tlexp.evaluation.metrics import topk_items
from tlexp.models.base import Backbone
from tlexp.models.distill_losses import DistillStep, total_loss
from tlexp.strategies.finetune import FineTune

TEACHER_KNOBS = ("carry_user_embeddings", "init_new_users", "freeze", "transfer_lr_scale", "max_epochs", "patience")


def repr_dim(backbone: Backbone) -> int:
    """Width of a backbone's representations (read from one item: works for any backbone)."""
    with torch.no_grad():
        return int(backbone.item_repr(torch.zeros(1, dtype=torch.long)).shape[-1])


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


@torch.no_grad()
def inference_ms_per_1k_users(score_fn_factory: Callable[[], Callable[[torch.Tensor], torch.Tensor]],
                              users: torch.Tensor, k: int = 10, batch_size: int = 1024, repeats: int = 3) -> float:
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


def _score_fn(backbone: Backbone, split: str = "test") -> Callable[[torch.Tensor], torch.Tensor]:
    items = backbone.item_repr()
    return lambda users: backbone.score(backbone.user_repr({"user": users, "split": split}), items)


class Distill(FineTune):
    """Train a small student on the target from a frozen, fine-tuned large teacher + its own loss."""

    requires_source = True

    def __init__(self, *args: Any, teacher: DictConfig | dict, student: DictConfig | dict,
                 losses: DictConfig | dict, candidates: DictConfig | dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.teacher_cfg = _plain(teacher)
        self.student_cfg = _plain(student)
        cand = _plain(candidates or {})
        self.cand_top_k = int(cand.get("teacher_top_k", 10))
        self.cand_random = int(cand.get("num_random", 50))
        self.terms = nn.ModuleDict()
        for name, spec in _plain(losses).items():
            if spec is None or float(spec.get("weight", 1.0)) == 0.0:
                continue  # off: never built, so DDP sees no unused parameters
            self.terms[name] = instantiate(spec)
        if not len(self.terms):
            raise ConfigError("strategy=distill: every loss term in strategy.losses has weight 0; "
                              "give at least one (e.g. strategy.losses.rec.weight=1) a non-zero weight")
        self.top_k = max([self.cand_top_k] + [t.needs_top_k for t in self.terms.values()])
        self.teacher: Backbone | None = None
        self.register_buffer("teacher_items", torch.zeros(0), persistent=False)
        self.register_buffer("teacher_top", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self.register_buffer("teacher_top_ok", torch.zeros(0, 0, dtype=torch.bool), persistent=False)

    # ----- the pipeline's hooks -----
    @classmethod
    def make_backbone(cls, ctx: RunContext) -> Backbone:
        """The student: ``strategy.student.backbone`` (a conf/backbone name or a full node) on the target."""
        return ctx.build_backbone(ctx.backbone_config(ctx.cfg.strategy.student.backbone))

    def prepare(self, ctx: RunContext) -> None:
        teacher_cfg = ctx.backbone_config(self.teacher_cfg["backbone"])
        student_cfg = ctx.backbone_config(self.student_cfg["backbone"])
        settings = {k: self.teacher_cfg[k] for k in TEACHER_KNOBS if k in self.teacher_cfg}
        teacher = ctx.teacher(teacher_cfg, settings).backbone
        teacher.eval()
        teacher.requires_grad_(False)
        self.teacher = teacher
        init = str(self.student_cfg.get("init", "source"))
        if init == "source":
            pre = ctx.pretrained(student_cfg, tag="pretrain")
            ctx.reseed()
            moved = self.transfer(pre.backbone, ctx.user_map(), ctx.item_map())
            ctx.log_params({"transfer.moved": ",".join(moved)})
        elif init != "scratch":
            raise ConfigError(f"strategy.student.init must be 'source' or 'scratch', got '{init}'")
        else:
            ctx.reseed()
        s_dim, t_dim = repr_dim(self.backbone), repr_dim(teacher)
        for term in self.terms.values():
            term.setup(s_dim, t_dim)
        # The teacher is frozen: what it says about items and each user's top items is computed once.
        with torch.no_grad():
            self.teacher_items = teacher.item_repr().detach().clone()
            train = ctx.target.train
            self.teacher_top, self.teacher_top_ok = top_unseen(teacher, torch.arange(ctx.target.n_users),
                                          torch.tensor(train["user"].to_numpy()),
                                          torch.tensor(train["item"].to_numpy()), max(self.top_k, 1))
        p_t, p_s = teacher.num_parameters(), self.backbone.num_parameters()
        ctx.set_tags({"backbone": _name(student_cfg), "teacher_backbone": _name(teacher_cfg)})
        ctx.log_params({"params_teacher": p_t, "params_student": p_s,
                        "compression_ratio": round(p_t / max(p_s, 1), 3),
                        "distill.terms": ",".join(f"{n}={t.weight:g}" for n, t in self.terms.items())})
        ctx.log_metrics({"distill/student_param_share": p_s / max(p_t, 1)})

    def train(self, mode: bool = True) -> Distill:
        """Lightning puts the module in train mode each epoch; the teacher stays in eval (no dropout)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def extra_metrics(self, ctx: RunContext) -> dict[str, float]:
        """The teacher's test metrics (``teacher_test*/...``) and both models' inference cost."""
        assert self.teacher is not None, "prepare() was not called"
        self.teacher.to(self.device)
        test_set = make_eval_set(ctx.target, "test")
        ks = list(ctx.cfg.eval.ks)
        with torch.no_grad():
            metrics = evaluate(test_set, _score_fn(self.teacher), ks, ctx.cfg.eval.batch_size, device=self.device)
        out = {"teacher_" + k: v for k, v in metrics.items()}
        users = torch.from_numpy(test_set.users).to(self.device)
        out["time/teacher_ms_per_1k_users"] = inference_ms_per_1k_users(lambda: _score_fn(self.teacher), users)
        out["time/student_ms_per_1k_users"] = inference_ms_per_1k_users(self.score_fn, users)
        return {**super().extra_metrics(ctx), **out}

    # ----- training -----
    def make_step(self, batch: dict[str, torch.Tensor]) -> DistillStep:
        """One forward pass of student and teacher for the batch, shared by every term.

        Works on the student's training queries (one per (user, item) pair for ID backbones, one
        per sequence position for sequential ones), so that every backbone can be a student.
        """
        assert self.teacher is not None, "prepare() was not called"
        student, teacher = self.backbone, self.teacher
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

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, values = total_loss(self.terms, self.make_step(batch))
        n = batch["user"].shape[0]
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        for name, v in values.items():
            self.log(f"train/loss_{name}", v, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss


def query_users(batch: dict[str, torch.Tensor], n_queries: int) -> torch.Tensor:
    """The user of each training query: the batch's users, or, for sequence batches, each
    non-padding position's user (the order of ``Backbone.training_pairs``: row-major, target >= 0)."""
    target = batch.get("target")
    if target is not None and target.dim() == 2:
        users = batch["user"].unsqueeze(1).expand_as(target)[target >= 0]
    else:
        users = batch["user"]
    if users.numel() != n_queries:
        raise ValueError(f"cannot match {n_queries} training queries to users ({users.numel()})")
    return users


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


def _plain(node: Any) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def _name(backbone_cfg: Any) -> str:
    name = backbone_cfg.get("name") if hasattr(backbone_cfg, "get") else None
    return str(name or str(backbone_cfg["_target_"]).rsplit(".", 1)[-1])
