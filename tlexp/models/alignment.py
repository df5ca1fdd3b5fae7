"""Distribution alignment between source and target representations: GRL, MMD, CORAL.

Small, separately testable pieces used by the ``adapt`` strategy (and usable by any other):

* :func:`grad_reverse` — identity forward, ``-λ·grad`` backward (Ganin & Lempitsky 2015), so
  that a domain classifier placed behind it is trained to tell the domains apart while the
  representation before it is trained to make them indistinguishable. :func:`dann_lambda` is the
  usual warm-up of λ from 0 to 1 over training (``2 / (1 + exp(-γ p)) - 1``), which keeps the
  adversary from scrambling the representation before the recommendation loss has shaped it.
* :func:`mmd` — multi-kernel maximum mean discrepancy (a sum of Gaussian kernels around the
  batch's mean pairwise distance, as in DAN, Long et al. 2015).
* :func:`coral` — deep CORAL (Sun & Saenko 2016): squared Frobenius distance between the two
  feature covariances, scaled by ``1 / (4 d²)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # noqa: ANN001
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity on the way forward; multiplies the incoming gradient by ``-coeff`` on the way back."""
    return _ReverseGrad.apply(x, float(coeff))


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """DANN's warm-up of the reversal coefficient: 0 at the start of training, → 1 at the end.

    ``progress`` is the share of training done (0..1); ``gamma`` how quickly λ rises (10 in the paper).
    """
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class DomainClassifier(nn.Module):
    """A small MLP giving one logit per row: source (1) or target (0)."""

    def __init__(self, dim: int, hidden: Sequence[int] = (64,), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        d = dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def domain_adversarial_loss(classifier: nn.Module, source: torch.Tensor, target: torch.Tensor,
                            coeff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DANN: the classifier's BCE on source-vs-target rows behind a gradient reversal of ``coeff``.

    Returns ``(loss, accuracy)``; the accuracy (no gradient) near 0.5 means the classifier can no
    longer tell the domains apart, i.e. the representations are aligned.
    """
    feats = grad_reverse(torch.cat([source, target]), coeff)
    labels = torch.cat([torch.ones(source.shape[0]), torch.zeros(target.shape[0])]).to(feats)
    logits = classifier(feats)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
    with torch.no_grad():
        acc = ((logits > 0).float() == labels).float().mean()
    return loss, acc


def mmd(x: torch.Tensor, y: torch.Tensor, multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
        bandwidth: float | None = None) -> torch.Tensor:
    """Multi-kernel MMD² between the rows of ``x`` and ``y`` (biased V-statistic, so MMD(x, x) = 0).

    Kernels: ``exp(-‖a-b‖² / (m · σ²))`` for each multiplier ``m``, with ``σ²`` the mean squared
    pairwise distance of the pooled batch (detached) unless ``bandwidth`` fixes it.
    """
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        n = z.shape[0]
        sigma2 = d2.detach().sum() / max(n * n - n, 1)
        sigma2 = sigma2.clamp(min=1e-12)
    else:
        sigma2 = torch.as_tensor(float(bandwidth), dtype=z.dtype, device=z.device)
    k = sum(torch.exp(-d2 / (m * sigma2)) for m in multipliers)
    nx = x.shape[0]
    kxx, kyy, kxy = k[:nx, :nx], k[nx:, nx:], k[:nx, nx:]
    return kxx.mean() + kyy.mean() - 2.0 * kxy.mean()


def coral(source: torch.Tensor, target: torch.Tensor, scale_free: bool = False) -> torch.Tensor:
    """Deep CORAL: ``‖C_s - C_t‖²_F / (4 d²)`` with ``C`` the (unbiased) feature covariance.

    The textbook loss grows with the fourth power of the features' scale. Recommendation
    embeddings have variances around 1e-2, so the loss is ~1e-4 against a ranking loss of ~7 and
    no sensible weight makes it matter (measured: ``adapt.method=coral`` gave the same metrics
    as ``none`` to four digits at weights 0.1, 1 and 100). ``scale_free=True`` divides by ``s⁴``
    with ``s²`` the source's mean feature variance (detached), i.e. it measures the covariance
    mismatch in units of the source's own spread, so one ``adapt.weight`` means the same for any
    embedding scale.
    """
    d = source.shape[1]
    cs, ct = torch.cov(source.T), torch.cov(target.T)
    loss = (cs - ct).pow(2).sum() / (4.0 * d * d)
    if scale_free:
        loss = loss / cs.diagonal().mean().detach().clamp_min(1e-12).pow(2)
    return loss
