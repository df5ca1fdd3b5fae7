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
(``rec_weight``), so warm users and items stay trained. Everything runs in one step of the training
loop (:mod:`tlexp.training.module`); under ``trainer=ddp`` the task and pair batches are sharded
across processes by Lightning's distributed sampler and the gradients are averaged as for any other
strategy.

At test time a cold-start user is scored with ``mapping(source representation)`` (``test_cold``)
and, under the k-shot protocol (``test_cold_k<k>``), after the same inner loop on their ``k``
support items. Warm users are scored by the target table as trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, Dataset

from tlexp.core.errors import ConfigError
from tlexp.data.datamodule import EvalTrigger, keep_batch
from tlexp.evaluation.kshot import Adapter, support_loss
from tlexp.models.base import Backbone
from tlexp.models.mapping import MappedColdUsers, Mapping, source_user_reprs
from tlexp.strategies.base import Built, FromSource, StrategyInputs
from tlexp.training.module import LossObjective, TrainingModule
from tlexp.training.transfer import lr_scales, transfer_weights

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


# ----- settings -----

@dataclass(frozen=True)
class MetaSettings:
    """``meta.*`` (conf/strategy/meta.yaml)."""

    algorithm: str = "maml"
    inner_steps: int = 3
    inner_lr: float = 0.1
    learn_inner_lr: bool = True
    inner_params: tuple[str, ...] | str = "auto"  # auto: [user] for maml/fomaml, [user, map] for reptile
    train_shots: tuple[int, ...] = (1, 3, 5)
    query_size: int = 10
    task_share: float = 0.5
    meta_items: bool = False
    meta_lr_scale: float = 1.0
    anchor_weight: float = 1.0
    task_batch_size: int = 64
    rec_weight: float = 1.0
    meta_weight: float = 1.0
    mapping: str = "linear"
    hidden: tuple[int, ...] = (128,)
    test_shots: tuple[int, ...] = (1, 3, 5)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"meta.algorithm '{self.algorithm}' is unknown; use one of {list(ALGORITHMS)}")
        params = self.inner_params
        if params == "auto" or list(params) == ["auto"]:
            # Reptile's outer step moves the start of what the inner loop adapted; an offset to the user
            # vector starts at zero for every task, so Reptile needs the mapping's weights among them
            params = ("user", "map") if self.algorithm == "reptile" else ("user",)
        elif isinstance(params, str):
            params = (params,)
        object.__setattr__(self, "inner_params", tuple(str(p) for p in params))
        bad = set(self.inner_params) - {"user", "map"}
        if bad or not self.inner_params:
            raise ConfigError(f"meta.inner_params {list(self.inner_params)}: use a non-empty subset of [user, map]")
        if self.algorithm == "reptile" and "map" not in self.inner_params:
            raise ConfigError("meta.algorithm=reptile meta-learns the weights its inner loop adapts: "
                              "add map to meta.inner_params (e.g. meta.inner_params=[user,map])")
        if not self.train_shots:
            raise ConfigError("meta.train_shots must name at least one support size, e.g. [1,3,5]")
        object.__setattr__(self, "train_shots", tuple(sorted(int(k) for k in self.train_shots)))


# ----- the model: cold users through a meta-learnt mapping and inner loop -----

class MetaRecommender(MappedColdUsers):
    """Cold-start users start from ``mapping(source representation)`` and adapt with the meta-learnt
    inner loop on their k support items; warm users are scored by the target backbone."""

    def __init__(self, backbone: Backbone, src_user: torch.Tensor, has_source: torch.Tensor, has_train: torch.Tensor,
                 mapping: Mapping, settings: MetaSettings):
        super().__init__(backbone, src_user, has_source, has_train, mapping)
        self.algorithm, self.inner_steps, self.inner_lr = settings.algorithm, settings.inner_steps, settings.inner_lr
        self.inner_params = list(settings.inner_params)
        # Meta-SGD (Li et al. 2017): one learnt step size per fast weight; Reptile has no outer
        # gradient for it, so it keeps the fixed one.
        self.learn_inner_lr = bool(settings.learn_inner_lr) and settings.algorithm != "reptile"
        self.log_lr = nn.ParameterDict()
        if self.learn_inner_lr:
            for name, value in self.init_fast(1, detach=True).items():
                self.log_lr[name.replace(".", "__")] = nn.Parameter(
                    torch.full(value.shape[1:], float(np.log(self.inner_lr))))

    def meta_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.startswith(("mapping.", "log_lr."))]

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

    # ----- k-shot: the meta-learned inner loop -----
    def kshot_adapter(self, steps: int = 0, lr: float = 0.1) -> Adapter:
        """The meta-learned inner loop on the support set (its own steps and step sizes; ``steps``/``lr``
        of the baseline adapter do not apply)."""
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


# ----- the objective -----

