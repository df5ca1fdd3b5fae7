"""Epoch-level training values: kept as weighted sums and handed to Lightning once per epoch, they
must be bit-identical to Lightning's own per-batch ``self.log`` mean (what they replace for speed)."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch

from tlexp.data.datamodule import RecDataModule
from tlexp.models.losses import BPRLoss, InBatchSoftmaxLoss
from tlexp.models.recommender import Recommender
from tlexp.models.two_tower import TwoTower
from tlexp.training import module as training_module
from tlexp.training.module import EpochMeans, LossObjective, Optimisation, TrainingModule

from tests.unit.test_backbones import toy_domain


class Recorder(pl.Callback):
    """Every epoch's logged training values, as callbacks (early stopping, the MLflow logger) see them."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append({k: v.clone() for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


class TwoValues(LossObjective):
    """The loss plus a Python-float value, both weighted by batch size (as distillation logs terms)."""

    def step(self, module, batch):
        loss = super().step(module, batch)
        module.log_train("train/share", float(batch["user"].float().mean()), batch_size=batch["user"].shape[0])
        return loss


def fit(loss: torch.nn.Module, per_batch: bool, monkeypatch: pytest.MonkeyPatch, **trainer_kw) -> list[dict]:
    monkeypatch.setattr(EpochMeans, "usable", staticmethod(lambda trainer: not per_batch))
    torch.manual_seed(0)
    data = toy_domain()
    model = Recommender(TwoTower(data, dim=8))
    tm = TrainingModule(model, TwoValues(loss), Optimisation(partial(torch.optim.Adam, lr=0.05)))
    recorder = Recorder()
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[recorder], **trainer_kw)
    # 19 training pairs in batches of 4: the last batch has 3, so the weighting matters
    trainer.fit(tm, datamodule=RecDataModule(data, batch_size=4))
    return recorder.epochs


@pytest.mark.parametrize("loss", [BPRLoss(), InBatchSoftmaxLoss()], ids=["bpr", "softmax"])
def test_epoch_means_are_bit_identical_to_lightning_per_batch_logging(loss, monkeypatch):
    fast = fit(loss, per_batch=False, monkeypatch=monkeypatch)
    reference = fit(loss, per_batch=True, monkeypatch=monkeypatch)
    assert len(fast) == len(reference) == 3
    for ours, theirs in zip(fast, reference, strict=True):
        assert set(ours) == set(theirs) == {"train/loss", "train/share"}
        for key in ours:
            assert ours[key].dtype == theirs[key].dtype
            assert torch.equal(ours[key], theirs[key]), (key, ours[key], theirs[key])
    # the values change from epoch to epoch: a stale epoch would have been caught above
    assert fast[0]["train/loss"] != fast[-1]["train/loss"]


def test_epoch_means_weight_by_batch_size_and_reset_after_a_flush():
    means = EpochMeans()
    means.add("x", torch.tensor(1.0), 3, prog_bar=True)
    means.add("x", 4.0, 1, prog_bar=True)
    (name, mean, prog_bar), = means.flush()
    assert (name, prog_bar) == ("x", True) and mean.item() == pytest.approx((3 * 1.0 + 4.0) / 4)
    assert not means.pending and means.flush() == []
    with pytest.raises(ValueError, match="needs one number"):
        means.add("y", torch.ones(2), 1, prog_bar=False)


def test_max_steps_falls_back_to_per_batch_logging(monkeypatch):
    """A fit that may end mid-epoch cannot wait for the epoch's last batch: values go to Lightning directly."""
    seen = []
    real = training_module.EpochMeans.add
    monkeypatch.setattr(training_module.EpochMeans, "add", lambda self, *a, **k: seen.append(a) or real(self, *a, **k))
    torch.manual_seed(0)
    data = toy_domain()
    tm = TrainingModule(Recommender(TwoTower(data, dim=8)), LossObjective(BPRLoss()),
                        Optimisation(partial(torch.optim.Adam, lr=0.05)))
    recorder = Recorder()
    trainer = pl.Trainer(max_steps=7, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[recorder])
    trainer.fit(tm, datamodule=RecDataModule(data, batch_size=4))
    assert seen == []  # never buffered
    assert "train/loss" in recorder.epochs[0]  # the first full epoch (5 batches) was logged


class Captured(pl.loggers.Logger):
    """A logger that keeps every (step, metrics) call, as the MLflow logger would receive them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "captured"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))


def fit_validated(direct: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, float]]]:
    """Three epochs with validation; every logged value by key, as (step, value) in order."""
    from tlexp.evaluation.evaluator import make_eval_set
    from tlexp.training.module import Validation

    if not direct:
        monkeypatch.setattr(TrainingModule, "_log_directly", lambda self, metrics: False)
    torch.manual_seed(0)
    data = toy_domain()
    model = Recommender(TwoTower(data, dim=8))
    extra = lambda model, m: {"val_combined/ndcg_at_10": (m["val/ndcg_at_10"] + m["val/recall_at_5"]) / 3}  # noqa: E731
    tm = TrainingModule(model, LossObjective(BPRLoss()), Optimisation(partial(torch.optim.Adam, lr=0.05)),
                        Validation(make_eval_set(data, "valid"), [5, 10], 4, "val/ndcg_at_10", extra))
    logger = Captured()
    trainer = pl.Trainer(max_epochs=3, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=1)
    trainer.fit(tm, datamodule=RecDataModule(data, batch_size=4))
    out: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in logger.calls:
        for key, value in metrics.items():
            out.setdefault(key, []).append((step, value))
    return out


def test_validation_metrics_logged_directly_equal_what_lightning_logs(monkeypatch):
    """Validation metrics other than the monitor skip ``self.log`` (for speed) and go straight to the
    loggers: same keys, same steps, bit-identical values (float32, as Lightning makes them), none from
    the sanity check, and the monitor still reaches the callbacks."""
    fast = fit_validated(True, monkeypatch)
    monkeypatch.undo()
    reference = fit_validated(False, monkeypatch)
    assert set(fast) == set(reference) and "val/recall_at_10" in fast and "val_combined/ndcg_at_10" in fast
    for key in reference:
        assert fast[key] == reference[key], key
    assert len(fast["val/recall_at_10"]) == 3 and len({s for s, _ in fast["val/recall_at_10"]}) == 3
