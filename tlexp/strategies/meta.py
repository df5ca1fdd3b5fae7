"""``meta``: meta-learning a cold-start user's first few steps — MAML, first-order MAML, Reptile.

**Tasks** (MeLU-style): a share (``task_share``) of the overlap users that have target training
data are meta-training tasks. A task's support set is the user's first ``k`` target training
interactions in time order (``k`` drawn from ``train_shots`` per meta-batch), its query set the
next ``query_size``. A task's user vector starts from ``mapping(source representation)`` — the
mapping starts as the identity, i.e. as ``finetune``'s carried source embedding — and the inner
loop takes ``inner_steps`` gradient steps of the support loss (the k-shot protocol's softmax over
all items), adapting ``inner_params``: ``user`` (an offset to the user vector) and/or ``map`` (the
mapping's weights, per task), with one learnt step size per fast weight (Meta-SGD) unless
``learn_inner_lr=false``. The outer loop updates the initialisation (the mapping, the step sizes;
the item side too with ``meta_items=true``) from the query loss after adaptation:

* ``maml``: through the inner loop, second order (``torch.func.grad`` composed with autograd);
* ``fomaml``: the inner gradients are treated as constants (first order);
* ``reptile``: adapt on the whole task without a graph, then pull the initialisation towards the
  adapted weights: the gradient of ``½‖θ - mean(φ)‖²`` is ``θ - mean(φ)``, so plain SGD at rate
  ε is exactly Reptile's ``θ ← θ + ε (mean(φ) - θ)`` (and Adam is Reptile with Adam).

An EMCDR-style anchor (``anchor_weight``) also pulls each task's start ``mapping(source)`` towards
the user's own target table row, which keeps the mapping from over-fitting the tasks.

**What carries over**: the backbone is initialised from the source-pretrained one as in
``finetune`` (towers; overlap users' embeddings) — except the task users, whose target rows start
fresh. With carried rows the plain loss would fit the item side to the task users' query items
*through their source embedding*, the very start of the meta path: in-sample tasks far easier than
a cold-start user's history (measured: task query loss 5.1 vs 6.9-7.2 on cold users), and the
outer loop then learns a mapping that hurts cold users.

Tasks are batched (``task_batch_size`` users per meta-batch) and the inner loop is vectorised over
them with ``torch.func.vmap``; the backbone keeps training on the plain target pairs
(``rec_weight``), so warm users and items stay trained. Everything runs in one Lightning
manual-optimisation step; under ``trainer=ddp`` the task and pair batches are sharded across
processes by Lightning's distributed sampler and ``manual_backward`` averages the gradients.

At test time a cold-start user is scored with ``mapping(source representation)`` (``test_cold``)
and, under the k-shot protocol (``test_cold_k<k>``), after the same inner loop on their ``k``
support items. Warm users are scored by the target table as trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, Dataset

from tlexp.context import RunContext
from tlexp.data.datamodule import EvalTrigger, datamodule_for, keep_batch
from tlexp.errors import ConfigError
from tlexp.evaluation.kshot import support_loss
from tlexp.strategies.emcdr import MappedColdUsers, Mapping
from tlexp.strategies.finetune import FineTune

ALGORITHMS = ("maml", "fomaml", "reptile")
Params = dict[str, torch.Tensor]


# ----- the algorithms, as pure functions of (batched) fast weights: testable on tiny models -----

def inner_loop(fast: Params, task_loss: Callable[..., torch.Tensor], task_args: Sequence[torch.Tensor],
               shared_args: Sequence[Any], steps: int, lr: float | Params, first_order: bool = False) -> Params:
    """``steps`` gradient steps of every task's fast weights on its own loss, vectorised with vmap.

    ``fast`` maps names to tensors with a leading task dimension; ``task_loss(fast_1, *task_args_1,
    *shared_args)`` is one task's scalar loss. With ``first_order`` the inner gradients are cut from
    the graph (FOMAML, Reptile); otherwise the result stays differentiable with respect to
    everything it was computed from — the initial fast weights and ``shared_args`` — to second
    order (MAML). ``lr`` is one step size, or one per fast weight (shaped like a task's slice of it,
    Meta-SGD), which then receives a meta-gradient too.
    """
    in_dims = (0,) + (0,) * len(task_args) + (None,) * len(shared_args)
    step_grad = vmap(grad(task_loss), in_dims=in_dims)
    for _ in range(int(steps)):
        g = step_grad(fast, *task_args, *shared_args)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        fast = {k: fast[k] - (lr[k] if isinstance(lr, dict) else lr) * g[k] for k in fast}
    return fast


def reptile_loss(init: Params, adapted: Params) -> torch.Tensor:
    """``Σ ½‖θ - mean_tasks(φ)‖²``: its gradient with respect to ``init`` is Reptile's step direction."""
    total = torch.zeros(())
    for name, theta in init.items():
        target = adapted[name].detach().mean(0)
        total = total + 0.5 * (theta - target).pow(2).sum()
    return total


