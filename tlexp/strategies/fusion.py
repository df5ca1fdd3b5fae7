"""``fusion``: knowledge from several source domains at once, fused for the target.

One model is pretrained per source domain (``strategy.fusion.sources``, names from
``conf/domain``; each cached like any pretraining, so it is shared with ``finetune`` runs of the
same source), then fused by ``strategy.fusion.mode``:

- ``concat`` — each source's user representation (for the target users it knows; zeros
  elsewhere) is concatenated and mapped by a trainable head into the target model's space.
- ``weighted`` — one learnt softmax weight per source: Σ_s α_s · A_s(source_s(user)).
- ``gate`` — an attention gate weighs the sources *per user* (a softmax over the sources that
  know the user, computed from their adapted representations).
- ``ensemble`` — one copy of the backbone per source, each fine-tuned on the target like
  ``strategy=finetune`` (trained side by side); the ranking uses Σ_s w_s · z_s, where z_s is
  model s's scores standardised per user, and the weights w are fitted on the validation split
  (grid over the simplex) after training.

For ``concat``/``weighted``/``gate`` a user's target representation is the target backbone's own
user representation plus the fused source part. The own ID embedding starts at zero (ID
backbones), towers and shared items come from the first source: a cold-start user — no target
rows — is represented by what the sources know of them, and a warm user learns a residual on top.
Source user representations are trainable (learning rate × ``transfer_lr_scale``, as in
``finetune``); adapters A_s start as the identity when dimensions match.

``ensemble`` with a single source *is* ``finetune`` from that source (same initialisation, same
random stream, same selection): ``strategy.fusion.sources=[social] strategy.fusion.mode=ensemble``
is how to get "finetune from social" on the same target split (whose cold-start users are chosen
among the overlap with the run's ``source``), which is the fair single-source baseline.

Logged: ``fusion/weight_<source>`` (weighted, ensemble); ``fusion/gate_<source>`` and
``fusion/gate_cold_<source>`` (gate: the mean gate value over all target users / over cold-start
users, counting 0 where a source does not know the user); ``fusion/users_<source>`` (the share of
target users each source knows).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tlexp.context import RunContext
from tlexp.errors import ConfigError
from tlexp.evaluation.evaluator import evaluate
from tlexp.models.base import Backbone
from tlexp.strategies.base import RecStrategy
from tlexp.strategies.distill import query_users

MODES = ("concat", "weighted", "gate", "ensemble")


class FusionHead(nn.Module):
    """Source user representations for the target users, fused into one (B, d) vector per user."""

    def __init__(self, tables: list[torch.Tensor], have: list[torch.Tensor], dim: int, mode: str):
        super().__init__()
        self.mode = mode
        self.n_sources = len(tables)
        self.tables = nn.ParameterList([nn.Parameter(t.clone()) for t in tables])
        self.register_buffer("have", torch.stack(have, 1).float())            # (n_users, S)
        dims = [t.shape[1] for t in tables]
        if mode == "concat":
            self.head = nn.Linear(sum(dims), dim)
            with torch.no_grad():  # start as the average of the sources (identity blocks / S)
                self.head.weight.zero_()
                self.head.bias.zero_()
                col = 0
                for d in dims:
                    if d == dim:
                        self.head.weight[:, col: col + d] = torch.eye(dim) / len(dims)
                    else:
                        nn.init.xavier_uniform_(self.head.weight[:, col: col + d])
                    col += d
            return
        self.adapters = nn.ModuleList([_identity_linear(d, dim) for d in dims])
        if mode == "weighted":
            self.logits = nn.Parameter(torch.zeros(len(tables)))
        elif mode == "gate":
            self.gate = nn.Linear(dim * len(tables), len(tables))
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)

    def source_reprs(self, users: torch.Tensor) -> torch.Tensor:
        """(B, S, d) adapted source representations, zero where a source does not know the user."""
        have = self.have[users]
        reps = [a(t[users]) for a, t in zip(self.adapters, self.tables, strict=True)]
        return torch.stack(reps, 1) * have.unsqueeze(-1)

    def weights(self, users: torch.Tensor) -> torch.Tensor:
        """(B, S) how much each source contributes to each user (weighted: α; gate: per-user gate)."""
        have = self.have[users]
        if self.mode == "weighted":
            return F.softmax(self.logits, 0).expand_as(have) * have
        if self.mode == "gate":
            z = self.source_reprs(users).flatten(1)
            logits = self.gate(z).masked_fill(have == 0, torch.finfo(z.dtype).min)
            return F.softmax(logits, -1) * have  # users no source knows: all zero
        raise ValueError(f"mode {self.mode} has no per-source weights")

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        if self.mode == "concat":
            have = self.have[users]
            return self.head(torch.cat([t[users] * have[:, s: s + 1] for s, t in enumerate(self.tables)], 1))
        return (self.weights(users).unsqueeze(-1) * self.source_reprs(users)).sum(1)


def _identity_linear(d_in: int, d_out: int) -> nn.Linear:
    lin = nn.Linear(d_in, d_out)
    with torch.no_grad():
        if d_in == d_out:
            lin.weight.copy_(torch.eye(d_out))
        lin.bias.zero_()
    return lin


class FusedBackbone(Backbone):
    """The target backbone with the fused source part added to its user representation."""

    def __init__(self, base: Backbone, head: FusionHead):
        super().__init__()
        self.base, self.head = base, head
        self.n_users, self.n_items, self.name = base.n_users, base.n_items, f"fusion_{base.name}"
        for attr in ("needs_history", "max_seq_len", "pad_token", "bos_token", "batch_size"):
            if hasattr(base, attr):  # plain values saying how the base wants its training data
                setattr(self, attr, getattr(base, attr))

    def user_repr(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.base.user_repr(batch) + self.head(batch["user"])

    def training_pairs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The base's training queries (per pair, or per sequence position) plus their user's fused part."""
        q, items = self.base.training_pairs(batch)
        return q + self.head(query_users(batch, q.shape[0])), items

    def item_repr(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.base.item_repr(items)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.base.score(users, items)

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.base.score_pairs(users, items)


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Per-user z-scores over all items: puts models with different score scales on one footing."""
    mean = scores.mean(-1, keepdim=True)
    std = scores.std(-1, keepdim=True).clamp_min(1e-8)
    return (scores - mean) / std


def simplex_grid(n: int, steps: int) -> list[tuple[float, ...]]:
    """All weight vectors of length ``n`` with entries in {0, 1/steps, ..., 1} summing to 1."""
    if n == 1:
        return [(1.0,)]
    return [tuple(c / steps for c in combo) for combo in itertools.product(range(steps + 1), repeat=n)
            if sum(combo) == steps]


class Fusion(RecStrategy):
    """Transfer from several source domains at once (see the module docstring for the modes)."""

    requires_source = True

    def __init__(self, *args: Any, fusion: DictConfig | dict, carry_user_embeddings: bool = True,
                 init_new_users: str = "mean", transfer_lr_scale: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        spec = OmegaConf.to_container(fusion, resolve=True) if isinstance(fusion, DictConfig) else dict(fusion)
        self.mode = str(spec.get("mode", "gate"))
        if self.mode not in MODES:
            raise ConfigError(f"strategy.fusion.mode '{self.mode}' is unknown; use one of {list(MODES)}")
        self.source_names = [str(s) for s in (spec.get("sources") or [])]
        self.ensemble_grid = int(spec.get("ensemble_grid", 10))
        self.carry_user_embeddings = carry_user_embeddings
        self.init_new_users = init_new_users
        self.transfer_lr_scale = transfer_lr_scale
        self.members = nn.ModuleList()      # ensemble: the models of sources 2..S (source 1's is self.backbone)
        self.register_buffer("ens_weights", torch.ones(1))
        self._transferred: set[int] = set()  # ids of parameters that carry source knowledge (lr scaled)
        self.used_sources: list[str] = []

    # ----- preparation -----
    def prepare(self, ctx: RunContext) -> None:
        names = [n for n in dict.fromkeys(self.source_names) if n != ctx.target.name]
        skipped = [n for n in self.source_names if n == ctx.target.name]
        if skipped:
            ctx.log_params({"fusion.skipped": ",".join(skipped)})
        if not names:
            raise ConfigError("strategy=fusion needs at least one source domain other than the target "
                              f"'{ctx.target.name}'; set e.g. strategy.fusion.sources=[news,social]")
        sources = []
        for name in names:
            data, fp = ctx.domain_data(name)
            user_map, item_map = ctx.user_map(data), ctx.item_map(data)
            if not bool((user_map >= 0).any()) and not bool((item_map >= 0).any()):
                raise ConfigError(f"fusion source '{name}' shares no users and no items with the target "
                                  f"'{ctx.target.name}': nothing can transfer; pick sources of the same dataset "
                                  "in strategy.fusion.sources")
            pre = ctx.pretrained_on(data, fp, tag=f"pretrain_{name}")
            sources.append((name, pre.backbone, user_map, item_map))
        self.used_sources = names
        ctx.reseed()  # cache hits or misses above: the same random state from here on
        ctx.log_params({"fusion.sources": ",".join(names), "fusion.mode": self.mode})
        ctx.log_metrics({f"fusion/users_{n}": float((um >= 0).float().mean()) for n, _, um, _ in sources})
        if self.mode == "ensemble":
            self._prepare_ensemble(ctx, sources)
        else:
            self._prepare_fused(sources)
        ctx.log_params({"params_fusion": sum(p.numel() for p in self.parameters() if p.requires_grad)})

    def _transfer(self, backbone: Backbone, source: Backbone, user_map: torch.Tensor, item_map: torch.Tensor) -> None:
        if not self.carry_user_embeddings:
            user_map = torch.full_like(user_map, -1)
        moved = set(backbone.transfer_from(source, user_map, item_map, self.init_new_users))
        self._transferred |= {id(p) for n, p in backbone.named_parameters() if n in moved}

    def _prepare_ensemble(self, ctx: RunContext, sources: list) -> None:
        _, src0, um0, im0 = sources[0]
        self._transfer(self.backbone, src0, um0, im0)   # exactly what finetune does with one source
        for _, src, um, im in sources[1:]:
            member = ctx.build_backbone()
            self._transfer(member, src, um, im)
            self.members.append(member)
        self.ens_weights = torch.full((len(sources),), 1.0 / len(sources))

    def _prepare_fused(self, sources: list) -> None:
        base = self.backbone
        _, src0, _, im0 = sources[0]
        self._transfer(base, src0, torch.full((base.n_users,), -1, dtype=torch.long), im0)
        own = getattr(base, "user_emb", None)
        if isinstance(own, nn.Embedding):  # the fused sources are where a user starts from
            with torch.no_grad():
                own.weight.zero_()
        with torch.no_grad():
            dim = base.user_repr({"user": torch.zeros(1, dtype=torch.long)}).shape[-1]
        tables, have = [], []
        for _, src, um, _ in sources:
            src.eval()
            known = um >= 0
            with torch.no_grad():
                rep = src.user_repr({"user": um.clamp_min(0)})
            tables.append(rep * known.unsqueeze(1).to(rep))
            have.append(known)
        head = FusionHead(tables, have, dim, self.mode)
        self._transferred |= {id(p) for p in head.tables}
        self.backbone = FusedBackbone(base, head)

    # ----- training -----
    def all_members(self) -> list[Backbone]:
        return [self.backbone, *self.members]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.mode != "ensemble":
            return super().training_step(batch, batch_idx)
        loss = sum(self.loss(m, batch) for m in self.all_members())
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch["user"].shape[0])
        return loss

    def param_groups(self) -> list[dict[str, Any]]:
        moved, fresh = [], []
        for p in self.parameters():
            if p.requires_grad:
                (moved if id(p) in self._transferred else fresh).append(p)
        groups = [{"params": fresh}]
        if moved:
            base_lr = getattr(self.optimizer_factory, "keywords", {}).get("lr", 1e-3)
            groups.append({"params": moved, "lr": base_lr * self.transfer_lr_scale})
        return groups

    # ----- scoring -----
    def score_fn(self, split: str = "test",
                 weights: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.mode != "ensemble":
            return super().score_fn(split)
        members = self.all_members()
        w = (self.ens_weights if weights is None else weights).to(self.device)
        items = [m.item_repr() for m in members]

        def score(users: torch.Tensor) -> torch.Tensor:
            out = None
            for m, it, wm in zip(members, items, w, strict=True):
                z = standardise(m.score(m.user_repr(self.eval_batch(users, split)), it)) * wm
                out = z if out is None else out + z
            return out
        return score

    def kshot_adapter(self, ctx: RunContext) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Ensemble: every member adapts on the support as the baseline does; their z-scores are weighted."""
        if self.mode != "ensemble":
            return super().kshot_adapter(ctx)
        from tlexp.evaluation.kshot import gradient_step_adapter, kshot_config

        conf = kshot_config(ctx.cfg)
        adapters = [gradient_step_adapter(m, lambda u, m=m: m.user_repr(self.eval_batch(u, "test")),
                                          conf.adapt_steps, conf.adapt_lr) for m in self.all_members()]
        weights = self.ens_weights.tolist()
        pairs = list(zip(adapters, weights, strict=True))
        return lambda users, support: sum(w * standardise(a(users, support)) for a, w in pairs)

    def after_fit(self, ctx: RunContext) -> None:
        """Ensemble: fit the per-source weights on the validation split (best ``eval.monitor``)."""
        if self.mode != "ensemble" or len(self.all_members()) == 1 or self.val_set is None:
            return
        monitor = str(ctx.cfg.eval.monitor)
        self.eval()
        best, best_w = -1.0, None
        with torch.no_grad():
            for w in simplex_grid(len(self.all_members()), self.ensemble_grid):
                wt = torch.tensor(w)
                value = evaluate(self.val_set, self.score_fn("val", wt), self.ks, self.eval_batch_size,
                                 device=self.device).get(monitor, -1.0)
                if value > best:
                    best, best_w = value, wt
        self.ens_weights = best_w.to(self.ens_weights)
        ctx.log_params({"fusion.ensemble_weights": ",".join(f"{x:.2f}" for x in best_w.tolist())})

    def extra_metrics(self, ctx: RunContext) -> dict[str, float]:
        """The learnt source weights (weighted, ensemble) or mean gate values (gate), per source."""
        return {**super().extra_metrics(ctx), **self.source_weights(ctx)}

    def source_weights(self, ctx: RunContext) -> dict[str, float]:
        names = self.used_sources
        if self.mode == "ensemble":
            return {f"fusion/weight_{n}": float(w) for n, w in zip(names, self.ens_weights.tolist(), strict=True)}
        if self.mode == "weighted":
            alpha = F.softmax(self.backbone.head.logits.detach().cpu(), 0)
            return {f"fusion/weight_{n}": float(a) for n, a in zip(names, alpha, strict=True)}
        if self.mode == "gate":
            head = self.backbone.head
            users = torch.arange(ctx.target.n_users, device=self.device)
            with torch.no_grad():
                g = torch.cat([head.weights(users[i: i + 4096]) for i in range(0, users.numel(), 4096)]).cpu()
            out = {f"fusion/gate_{n}": float(g[:, s].mean()) for s, n in enumerate(names)}
            cold = torch.tensor(np.asarray(ctx.target.cold_users, dtype=np.int64))
            if cold.numel():
                out.update({f"fusion/gate_cold_{n}": float(g[cold, s].mean()) for s, n in enumerate(names)})
            return out
        return {}
