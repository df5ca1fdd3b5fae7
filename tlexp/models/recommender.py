"""What a run evaluates and serves: a :class:`Recommender` scores users against all items.

A backbone turns users and items into vectors. A strategy may add to that — a mapped source
representation for cold-start users (EMCDR, meta-learning), an ensemble of backbones (fusion),
a meta-learned inner loop for k-shot users — and whatever it adds must be there at evaluation and
at serving time too. The recommender is that whole model: training wraps it, the evaluation plan
scores it, ``tlexp recommend`` rebuilds it. Strategy-specific recommenders subclass this one in
their strategy's module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlexp.evaluation.kshot import Adapter, gradient_step_adapter
from tlexp.models.base import Backbone

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


class Recommender(nn.Module):
    """A backbone scoring users against all items; subclasses change how users are represented."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    @property
    def device(self) -> torch.device:
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    def eval_batch(self, users: torch.Tensor, split: str = "test") -> dict[str, Any]:
        """The batch a backbone needs to represent ``users`` at evaluation time.

        ``split`` says which history a sequential backbone may read: the train sequence for
        ``"val"``, train + valid for ``"test"`` (never the items being predicted).
        """
        return {"user": users, "split": split}

    def user_vectors(self, users: torch.Tensor, split: str = "test") -> torch.Tensor:
        """(B, d) user representations at evaluation time."""
        return self.backbone.user_repr(self.eval_batch(users, split))

    def score_fn(self, split: str = "test") -> ScoreFn:
        """users -> (B, n_items) scores for ``split``, with the item representations computed once."""
        items = self.backbone.item_repr()
        return lambda users: self.backbone.score(self.user_vectors(users, split), items)

    def kshot_adapter(self, steps: int = 0, lr: float = 0.1) -> Adapter:
        """How a cold user's k support items are used (the k-shot protocol, tlexp/evaluation/kshot.py):
        ``steps`` plain gradient steps on the user representation at ``lr``; 0 steps = no adaptation."""
        return gradient_step_adapter(self.backbone, self.user_vectors, steps, lr)

    def export(self, directory: Path) -> list[Path]:
        """Parts worth keeping apart from the checkpoint (e.g. LoRA adapters); see Backbone.export."""
        return self.backbone.export(directory)