# ----- data: tasks next to the plain target pairs -----

class TaskDataset(Dataset):
    """One task per user: the user's first ``length`` target training items in time order (-1 padded)."""

    def __init__(self, users: torch.Tensor, seq: torch.Tensor, lengths: torch.Tensor):
        self.users, self.seq, self.lengths = users.long(), seq.long(), lengths.long()

    def __len__(self) -> int:
        return int(self.users.numel())

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"user": self.users[i], "seq": self.seq[i], "len": self.lengths[i]}

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        t = torch.as_tensor(idx)
        return {"user": self.users[t], "seq": self.seq[t], "len": self.lengths[t]}


def task_dataset(train, users: np.ndarray, n_support: int, n_query: int) -> TaskDataset:  # noqa: ANN001
    """Tasks for ``users`` from the train frame (a DataFrame), items in time order (-1 padded): the
    first ``n_support`` (the support pool), then the next ``n_query`` (the query set)."""
    frame = train[train["user"].isin(users)].sort_values(["user", "timestamp"], kind="stable")
    pos = frame.groupby("user").cumcount().to_numpy()
    length = n_support + n_query
    keep = pos < length
    frame, pos = frame[keep], pos[keep]
    users = np.sort(users)
    row = np.searchsorted(users, frame["user"].to_numpy())
    seq = torch.full((users.size, length), -1, dtype=torch.long)
    seq[torch.from_numpy(row), torch.from_numpy(pos)] = torch.from_numpy(frame["item"].to_numpy()).long()
    return TaskDataset(torch.from_numpy(users), seq, (seq >= 0).sum(1))