class MetaObjective(LossObjective):
    """The plain target loss (``rec_weight``) plus the meta objective over a batch of tasks (``meta_weight``)."""

    def __init__(self, loss: nn.Module, settings: MetaSettings):
        super().__init__(loss)
        self.train_shots = list(settings.train_shots)
        self.meta_items, self.anchor_weight = bool(settings.meta_items), float(settings.anchor_weight)
        self.rec_weight, self.meta_weight = float(settings.rec_weight), float(settings.meta_weight)

    def meta_objective(self, model: MetaRecommender,
                       task: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The outer loss of one meta-batch (MAML/FOMAML: query loss after adaptation; Reptile: pull)."""
        users, seq = task["user"], task["seq"]
        k = self.train_shots[int(torch.randint(len(self.train_shots), (1,)))]
        x = model.src_user[users]
        item_reprs = model.backbone.item_repr()
        if not self.meta_items:  # the item side learns from the plain loss only
            item_reprs = item_reprs.detach()
        support, sw = seq[:, :k], torch.ones(seq.shape[0], k, device=seq.device)
        query = seq[:, self.train_shots[-1]:]
        qw = (query >= 0).float()
        query = query.clamp(min=0)
        slow = model._slow_map(detach=False)
        per_task = vmap(model.task_loss, in_dims=(0, 0, 0, 0, None, None))
        if model.algorithm == "reptile":
            items, w = seq.clamp(min=0), (seq >= 0).float()
            adapted = model.adapt(x, items, w, item_reprs, first_order=True, detach_init=True)
            init = {f"map.{n}": p for n, p in model.mapping.named_parameters()}
            loss = reptile_loss(init, adapted)
            with torch.no_grad():
                q_loss = per_task(adapted, x, query, qw, item_reprs, slow).mean()
        else:
            adapted = model.adapt(x, support, sw, item_reprs, first_order=model.algorithm == "fomaml")
            loss = q_loss = per_task(adapted, x, query, qw, item_reprs, slow).mean()
        with torch.no_grad():
            before = per_task(model.init_fast(x.shape[0], detach=True), x, query, qw, item_reprs.detach(),
                              model._slow_map(detach=True)).mean()
        stats = {"train/meta_query_loss": float(q_loss.detach()), "train/meta_query_loss_before": float(before)}
        if model.learn_inner_lr:
            lrs = torch.cat([v.detach().exp().flatten() for v in model.log_lr.values()])
            stats["train/meta_inner_lr"] = float(lrs.mean())
        if self.anchor_weight:
            # EMCDR-style anchor: the start should also be close to the user's own target row
            # (detached; task users' rows are fresh, so this does not leak the source embedding)
            rows = model.backbone.user_repr(model.eval_batch(users)).detach()
            anchor = (model.mapping(x) - rows).pow(2).sum(-1).mean()
            loss = loss + self.anchor_weight * anchor
            stats["train/meta_anchor"] = float(anchor.detach())
        return loss, stats

    def step(self, module: TrainingModule, batch: dict[str, Any]) -> torch.Tensor:
        model = module.model
        rec_batch, task = batch["rec"], batch["task"]
        rec = self.loss(model.backbone, rec_batch)
        meta, stats = self.meta_objective(model, task)
        total = self.rec_weight * rec + self.meta_weight * meta
        n = int(rec_batch["user"].shape[0])
        module.log_train("train/loss", total.detach(), batch_size=n, prog_bar=True)
        module.log_train("train/rec_loss", rec.detach(), batch_size=n)
        for name, value in stats.items():
            module.log_train(name, value, batch_size=int(task["user"].shape[0]))
        return total


# ----- the strategy -----

class Meta(FromSource):
    """MAML / FOMAML / Reptile over per-user tasks, from the source-pretrained backbone."""

    Settings = MetaSettings
    settings_node = "meta"
    def kshot_shots(self) -> list[int]:
        return [int(k) for k in self.settings.test_shots]

    def build(self, inputs: StrategyInputs) -> Built:
        s = self.settings
        pre = inputs.models["source"].backbone
        src_user, has_src = source_user_reprs(pre, inputs.user_map())
        target = inputs.target
        has_train = MappedColdUsers.has_train_rows(target.train["user"].to_numpy(), target.n_users)
        counts = np.bincount(target.train["user"].to_numpy(), minlength=target.n_users)
        eligible = np.flatnonzero(has_src.numpy() & (counts > s.train_shots[-1]))
        n_tasks = int(round(s.task_share * eligible.size))
        if n_tasks == 0:
            raise ConfigError(f"meta needs overlap users with more than {s.train_shots[-1]} target training "
                              f"interactions to build tasks; {inputs.source.name} -> {target.name} has "
                              f"{eligible.size} (meta.task_share={s.task_share}) — lower meta.train_shots, raise "
                              "meta.task_share or pick a scenario with shared users")
        users = np.sort(np.random.default_rng(inputs.seed).choice(eligible, n_tasks, replace=False))
        # Task users do not carry their source embedding into the target table: the plain loss fits
        # the item side to their table rows, and with rows equal to the source embedding that the
        # meta path starts from, their query items would be fitted to exactly that start — in-sample
        # tasks far easier than a cold-start user's, which misleads the outer loop.
        user_map = inputs.user_map().clone()
        user_map[torch.from_numpy(users)] = -1
        backbone = inputs.backbone
        moved = transfer_weights(backbone, pre, user_map, inputs.item_map(), self.transfer)
        with torch.no_grad():
            d_t = backbone.user_repr({"user": torch.zeros(1, dtype=torch.long), "split": "test"}).shape[-1]
        mapping = Mapping(src_user.shape[1], d_t, s.mapping, s.hidden)
        model = MetaRecommender(backbone, src_user, has_src, has_train, mapping, s)
        tasks = task_dataset(target.train, users, s.train_shots[-1], s.query_size)
        inputs.log.log_params({"transfer.moved": ",".join(moved), "meta.tasks": int(users.size),
                               "meta.eligible_users": int(eligible.size),
                               "meta.mapped_users": int(model.use_mapped.sum())})
        scales = lr_scales(moved, self.transfer.lr_scale)
        scales.update({n: s.meta_lr_scale for n in model.meta_parameter_names()})
        data = MetaDataModule(inputs.pairs(), tasks, s.task_batch_size)
        return Built(model, MetaObjective(inputs.make_loss(), s), data, scales)
