"""Differentially private target training: DP-SGD (Abadi et al., CCS 2016) through Opacus.

What is private: the *target* training interactions, at the level of one (user, item) training pair
(event-level DP). Each step draws a Poisson sample of the training pairs (``opacus.data_loader.DPDataLoader``:
each pair independently with probability ``q = batch_size / N``), computes one gradient per pair,
clips each to ``max_grad_norm`` (the norm over all trainable parameters together), adds Gaussian noise
of standard deviation ``noise_multiplier · max_grad_norm`` and steps (``opacus.optimizers.DPOptimizer``);
an Opacus accountant (RDP or PRV) adds up the privacy spent. The source model, validation-based
selection and everything else is *not* covered: docs/privacy.md says precisely what is and is not.

Per-example gradients: Opacus's ``GradSampleModule`` computes them with hooks on each layer and
assumes that every call of a layer sees the batch in its first dimension. tlexp's losses call the item
embedding with batch-shaped positives, with ``B × K`` negatives, or not at all (the full catalogue as
``item_emb.weight``), so the hooks would miss or misattribute gradients. Here the per-example gradients
are ``torch.func.vmap(grad(loss of one example))`` over the whole loss instead — exact for any loss that
is a sum of per-example terms — and are handed to Opacus's ``DPOptimizer`` as ``p.grad_sample``, the
same place ``GradSampleModule`` puts them; clipping, noise, scaling and accounting are Opacus's own.
Losses that couple a batch's examples (in-batch softmax; negatives shared by the batch) have no
per-example gradient and are refused (:func:`loss_problem`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from tlexp.core.errors import ConfigError, TlexpError
from tlexp.data.datamodule import RecDataModule, keep_batch
from tlexp.models.losses import BPRLoss, CrossEntropyLoss, InBatchSoftmaxLoss

ACCOUNTANTS = ("rdp", "prv")
# Rényi orders the RDP accountant minimises over: Opacus's defaults (up to 63) and higher ones, which give
# the tighter bound for short runs (few steps, small ε), where Opacus warns that the largest order was optimal
RDP_ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + list(range(64, 1025, 16))
WHERE = "conf/privacy/default.yaml"


@dataclass(frozen=True)
class PrivacySettings:
    """``privacy.*`` (conf/privacy/default.yaml)."""

    dp: bool = False
    target_epsilon: float | None = None  # set: the noise multiplier that spends exactly this by trainer.max_epochs
    noise_multiplier: float = 1.0         # used when target_epsilon is null
    delta: float | None = None            # null: 1 / (10 · N), N = target training pairs
    max_grad_norm: float = 1.0            # each example's gradient is clipped to this L2 norm
    accountant: str = "rdp"               # rdp | prv (Opacus's accountants)

    def __post_init__(self) -> None:
        def bad(name: str, rule: str, example: str) -> ConfigError:
            return ConfigError(f"privacy.{name}={getattr(self, name)!r} must be {rule} ({WHERE}); e.g. "
                               f"privacy.{name}={example}")

        if self.target_epsilon is not None and not (0 < self.target_epsilon < math.inf):
            raise bad("target_epsilon", "a number > 0 (or null: use privacy.noise_multiplier)", "4")
        if not (0 < self.noise_multiplier < math.inf):
            raise bad("noise_multiplier", "a number > 0 (0 would be no privacy at all: privacy.dp=false)", "1.0")
        if self.delta is not None and not (0 < self.delta < 1):
            raise bad("delta", "between 0 and 1, exclusive (or null: 1/(10·N))", "1e-5")
        if not (0 < self.max_grad_norm < math.inf):
            raise bad("max_grad_norm", "a number > 0", "1.0")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"privacy.accountant={self.accountant!r} must be one of {'|'.join(ACCOUNTANTS)} "
                              f"({WHERE}); e.g. privacy.accountant=rdp")


def loss_problem(loss: nn.Module) -> str | None:
    """Why ``loss`` has no per-example gradient (a one-line reason naming ``loss=``), or None if it has one."""
    fix = "use loss=bpr or loss=ce (full softmax over all items), whose terms are per example"
    if isinstance(loss, BPRLoss):
        return None
    if isinstance(loss, CrossEntropyLoss):
        if loss.num_negatives <= 0:
            return None
        return (f"loss=sampled_ce (CrossEntropyLoss with num_negatives={loss.num_negatives}) draws one set of "
                f"negatives for the whole batch, so per-example gradients cannot be separated under privacy.dp=true; "
                f"{fix}")
    if isinstance(loss, InBatchSoftmaxLoss):
        return ("loss=softmax (in-batch negatives: each example's loss depends on the other examples of its batch, "
                f"the two_tower default) cannot be clipped per example under privacy.dp=true; {fix}")
    return (f"the loss {type(loss).__name__} is not known to be a sum of per-example terms, which privacy.dp=true "
            f"needs; {fix}")


class _LossOf(nn.Module):
    """The loss of a backbone on a batch as ``forward``: what ``torch.func.functional_call`` can call."""

    def __init__(self, backbone: nn.Module, loss: nn.Module):
        super().__init__()
        self.backbone, self.loss = backbone, loss

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(self.backbone, batch)


def per_sample_grads(backbone: nn.Module, loss: nn.Module, batch: dict[str, torch.Tensor]
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``({parameter name: (B, *shape) gradients of each example's loss}, (B,) losses)``, trainable parameters only.

    Each example is the loss on a batch of one (random negatives drawn per example). Embedding gradients
    are dense: ``B × rows × dim`` floats per table — size the batch for it.
    """
    from torch.func import functional_call, grad_and_value, vmap

    holder = _LossOf(backbone, loss)
    params = {f"backbone.{n}": p.detach() for n, p in backbone.named_parameters() if p.requires_grad}

    def one(ps: dict[str, torch.Tensor], example: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(holder, ps, ({k: v.unsqueeze(0) for k, v in example.items()},))

    n = next(iter(batch.values())).shape[0]
    if n == 0:  # a Poisson batch can be empty: no gradient, noise only
        return {k[len("backbone."):]: p.new_zeros((0, *p.shape)) for k, p in params.items()}, torch.zeros(0)
    grads, losses = vmap(grad_and_value(one), in_dims=(None, 0), randomness="different")(params, batch)
    return {k[len("backbone."):]: g for k, g in grads.items()}, losses.detach()


class PrivateTraining:
    """DP-SGD for one fit: sampling rate, noise multiplier (given or solved for a target ε), δ, accountant.

    ``n_examples`` training pairs, ``batch_size`` the expected Poisson batch, ``max_epochs`` the epochs the
    budget is planned for (early stopping spends less; the ε logged is what was spent).
    """

    def __init__(self, settings: PrivacySettings, n_examples: int, batch_size: int, max_epochs: int):
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier

        if n_examples < 1:
            raise ConfigError("privacy.dp=true needs target training interactions; the target has none")
        self.settings = settings
        self.n_examples = int(n_examples)
        self.sample_rate = min(1.0, batch_size / n_examples)
        self.steps_per_epoch = int(1 / self.sample_rate)  # len() of Opacus's UniformWithReplacementSampler
        self.delta = settings.delta if settings.delta is not None else 0.1 / n_examples
        self.planned_steps = self.steps_per_epoch * int(max_epochs)
        self._orders = {"alphas": RDP_ALPHAS} if settings.accountant == "rdp" else {}
        if settings.target_epsilon is not None:
            # the search probes noise far above the answer, where the largest Rényi order is optimal and Opacus
            # warns so; what matters is the final ε, computed (with the warning, if any) by epsilon()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
                self.noise_multiplier = float(get_noise_multiplier(
                    target_epsilon=settings.target_epsilon, target_delta=self.delta, sample_rate=self.sample_rate,
                    steps=self.planned_steps, accountant=settings.accountant, **self._orders))
        else:
            self.noise_multiplier = settings.noise_multiplier
        # ε after every planned step: the guarantee when early stopping ends the run sooner, since when to stop
        # depended on the (private) model — the ε of the steps taken alone holds for a fixed number of steps
        planned = create_accountant(settings.accountant)
        planned.history = [(self.noise_multiplier, self.sample_rate, self.planned_steps)]
        self.planned_epsilon = float(planned.get_epsilon(delta=self.delta, **self._orders))
        self.accountant = create_accountant(settings.accountant)
        self.steps = 0

    # ----- the parts of the loop -----
    def dataloader(self, dataset: Any, seed: int) -> DataLoader:
        """Poisson-sampled batches of ``dataset`` (what the accountant assumes), reproducible from ``seed``."""
        from opacus.data_loader import DPDataLoader

        return DPDataLoader(dataset, sample_rate=self.sample_rate, collate_fn=keep_batch,
                            generator=torch.Generator().manual_seed(int(seed)))

    def optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """``optimizer`` behind Opacus's DPOptimizer (clip per example, noise, divide by the expected batch),
        with the accountant counting each step."""
        from opacus.optimizers import DPOptimizer

        dp = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=self.settings.max_grad_norm,
                         expected_batch_size=max(1, round(self.sample_rate * self.n_examples)), loss_reduction="mean")
        count = self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate)

        def hook(opt: Any) -> None:
            count(opt)
            self.steps += 1

        dp.attach_step_hook(hook)
        return dp

    def step(self, model: nn.Module, objective: nn.Module, optimizer: Any, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, int]:
        """Per-example gradients into ``p.grad_sample``, then one DP-SGD step; returns (mean loss, batch size)."""
        loss = getattr(objective, "loss", None)
        problem = "the objective has no loss" if loss is None else loss_problem(loss)
        if problem:
            raise ConfigError(problem)
        backbone = model.backbone
        grads, losses = per_sample_grads(backbone, loss, batch)
        names = {id(p): n for n, p in backbone.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in names:
                    raise TlexpError("privacy.dp=true: the optimiser trains a parameter outside the backbone, "
                                     "which has no per-example gradient; this strategy is not supported")
                p.grad_sample = grads[names[id(p)]]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return (losses.mean() if losses.numel() else torch.zeros(())), int(losses.numel())

    # ----- what was spent -----
    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(delta=self.delta, **self._orders)) if self.steps else 0.0

    def metrics(self) -> dict[str, float]:
        return {"privacy/epsilon": self.epsilon(), "privacy/epsilon_planned": self.planned_epsilon,
                "privacy/delta": self.delta,
                "privacy/noise_multiplier": self.noise_multiplier, "privacy/max_grad_norm": self.settings.max_grad_norm,
                "privacy/sample_rate": self.sample_rate, "privacy/steps": float(self.steps)}


class PrivateData(pl.LightningDataModule):
    """A pair data module whose training batches are Poisson samples (validation unchanged)."""

    def __init__(self, inner: RecDataModule, privacy: PrivateTraining, seed: int):
        super().__init__()
        if not isinstance(inner, RecDataModule):
            raise ConfigError("privacy.dp=true trains on (user, item) pairs; this strategy's training data is "
                              f"{type(inner).__name__}: use strategy=finetune or strategy=scratch, backbone=two_tower")
        self.inner, self.privacy, self.seed = inner, privacy, int(seed)
        self.item_counts = inner.item_counts

    def train_dataloader(self) -> DataLoader:
        return self.privacy.dataloader(self.inner.train_set, self.seed)

    def val_dataloader(self) -> DataLoader:
        return self.inner.val_dataloader()
