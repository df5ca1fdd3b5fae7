"""The strategy contract: what a strategy declares, what it is given, and the hooks it may fill in.

A strategy says how knowledge moves from source to target. It never reads the run's config, files
or caches, and never evaluates: it *declares* what it needs, as data —

* :class:`SourceModel` — a backbone pretrained on a source domain (the scenario's source, or any
  ``conf/domain`` by name), and
* :class:`Teacher` — a backbone pretrained on the source and fine-tuned on the target —

and the pipeline trains (or fetches from the cache) each of them, then calls :meth:`Strategy.build`
with typed :class:`StrategyInputs`: the scenario, the target backbone, the trained models by key,
the run's seed and batch settings, a loss factory and a narrow logging handle. ``build`` returns a
:class:`Built`: the recommender to train and evaluate, the objective to train it by (the one
training loop in :mod:`tlexp.training.module` runs it), the training data and per-parameter
learning-rate scales. Hooks after that (:meth:`Strategy.after_fit`, :meth:`Strategy.candidates`,
:meth:`Strategy.extra_scorers`, :meth:`Strategy.report`) let a strategy finish its model, offer
choices to be made on validation, and name what else should be evaluated — the pipeline does the
evaluating. Settings are a dataclass (``Settings``) that the pipeline fills from the strategy's
config node and type-checks. docs/architecture.md walks through adding one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning.pytorch as pl
import pandas as pd
import torch
from torch import nn

from tlexp.data.augment import AugmentSettings
from tlexp.data.datamodule import datamodule_for
from tlexp.data.scenario import DomainData, Scenario
from tlexp.evaluation.plan import Candidate
from tlexp.models.base import Backbone
from tlexp.models.recommender import Recommender
from tlexp.tracking.run import RunLog
from tlexp.training.module import Objective
from tlexp.training.pretraining import Pretrained, TeacherSettings
from tlexp.training.transfer import TransferSettings


# ----- what a strategy may declare -----
@dataclass(frozen=True)
class SourceModel:
    """A backbone pretrained on a source domain (cached), given to ``build`` as ``inputs.models[key]``.

    ``domain``: None for the scenario's source, else a ``conf/domain`` name (split like the run's
    source). ``backbone``: None for the run's backbone, else a backbone config node. ``tag`` names
    it in the run (``<tag>_cache`` hit/miss, ``<tag>/val_ndcg_at_10``). ``require_shared``: fail
    before pretraining when the domain shares no user and no item with the target. ``reweight``:
    pretrain on source pairs importance-resampled towards the target (as ``pretrain.reweight=true``).
    """

    key: str = "source"
    domain: str | None = None
    backbone: Any = None
    tag: str = "pretrain"
    require_shared: bool = False
    reweight: bool = False


@dataclass(frozen=True)
class Teacher:
    """A backbone pretrained on the scenario's source, then fine-tuned on the target (both cached)."""

    backbone: Any
    settings: TeacherSettings
    key: str = "teacher"
    tag: str = "teacher"


Need = SourceModel | Teacher


@dataclass
class Trained:
    """A declared model, trained: the weights (loaded), how it was obtained, and the domain it came from."""

    model: Pretrained
    domain: DomainData

    @property
    def backbone(self) -> Backbone:
        return self.model.backbone


# ----- what a strategy is given -----
@dataclass
class StrategyInputs:
    scenario: Scenario
    backbone: Backbone                        # the target backbone, freshly built
    models: dict[str, Trained]                # the declared needs, trained, by key
    seed: int
    batch_size: int
    num_workers: int
    make_loss: Callable[[], nn.Module]        # a new instance of the run's loss
    build_backbone: Callable[[], Backbone]    # another target backbone like ``backbone`` (ensembles)
    log: RunLog                               # params / metrics / tags of the run (no-ops outside one)
    reseed: Callable[[int], None]             # reset every RNG to the run's seed + offset
    augment: AugmentSettings = field(default_factory=AugmentSettings)  # the target's training data

    @property
    def source(self) -> DomainData:
        return self.scenario.source

    @property
    def target(self) -> DomainData:
        return self.scenario.target

    def user_map(self, source: DomainData | None = None) -> torch.Tensor:
        """For each target user, its index in ``source`` (-1 if the user is not there)."""
        source = source if source is not None else self.source
        return torch.from_numpy(source.user_index(self.target.users)).long()

    def item_map(self, source: DomainData | None = None) -> torch.Tensor:
        """For each target item, its index in ``source`` (-1 if absent; domains rarely share items)."""
        source = source if source is not None else self.source
        return torch.from_numpy(pd.Index(source.items).get_indexer(self.target.items)).long()

    def pairs(self, backbone: Backbone | None = None) -> pl.LightningDataModule:
        """The target's training data as ``backbone`` learns it (pairs, or user sequences)."""
        return datamodule_for(self.target, backbone or self.backbone, self.batch_size, self.num_workers,
                              self.augment, self.seed)


