"""Regularisation towards what was transferred, and plain L1/L2, as named and logged loss terms.

Why a module and not the optimiser's weight decay: weight decay pulls every weight towards zero, which
for a transferred model means *away* from the source knowledge it was given. L2-SP (Li, Grandvalet &
Davoine, "Explicit inductive bias for transfer learning with convolutional networks", ICML 2018) pulls
the transferred parameters towards their starting point θ₀ instead: ``l2_sp/2 · ||θ − θ₀||²``. The
terms are logged per epoch (``train/reg_l2_sp``, ``train/reg_l2``, ``train/reg_l1``: the unweighted
values), so a run shows how far it moved from the source.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from tlexp.core.errors import ConfigError


@dataclass(frozen=True)
class RegularizeSettings:
    """``regularize.*`` (conf/regularize/default.yaml): the weight of each term; 0 = off."""

    l2_sp: float = 0.0
    l2: float = 0.0
    l1: float = 0.0

    def __post_init__(self) -> None:
        for name in ("l2_sp", "l2", "l1"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
                raise ConfigError(f"regularize.{name}={value!r} must be a number >= 0 (conf/regularize/default.yaml); "
                                  f"e.g. regularize.{name}=0.01")

    @property
    def active(self) -> bool:
        return any(getattr(self, n) > 0 for n in ("l2_sp", "l2", "l1"))


class Regularizer(nn.Module):
    """The terms for one model: ``terms(model)`` gives their unweighted values, ``weighted`` their sum.

    ``anchored`` names (as ``model.named_parameters()`` does) the parameters L2-SP holds near their
    current values; those values are copied now, so build the regularizer right after the transfer.
    """

    def __init__(self, settings: RegularizeSettings, model: nn.Module, anchored: Iterable[str] = ()):
        super().__init__()
        self.settings = settings
        params = dict(model.named_parameters())
        self.anchored = sorted(set(anchored))
        unknown = [n for n in self.anchored if n not in params]
        if unknown:
            raise ValueError(f"parameters to anchor are not in the model: {unknown[:3]}")
        if settings.l2_sp > 0:
            if not any(params[n].requires_grad for n in self.anchored):
                raise ConfigError(f"regularize.l2_sp={settings.l2_sp} holds transferred weights near their start, but "
                                  "this run transferred no trainable weight (e.g. strategy=scratch, or everything "
                                  "frozen); use a strategy that transfers (finetune) or regularize.l2_sp=0")
            for i, n in enumerate(self.anchored):  # buffers: they follow the model to its device
                self.register_buffer(f"anchor_{i}", params[n].detach().clone(), persistent=False)

    def terms(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        out: dict[str, torch.Tensor] = {}
        if self.settings.l2_sp > 0:
            out["l2_sp"] = 0.5 * sum(((params[n] - getattr(self, f"anchor_{i}")) ** 2).sum()
                                     for i, n in enumerate(self.anchored) if params[n].requires_grad)
        trainable = [p for p in params.values() if p.requires_grad]
        if self.settings.l2 > 0:
            out["l2"] = 0.5 * sum((p ** 2).sum() for p in trainable)
        if self.settings.l1 > 0:
            out["l1"] = sum(p.abs().sum() for p in trainable)
        return out

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(getattr(self.settings, name) * value for name, value in terms.items())
