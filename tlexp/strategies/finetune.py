"""``finetune``: start from the source-pretrained backbone, then train on the target.

Overlap users carry their source user embedding over (matched by the global user key), towers
transfer by name, target items start fresh (unless the domains share item keys). Cold-start
users have no target training rows, so their carried embedding is all the model knows of them —
which is exactly what the cold-start segment measures. How weights are taken over (freezing, the
learning-rate scale of what moved) is the ``transfer`` group (:mod:`tlexp.training.transfer`).
"""

from __future__ import annotations

from tlexp.models.recommender import Recommender
from tlexp.strategies.base import Built, FromSource, StrategyInputs
from tlexp.training.module import LossObjective
from tlexp.training.transfer import lr_scales, transfer_weights


class FineTune(FromSource):
    """Transfer from a pretrained source backbone, then train everything on the target."""

    def build(self, inputs: StrategyInputs) -> Built:
        moved = transfer_weights(inputs.backbone, inputs.models["source"].backbone, inputs.user_map(),
                                 inputs.item_map(), self.transfer)
        inputs.log.log_params({"transfer.moved": ",".join(moved)})
        return Built(Recommender(inputs.backbone), LossObjective(inputs.make_loss()), inputs.pairs(),
                     lr_scales(moved, self.transfer.lr_scale))
