"""Augmentation of the target's training data (``augment`` config group).

Only training pairs are touched: validation and test items never enter training through an
augmentation (a test checks it). Built so far: ``interaction_dropout`` for ID models — each epoch sees
a fresh random ``1 - p`` share of the training pairs. The subset is a function of (seed, epoch), so a
run is reproducible and a resumed run sees the epochs a never-stopped run would have seen.
Sequence augmentations (crop / mask / reorder, CL4SRec's contrastive views) are not built yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

from tlexp.core.errors import ConfigError

KINDS = ("none", "interaction_dropout")


@dataclass(frozen=True)
class AugmentSettings:
    """``augment.*`` (conf/augment/<name>.yaml)."""

    name: str = "none"
    p: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in KINDS:
            raise ConfigError(f"augment={self.name} is not built; choose one of {', '.join(KINDS)} (conf/augment/)")
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 <= self.p < 1:
            raise ConfigError(f"augment.p={self.p!r} must be a share in [0, 1) (conf/augment/{self.name}.yaml); "
                              "e.g. augment.p=0.2")

    @property
    def active(self) -> bool:
        return self.name != "none" and self.p > 0


class EpochSubsetSampler(Sampler[int]):
    """A shuffled random ``keep`` share of ``n`` indices, drawn afresh for every epoch from (seed, epoch).

    Lightning calls ``set_epoch`` before each training epoch (as for its distributed sampler).
    """

    def __init__(self, n: int, keep: float, seed: int) -> None:
        self.n, self.keep, self.seed, self.epoch = int(n), float(keep), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return max(1, round(self.n * self.keep))

    def indices(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)[: len(self)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())
