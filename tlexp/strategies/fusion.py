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
Source user representations are trainable (learning rate × ``transfer.lr_scale``, as in
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
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlexp.core.errors import ConfigError
from tlexp.data.scenario import Scenario
from tlexp.evaluation.kshot import Adapter, gradient_step_adapter
from tlexp.evaluation.plan import Candidate
from tlexp.models.base import Backbone, query_users
from tlexp.models.recommender import Recommender, ScoreFn
from tlexp.strategies.base import Built, Need, SourceModel, Strategy, StrategyInputs
from tlexp.training.module import LossObjective, Objective, TrainingModule
from tlexp.training.transfer import TransferSettings, transfer_weights

MODES = ("concat", "weighted", "gate", "ensemble")


@dataclass(frozen=True)
class FusionSpec:
    sources: tuple[str, ...] = ("ecommerce", "news", "social", "video")  # conf/domain names
    mode: str = "gate"                                                    # concat | weighted | gate | ensemble
    ensemble_grid: int = 10                                               # simplex grid step 1/ensemble_grid

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"strategy.fusion.mode '{self.mode}' is unknown; use one of {list(MODES)}")


@dataclass(frozen=True)
class FusionSettings:
    fusion: FusionSpec = field(default_factory=FusionSpec)


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
        for attr in ("needs_history", "max_seq_len", "pad_token", "bos_token", "mask_token", "batch_size"):
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

    def score_factors(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.score_factors(users, items)

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


class EnsembleRecommender(Recommender):
    """One backbone per source; scores are per-user z-scores weighted by ``weights`` (fitted on validation)."""

    def __init__(self, backbone: Backbone, members: list[Backbone]):
        super().__init__(backbone)
        self.members = nn.ModuleList(members)      # the models of sources 2..S (source 1's is self.backbone)
        n = 1 + len(members)
        self.register_buffer("weights", torch.full((n,), 1.0 / n))

    def all_members(self) -> list[Backbone]:
        return [self.backbone, *self.members]

    def score_fn(self, split: str = "test", weights: torch.Tensor | None = None) -> ScoreFn:
        members = self.all_members()
        w = (self.weights if weights is None else weights).to(self.device)
        items = [m.item_repr() for m in members]

        def score(users: torch.Tensor) -> torch.Tensor:
            out = None
            for m, it, wm in zip(members, items, w, strict=True):
                z = standardise(m.score(m.user_repr(self.eval_batch(users, split)), it)) * wm
                out = z if out is None else out + z
            return out
        return score

    def kshot_adapter(self, steps: int = 0, lr: float = 0.1) -> Adapter:
        """Every member adapts on the support as the baseline does; their z-scores are weighted."""
        adapters = [gradient_step_adapter(m, lambda u, m=m: m.user_repr(self.eval_batch(u, "test")), steps, lr)
                    for m in self.all_members()]
        pairs = list(zip(adapters, self.weights.tolist(), strict=True))
        return lambda users, support: sum(w * standardise(a(users, support)) for a, w in pairs)


class EnsembleObjective(LossObjective):
    """Each member's own loss on the batch, summed: the members train side by side, independently."""

    def step(self, module: TrainingModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = sum(self.loss(m, batch) for m in module.model.all_members())
        module.log_train("train/loss", loss, batch_size=batch["user"].shape[0], prog_bar=True)
        return loss


class Fusion(Strategy):
    """Transfer from several source domains at once (see the module docstring for the modes)."""

    Settings = FusionSettings
    uses_transfer = True
    uses_source = True

    def source_names(self, scenario: Scenario) -> list[str]:
        target = scenario.target.name
        names = [n for n in dict.fromkeys(self.settings.fusion.sources) if n != target]
        if not names:
            raise ConfigError("strategy=fusion needs at least one source domain other than the target "
                              f"'{target}'; set e.g. strategy.fusion.sources=[news,social]")
        return names

    def needs(self, scenario: Scenario) -> list[Need]:
        return [SourceModel(key=name, domain=name, tag=f"pretrain_{name}", require_shared=True)
                for name in self.source_names(scenario)]

    # ----- building -----
    def build(self, inputs: StrategyInputs) -> Built:
        names = self.source_names(inputs.scenario)
        skipped = [n for n in self.settings.fusion.sources if n == inputs.target.name]
        if skipped:
            inputs.log.log_params({"fusion.skipped": ",".join(skipped)})
        sources = []
        for name in names:
            trained = inputs.models[name]
            sources.append((name, trained.backbone, inputs.user_map(trained.domain), inputs.item_map(trained.domain)))
        self.used_sources = names
        mode = self.settings.fusion.mode
        inputs.log.log_params({"fusion.sources": ",".join(names), "fusion.mode": mode})
        inputs.log.log_metrics({f"fusion/users_{n}": float((um >= 0).float().mean()) for n, _, um, _ in sources})
        scales: dict[str, float] = {}
        if mode == "ensemble":
            model = self._ensemble(inputs, sources, scales)
            objective: Objective = EnsembleObjective(inputs.make_loss())
        else:
            model = self._fused(inputs.backbone, sources, scales)
            objective = LossObjective(inputs.make_loss())
        inputs.log.log_params({"params_fusion": sum(p.numel() for p in model.parameters() if p.requires_grad)})
        return Built(model, objective, inputs.pairs(), scales)

    def _transfer(self, backbone: Backbone, source: Backbone, user_map: torch.Tensor,
                  item_map: torch.Tensor) -> list[str]:
        # fusion transfers without freezing anything
        settings = TransferSettings(self.transfer.carry_user_embeddings, self.transfer.init_new_users, (),
                                    self.transfer.lr_scale)
        return transfer_weights(backbone, source, user_map, item_map, settings)

    def _ensemble(self, inputs: StrategyInputs, sources: list, scales: dict[str, float]) -> EnsembleRecommender:
        _, src0, um0, im0 = sources[0]
        moved = [f"backbone.{n}" for n in self._transfer(inputs.backbone, src0, um0, im0)]  # = finetune from source 1
        members = []
        for i, (_, src, um, im) in enumerate(sources[1:]):
            member = inputs.build_backbone()
            moved += [f"members.{i}.{n}" for n in self._transfer(member, src, um, im)]
            members.append(member)
        scales.update({n: self.transfer.lr_scale for n in moved})
        return EnsembleRecommender(inputs.backbone, members)

    def _fused(self, base: Backbone, sources: list, scales: dict[str, float]) -> Recommender:
        _, src0, _, im0 = sources[0]
        moved = self._transfer(base, src0, torch.full((base.n_users,), -1, dtype=torch.long), im0)
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
        head = FusionHead(tables, have, dim, self.settings.fusion.mode)
        scales.update({f"backbone.base.{n}": self.transfer.lr_scale for n in moved})
        scales.update({f"backbone.head.tables.{i}": self.transfer.lr_scale for i in range(len(tables))})
        return Recommender(FusedBackbone(base, head))

    # ----- after training -----
    def candidates(self, built: Built) -> list[Candidate]:
        """Ensemble: the per-source weights, on a simplex grid, to be chosen on validation."""
        model = built.model
        if not isinstance(model, EnsembleRecommender) or len(model.all_members()) == 1:
            return []
        out = []
        for w in simplex_grid(len(model.all_members()), self.settings.fusion.ensemble_grid):
            wt = torch.tensor(w)
            label = ",".join(f"{x:.2f}" for x in w)
            out.append(Candidate(label, lambda wt=wt: model.weights.copy_(wt.to(model.weights)),
                                 {"fusion.ensemble_weights": label}))
        return out

    def report(self, built: Built, inputs: StrategyInputs) -> dict[str, float]:
        """The learnt source weights (weighted, ensemble) or mean gate values (gate), per source."""
        names, model, mode = self.used_sources, built.model, self.settings.fusion.mode
        if mode == "ensemble":
            return {f"fusion/weight_{n}": float(w) for n, w in zip(names, model.weights.tolist(), strict=True)}
        head = model.backbone.head
        if mode == "weighted":
            alpha = F.softmax(head.logits.detach().cpu(), 0)
            return {f"fusion/weight_{n}": float(a) for n, a in zip(names, alpha, strict=True)}
        if mode == "gate":
            users = torch.arange(inputs.target.n_users, device=model.device)
            with torch.no_grad():
                g = torch.cat([head.weights(users[i: i + 4096]) for i in range(0, users.numel(), 4096)]).cpu()
            out = {f"fusion/gate_{n}": float(g[:, s].mean()) for s, n in enumerate(names)}
            cold = torch.tensor(np.asarray(inputs.target.cold_users, dtype=np.int64))
            if cold.numel():
                out.update({f"fusion/gate_cold_{n}": float(g[cold, s].mean()) for s, n in enumerate(names)})
            return out
        return {}