class MetaDataModule(pl.LightningDataModule):
    """Batches of ``{"rec": target pairs, "task": task users}``; an epoch is one pass over the pairs."""

    def __init__(self, rec: pl.LightningDataModule, tasks: TaskDataset, task_batch_size: int):
        super().__init__()
        self.rec, self.tasks, self.task_batch_size = rec, tasks, task_batch_size
        self.item_counts = getattr(rec, "item_counts", None)

    def train_dataloader(self) -> CombinedLoader:
        tasks = DataLoader(self.tasks, batch_size=self.task_batch_size, shuffle=True, collate_fn=keep_batch)
        return CombinedLoader({"rec": self.rec.train_dataloader(), "task": tasks}, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        return DataLoader(EvalTrigger(), batch_size=1)


# ----- the strategy -----

class Meta(MappedColdUsers, FineTune):
    """MAML / FOMAML / Reptile over per-user tasks, from the source-pretrained backbone."""

    def __init__(self, *args: Any, algorithm: str = "maml", inner_steps: int = 3, inner_lr: float = 0.1,
                 inner_params: Sequence[str] = ("user",), train_shots: Sequence[int] = (1, 3, 5),
                 query_size: int = 10, task_batch_size: int = 64, rec_weight: float = 1.0,
                 meta_weight: float = 1.0, mapping: str = "linear", hidden: Sequence[int] = (128,),
                 test_shots: Sequence[int] = (1, 3, 5), learn_inner_lr: bool = True, task_share: float = 0.5,
                 meta_items: bool = False, meta_lr_scale: float = 1.0, anchor_weight: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"meta.algorithm '{algorithm}' is unknown; use one of {list(ALGORITHMS)}")
        bad = set(inner_params) - {"user", "map"}
        if bad or not inner_params:
            raise ConfigError(f"meta.inner_params {list(inner_params)}: use a non-empty subset of [user, map]")
        if algorithm == "reptile" and "map" not in inner_params:
            raise ConfigError("meta.algorithm=reptile meta-learns the weights its inner loop adapts: "
                              "add map to meta.inner_params (e.g. meta.inner_params=[user,map])")
        self.automatic_optimization = False
        self.algorithm, self.inner_steps, self.inner_lr = algorithm, int(inner_steps), float(inner_lr)
        self.inner_params = list(inner_params)
        self.train_shots = sorted(int(k) for k in train_shots)
        self.query_size, self.task_batch_size = int(query_size), int(task_batch_size)
        self.task_share, self.meta_items = float(task_share), bool(meta_items)
        self.meta_lr_scale, self.anchor_weight = float(meta_lr_scale), float(anchor_weight)
        self.rec_weight, self.meta_weight = float(rec_weight), float(meta_weight)
        self.mapping_kind, self.hidden = mapping, list(hidden)
        self.test_shots = [int(k) for k in test_shots]
        # Meta-SGD (Li et al. 2017): one learnt step size per fast weight; Reptile has no outer
        # gradient for it, so it keeps the fixed one.
        self.learn_inner_lr = bool(learn_inner_lr) and algorithm != "reptile"
        self.log_lr = nn.ParameterDict()
        self.mapping: Mapping | None = None
        self.tasks: TaskDataset | None = None
        self.register_buffer("src_user", torch.zeros(0), persistent=False)
        self.register_buffer("use_mapped", torch.zeros(0, dtype=torch.bool), persistent=False)

    # ----- hooks -----
    def prepare(self, ctx: RunContext) -> None:
        pre = ctx.pretrained()
        ctx.reseed()
        has_src, has_train = self.init_source_users(ctx, pre.backbone)
        train = ctx.target.train
        counts = np.bincount(train["user"].to_numpy(), minlength=ctx.target.n_users)
        eligible = np.flatnonzero(has_src.numpy() & (counts > self.train_shots[-1]))
        n_tasks = int(round(self.task_share * eligible.size))
        if n_tasks == 0:
            raise ConfigError(f"meta needs overlap users with more than {self.train_shots[-1]} target training "
                              f"interactions to build tasks; {ctx.source.name} -> {ctx.target.name} has "
                              f"{eligible.size} (meta.task_share={self.task_share}) — lower meta.train_shots, raise "
                              "meta.task_share or pick a scenario with shared users")
        users = np.sort(np.random.default_rng(int(ctx.cfg.seed)).choice(eligible, n_tasks, replace=False))
        # Task users do not carry their source embedding into the target table: the plain loss fits
        # the item side to their table rows, and with rows equal to the source embedding that the
        # meta path starts from, their query items would be fitted to exactly that start — in-sample
        # tasks far easier than a cold-start user's, which misleads the outer loop.
        user_map = ctx.user_map().clone()
        user_map[torch.from_numpy(users)] = -1
        moved = self.transfer(pre.backbone, user_map, ctx.item_map())
        with torch.no_grad():
            d_t = self.backbone.user_repr(self.eval_batch(torch.zeros(1, dtype=torch.long))).shape[-1]
        self.mapping = Mapping(self.src_user.shape[1], d_t, self.mapping_kind, self.hidden)
        if self.learn_inner_lr:
            for name, value in self.init_fast(1, detach=True).items():
                self.log_lr[name.replace(".", "__")] = nn.Parameter(
                    torch.full(value.shape[1:], float(np.log(self.inner_lr))))
        self.tasks = task_dataset(train, users, self.train_shots[-1], self.query_size)
        ctx.log_params({"transfer.moved": ",".join(moved), "meta.tasks": int(users.size),
                        "meta.eligible_users": int(eligible.size), "meta.mapped_users": int(self.use_mapped.sum())})

    def make_datamodule(self, ctx: RunContext) -> pl.LightningDataModule:
        rec = datamodule_for(ctx.target, self.backbone, ctx.cfg.batch_size, ctx.cfg.num_workers)
        return MetaDataModule(rec, self.tasks, self.task_batch_size)

    def kshot_shots(self, ctx: RunContext) -> list[int]:
        return super().kshot_shots(ctx) or self.test_shots

    # ----- the task model: a user vector from (fast weights, source representation) -----
    def init_fast(self, n: int, detach: bool = False) -> Params:
        """The tasks' initial fast weights, with a leading task dimension of size ``n``."""
        fast: Params = {}
        if "user" in self.inner_params:
            d = self.mapping(self.src_user[:1]).shape[-1]
            fast["delta"] = torch.zeros(n, d, device=self.src_user.device)
        if "map" in self.inner_params:
            for name, p in self.mapping.named_parameters():
                fast[f"map.{name}"] = p.unsqueeze(0).expand(n, *p.shape)
        return {k: v.detach() for k, v in fast.items()} if detach else fast

    def _slow_map(self, detach: bool) -> Params:
        return {n: (p.detach() if detach else p) for n, p in self.mapping.named_parameters()}

    def task_vector(self, fast: Params, x: torch.Tensor, slow: Params) -> torch.Tensor:
        """One task's user vector: ``mapping(x)`` with the fast weights in place, plus the offset."""
        params = dict(slow)
        params.update({k[4:]: v for k, v in fast.items() if k.startswith("map.")})
        z = functional_call(self.mapping, params, (x,))
        return z + fast["delta"] if "delta" in fast else z

    def task_loss(self, fast: Params, x: torch.Tensor, items: torch.Tensor, weight: torch.Tensor,
                  item_reprs: torch.Tensor, slow: Params) -> torch.Tensor:
        """One task's softmax loss on ``items`` (weighted 0/1 for padding): the k-shot support loss."""
        return support_loss(self.task_vector(fast, x, slow), item_reprs, items, self.backbone.score, weight)

    def inner_lrs(self, detach: bool = False) -> float | Params:
        """The inner loop's step size: fixed, or learnt per fast weight (Meta-SGD)."""
        if not self.learn_inner_lr:
            return self.inner_lr
        return {k.replace("__", "."): (v.detach() if detach else v).exp() for k, v in self.log_lr.items()}

    def adapt(self, x: torch.Tensor, items: torch.Tensor, weight: torch.Tensor, item_reprs: torch.Tensor,
              first_order: bool, detach_init: bool = False) -> Params:
        """The inner loop for a batch of tasks; returns the adapted fast weights."""
        slow = self._slow_map(detach=first_order)
        reprs = item_reprs.detach() if first_order else item_reprs
        return inner_loop(self.init_fast(x.shape[0], detach=detach_init), self.task_loss, (x, items, weight),
                          (reprs, slow), self.inner_steps, self.inner_lrs(detach=detach_init),
                          first_order=first_order)

    # ----- training -----
    def meta_objective(self, task: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The outer loss of one meta-batch (MAML/FOMAML: query loss after adaptation; Reptile: pull)."""
        users, seq = task["user"], task["seq"]
        k = self.train_shots[int(torch.randint(len(self.train_shots), (1,)))]
        x = self.src_user[users]
        item_reprs = self.backbone.item_repr()
        if not self.meta_items:  # the item side learns from the plain loss only
            item_reprs = item_reprs.detach()
        support, sw = seq[:, :k], torch.ones(seq.shape[0], k, device=seq.device)
        query = seq[:, self.train_shots[-1]:]
        qw = (query >= 0).float()
        query = query.clamp(min=0)
        slow = self._slow_map(detach=False)
        per_task = vmap(self.task_loss, in_dims=(0, 0, 0, 0, None, None))
        if self.algorithm == "reptile":
            items, w = seq.clamp(min=0), (seq >= 0).float()
            adapted = self.adapt(x, items, w, item_reprs, first_order=True, detach_init=True)
            init = {f"map.{n}": p for n, p in self.mapping.named_parameters()}
            loss = reptile_loss(init, adapted)
            with torch.no_grad():
                q_loss = per_task(adapted, x, query, qw, item_reprs, slow).mean()
        else:
            adapted = self.adapt(x, support, sw, item_reprs, first_order=self.algorithm == "fomaml")
            loss = q_loss = per_task(adapted, x, query, qw, item_reprs, slow).mean()
        with torch.no_grad():
            before = per_task(self.init_fast(x.shape[0], detach=True), x, query, qw, item_reprs.detach(),
                              self._slow_map(detach=True)).mean()
        stats = {"train/meta_query_loss": float(q_loss.detach()), "train/meta_query_loss_before": float(before)}
        if self.learn_inner_lr:
            lrs = torch.cat([v.detach().exp().flatten() for v in self.log_lr.values()])
            stats["train/meta_inner_lr"] = float(lrs.mean())
        if self.anchor_weight:
            # EMCDR-style anchor: the start should also be close to the user's own target row
            # (detached; task users' rows are fresh, so this does not leak the source embedding)
            rows = self.backbone.user_repr(self.eval_batch(users)).detach()
            anchor = (self.task_vector_batch(x) - rows).pow(2).sum(-1).mean()
            loss = loss + self.anchor_weight * anchor
            stats["train/meta_anchor"] = float(anchor.detach())
        return loss, stats

    def task_vector_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The start (no adaptation) of a batch of tasks: ``mapping(x)``."""
        return self.mapping(x)

    def param_groups(self) -> list[dict[str, Any]]:
        """FineTune's groups, with the meta-learnt parameters (mapping, step sizes) at ``meta_lr_scale``."""
        meta = {id(p) for p in [*self.mapping.parameters(), *self.log_lr.parameters()]}
        groups = []
        for g in super().param_groups():
            rest = [p for p in g["params"] if id(p) not in meta]
            if rest:
                groups.append({**g, "params": rest})
        base_lr = getattr(self.optimizer_factory, "keywords", {}).get("lr", 1e-3)
        groups.append({"params": [p for p in self.parameters() if id(p) in meta and p.requires_grad],
                       "lr": base_lr * self.meta_lr_scale})
        return groups

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        rec_batch, task = batch["rec"], batch["task"]
        rec = self.loss(self.backbone, rec_batch)
        meta, stats = self.meta_objective(task)
        total = self.rec_weight * rec + self.meta_weight * meta
        opt.zero_grad()
        self.manual_backward(total)
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None and self._sched_interval() == "step":
            sched.step()
        n = int(rec_batch["user"].shape[0])
        self.log("train/loss", total.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/rec_loss", rec.detach(), on_step=False, on_epoch=True, batch_size=n)
        self.log_dict(stats, on_step=False, on_epoch=True, batch_size=int(task["user"].shape[0]))
        return total.detach()

    def on_train_epoch_end(self) -> None:
        sched = self.lr_schedulers()
        if sched is not None and self._sched_interval() == "epoch":
            sched.step()

    def _sched_interval(self) -> str:
        per_step = getattr(getattr(self.scheduler_factory, "func", self.scheduler_factory), "wants_total_steps", False)
        return "step" if per_step else "epoch"

    # ----- k-shot: the meta-learned inner loop -----
    def kshot_adapter(self, ctx: RunContext) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        def adapter(users: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                item_reprs = self.backbone.item_repr()
            x = self.src_user.to(users.device)[users]
            with torch.enable_grad():
                w = torch.ones(support.shape, device=support.device)
                fast = self.adapt(x, support, w, item_reprs, first_order=True, detach_init=True)
            with torch.no_grad():
                z = vmap(self.task_vector, in_dims=(0, 0, None))(fast, x, self._slow_map(detach=True))
                # users without a source history (none in the cold cohort) keep their target vector
                own = ~self.src_user_mask(users)
                if own.any():
                    z[own] = self.backbone.user_repr(self.eval_batch(users[own]))
                return self.backbone.score(z, item_reprs)

        return adapter

    def src_user_mask(self, users: torch.Tensor) -> torch.Tensor:
        return self.src_user.to(users.device)[users].abs().sum(-1) > 0