@dataclass
class Built:
    """What a strategy hands to the training loop and the evaluation plan."""

    model: Recommender                                   # trained (if an objective is given), evaluated, served
    objective: Objective | None = None                   # None: nothing to train (e.g. popular)
    datamodule: pl.LightningDataModule | None = None     # the training data (None: nothing to train)
    lr_scales: dict[str, float] = field(default_factory=dict)  # model parameter name -> lr multiplier


@dataclass(frozen=True)
class NoSettings:
    """A strategy without knobs of its own."""


# ----- the contract -----
class Strategy:
    """Subclass, set ``Settings`` (a dataclass) and implement :meth:`build`; override the rest as needed."""

    Settings: ClassVar[type] = NoSettings
    settings_node: ClassVar[str] = "strategy"    # the config node holding the settings (meta: "meta")
    uses_transfer: ClassVar[bool] = False         # takes the `transfer` group (finetune and friends)
    trains: ClassVar[bool] = True                 # False: evaluated as built (popular)
    requires_overlap: ClassVar[bool] = False      # needs users present in both domains (a ConfigError if none)
    uses_source: ClassVar[bool] = False           # warn when no user is shared (only weights can transfer)
    # After its declared models are trained, the pipeline resets the RNGs once more before ``build``,
    # so that a cache hit and a miss leave the same random state. EMCDR opts out: its target model
    # must train exactly as ``scratch`` does with the same seed.
    fresh_rng_after_stages: ClassVar[bool] = True

    def __init__(self, name: str, settings: Any = None, transfer: TransferSettings | None = None):
        self.name = name
        self.settings = settings if settings is not None else self.Settings()
        self.transfer = transfer if transfer is not None else TransferSettings()

    def needs(self, scenario: Scenario) -> list[Need]:
        """The models to train before ``build`` (in this order). Default: none."""
        return []

    def backbone_spec(self) -> Any:
        """The config node of the target backbone; None = the run's ``backbone``."""
        return None

    def make_backbone(self, target: DomainData, build: Callable[[Any], Backbone]) -> Backbone:
        """The target backbone: ``build(self.backbone_spec())`` unless the strategy has its own (popular)."""
        return build(self.backbone_spec())

    def build(self, inputs: StrategyInputs) -> Built:
        raise NotImplementedError

    def after_fit(self, built: Built, inputs: StrategyInputs) -> None:
        """After the best checkpoint is restored, before evaluation (e.g. EMCDR fits its mapping)."""

    def candidates(self, built: Built) -> list[Candidate]:
        """Options to choose between on validation after training (the pipeline picks and applies one)."""
        return []

    def kshot_shots(self) -> list[int]:
        """k-shot segments to evaluate when ``eval.kshot.shots`` is empty. Default: none."""
        return []

    def extra_scorers(self, built: Built) -> dict[str, Recommender]:
        """More models to evaluate on the test split, logged as ``<name>_test*/...`` (e.g. a teacher)."""
        return {}

    def timed_scorers(self, built: Built) -> dict[str, Recommender]:
        """Models whose inference cost is logged as ``time/<name>_ms_per_1k_users``."""
        return {}

    def report(self, built: Built, inputs: StrategyInputs) -> dict[str, float]:
        """Metrics about the trained model beyond ranking quality (e.g. fusion's source weights)."""
        return {}


class FromSource(Strategy):
    """Base of the strategies that start from the run's backbone pretrained on the scenario's source
    and take the ``transfer`` group (finetune, meta-learning, domain adaptation)."""

    uses_transfer = True
    uses_source = True

    def needs(self, scenario: Scenario) -> list[Need]:
        return [SourceModel()]
