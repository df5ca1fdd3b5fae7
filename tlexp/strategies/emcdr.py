"""``emcdr``: embedding and mapping (Man et al., IJCAI 2017), the classic cross-domain cold-start baseline.

1. a source backbone is trained on the source domain (the cached pretraining every transfer
   strategy shares) and a target backbone on the target domain, independently (the training loop,
   exactly like ``scratch``);
2. a mapping ``f`` (linear or MLP, :class:`~tlexp.models.mapping.Mapping`) is fitted on the
   **overlap users that have target training data**: ``f(source representation) ≈ target
   representation`` (MSE), with a held-out tenth of them for early stopping;
3. cold-start users — overlap users with no target history — are scored with their mapped source
   representation ``f(s_u)``; everyone else with the target backbone as trained.

Mapping happens at the level of user *representations* (``Backbone.user_repr``), so it works for
any backbone whose users have a source representation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tlexp.core.errors import ConfigError
from tlexp.data.scenario import Scenario
from tlexp.models.mapping import MappedColdUsers, Mapping, fit_mapping, source_user_reprs
from tlexp.strategies.base import Built, Need, SourceModel, Strategy, StrategyInputs
from tlexp.training.module import LossObjective


@dataclass(frozen=True)
class EMCDRSettings:
    mapping: str = "linear"              # linear | mlp
    hidden: tuple[int, ...] = field(default_factory=lambda: (128,))
    map_epochs: int = 300
    map_lr: float = 0.01
    map_weight_decay: float = 0.0
    map_batch_size: int = 512
    map_val_share: float = 0.1
    map_patience: int = 20


class EMCDR(Strategy):
    """Target backbone trained alone; cold-start users scored with mapped source representations."""

    Settings = EMCDRSettings
    requires_overlap = True
    uses_source = True
    fresh_rng_after_stages = False  # the target model trains exactly as scratch does with the same seed

    def needs(self, scenario: Scenario) -> list[Need]:
        return [SourceModel()]

    def build(self, inputs: StrategyInputs) -> Built:
        src_user, has_src = source_user_reprs(inputs.models["source"].backbone, inputs.user_map())
        has_train = MappedColdUsers.has_train_rows(inputs.target.train["user"].to_numpy(), inputs.target.n_users)
        self.train_overlap = torch.nonzero(has_src & has_train).squeeze(1)
        if self.train_overlap.numel() < 2:
            raise ConfigError(f"emcdr needs overlap users with target training data to learn its mapping; "
                              f"{inputs.source.name} -> {inputs.target.name} has {self.train_overlap.numel()} — "
                              "pick a scenario with shared users (tlexp data describe)")
        model = MappedColdUsers(inputs.backbone, src_user, has_src, has_train)
        inputs.log.log_params({"emcdr.train_overlap_users": int(self.train_overlap.numel()),
                               "emcdr.mapped_users": int(model.use_mapped.sum())})
        return Built(model, LossObjective(inputs.make_loss()), inputs.pairs())

    def after_fit(self, built: Built, inputs: StrategyInputs) -> None:
        """Learn the mapping on overlap training users, from the best target backbone."""
        model: MappedColdUsers = built.model  # type: ignore[assignment]
        s = self.settings
        model.backbone.eval()
        users = self.train_overlap.to(model.device)
        with torch.no_grad():
            y = model.backbone.user_repr(model.eval_batch(users, "test")).detach().cpu()
        x = model.src_user[self.train_overlap.to(model.src_user.device)].cpu()
        inputs.reseed(1)
        mapping = Mapping(x.shape[1], y.shape[1], s.mapping, s.hidden)
        stats = fit_mapping(mapping, x, y, epochs=s.map_epochs, lr=s.map_lr, weight_decay=s.map_weight_decay,
                            batch_size=s.map_batch_size, val_share=s.map_val_share, patience=s.map_patience,
                            seed=inputs.seed)
        model.mapping = mapping.to(model.device)
        inputs.log.log_metrics({f"emcdr/{k}": v for k, v in stats.items()})
