"""Lightning callbacks every fit gets: the random state in checkpoints, a fault point per epoch, a
named progress bar and the third-party warning filters.

:class:`RandomState` stores the torch, numpy and python random states in every checkpoint and puts
them back when training resumes from one, so that a resumed run draws the same negatives, shuffles
the same batches and applies the same dropout as a run that was never stopped (Lightning restores
weights, optimizer, schedulers and loops, but not the global random state). The states are stored
as tensors and plain numbers: a checkpoint still loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from lightning.pytorch.callbacks import RichProgressBar

from tlexp.core.console import quiet_third_party
from tlexp.core.faults import fault_point


class RandomState(pl.Callback):
    """The global random states, saved with each checkpoint and restored on resume."""

    @property
    def state_key(self) -> str:
        return "tlexp.RandomState"

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, py_state, py_gauss = random.getstate()
        return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
                "numpy": [int(pos), int(has_gauss), float(gauss)], "python_version": int(version),
                "python": torch.tensor(py_state, dtype=torch.int64), "python_gauss": py_gauss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        pos, has_gauss, gauss = state["numpy"]
        np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss),
                             float(gauss)))
        random.setstate((state["python_version"], tuple(int(x) for x in state["python"].tolist()),
                         state["python_gauss"]))


class EpochFaultPoint(pl.Callback):
    """``<stage>_epoch_end``: after the epoch's validation and checkpoint (tlexp/core/faults.py)."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fault_point(f"{self.stage}_epoch_end")


class StageProgressBar(RichProgressBar):
    """One named bar per training stage (``pretrain · epoch 3/30``), epochs counted from 1 as in the
    ``best_epoch`` tags and the learning-curve plot, and without Lightning's ``v_num``."""

    # Lightning updates the bar and re-reads every logged metric after every batch: ~4 ms a batch
    # here, a tenth of the default run's training. The bar moves at most this often instead (and
    # always on an epoch's last batch), which the eye cannot tell from every batch.
    min_interval_s = 0.25

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage
        self._last_update = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if batch_idx + 1 < self.total_train_batches and now - self._last_update < self.min_interval_s:
            return
        self._last_update = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _get_train_description(self, current_epoch: int) -> str:
        total = self.trainer.max_epochs
        return f"{self.stage} · epoch {current_epoch + 1}" + (f"/{total}" if total and total > 0 else "")

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class QuietThirdParty(pl.Callback):
    """Known third-party warnings filtered in every training process, ``ddp_spawn`` workers included
    (they start from a fresh interpreter that never ran the CLI's filters)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        quiet_third_party()
