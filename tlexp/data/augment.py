"""Augmentation of the target's training data (``augment`` config group).

Only training data is touched: validation and test items never enter training through an
augmentation (tests/unit/test_augment.py checks it for every kind). Each draw is a function of
(seed, epoch[, batch]), so a run is reproducible and a resumed run sees the epochs a never-stopped
run would have seen.

* ``interaction_dropout`` (ID models): each epoch sees a fresh random ``1 - p`` share of the training pairs.
* ``history_resample`` (ID models): each epoch, each user's history is, with probability ``p``, redrawn
  with replacement from the user's own training pairs (a per-user bootstrap); ``cap`` limits every
  user to at most that many pairs an epoch (heavy users no longer dominate the gradient).
* ``crop`` / ``mask`` / ``reorder`` (sequence backbones: sasrec, text_seq): each training sequence is,
  with probability ``p`` per epoch, replaced by a cropped (a contiguous run of share ``eta``), masked
  (a share ``gamma`` of its input items replaced by a mask token) or locally shuffled (a contiguous
  run of share ``beta`` permuted) version of itself. The targets are the true next items of the
  augmented input (for ``mask``: of the unmasked one), all of them training items.
* ``text_dropout`` (text backbones, frozen encoder): ``variants`` versions of the item texts with a
  share ``p`` of their words dropped, each encoded once through the frozen-embedding cache; in every
  epoch each item is read, in training only, through one of its versions drawn from (seed, epoch).
* ``cl4srec`` (Xie et al. 2022): the recommendation loss on the plain sequences, plus an InfoNCE term
  between two augmented views of each user's training sequence (crop, mask or reorder, picked at random
  per view), weighted ``cl_weight``, at ``cl_temperature``.

The transforms below work on left-padded item tensors (padding ``-1``), one row per sequence, drawing
from an explicit generator; padding is never touched and never becomes an item.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

from tlexp.core.errors import ConfigError

PAIR_KINDS = ("interaction_dropout", "history_resample")
SEQUENCE_KINDS = ("crop", "mask", "reorder", "cl4srec")
TEXT_KINDS = ("text_dropout",)
KINDS = ("none", *PAIR_KINDS, *SEQUENCE_KINDS, *TEXT_KINDS)
PAD = -1  # padding inside the transforms (never an item, never a token)


def _share(value: object, low_open: bool = True) -> bool:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    return ok and (0 < value <= 1 if low_open else 0 <= value < 1)


@dataclass(frozen=True)
class AugmentSettings:
    """``augment.*`` (conf/augment/<name>.yaml)."""

    name: str = "none"
    p: float = 0.0                 # interaction_dropout: share of pairs left out; crop/mask/reorder: P(augment
    #                                a sequence); text_dropout: share of words dropped
    eta: float = 0.6               # crop: share of the sequence kept (a contiguous run)
    gamma: float = 0.3             # mask: share of the input items replaced by the mask token
    beta: float = 0.6              # reorder: share of the sequence (a contiguous run) shuffled
    cl_weight: float = 0.1         # cl4srec: weight of the contrastive term added to the recommendation loss
    cl_temperature: float = 0.2    # cl4srec: InfoNCE temperature (cosine similarities are divided by it)
    variants: int = 4              # text_dropout: word-dropped versions of each item text (each encoded once, cached)
    cap: int | None = None         # history_resample: at most this many pairs per user an epoch (None: no cap)

    def __post_init__(self) -> None:
        where = f"conf/augment/{self.name}.yaml"
        if self.name not in KINDS:
            raise ConfigError(f"augment={self.name} is not built; choose one of {', '.join(KINDS)} (conf/augment/)")
        if self.name in ("crop", "mask", "reorder", "history_resample"):
            if not _share(self.p):
                raise ConfigError(f"augment.p={self.p!r} must be a probability in (0, 1] ({where}); e.g. augment.p=0.5")
        elif self.name == "text_dropout":
            if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 < self.p < 1:
                raise ConfigError(f"augment.p={self.p!r} must be a share of words in (0, 1) ({where}); "
                                  "e.g. augment.p=0.1")
        elif isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 <= self.p < 1:
            raise ConfigError(f"augment.p={self.p!r} must be a share in [0, 1) ({where}); e.g. augment.p=0.2")
        for key in ("eta", "gamma", "beta"):
            if not _share(getattr(self, key)):
                raise ConfigError(f"augment.{key}={getattr(self, key)!r} must be a share in (0, 1] ({where}); "
                                  f"e.g. augment.{key}=0.5")
        for key in ("cl_weight", "cl_temperature"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"augment.{key}={value!r} must be a number > 0 ({where}); e.g. augment.{key}=0.1")

        if self.cap is not None and (isinstance(self.cap, bool) or not isinstance(self.cap, int) or self.cap < 1):
            raise ConfigError(f"augment.cap={self.cap!r} must be null or an integer >= 1 ({where}); e.g. augment.cap=50")
        if isinstance(self.variants, bool) or not isinstance(self.variants, int) or self.variants < 1:
            raise ConfigError(f"augment.variants={self.variants!r} must be an integer >= 1 ({where}); "
                              "e.g. augment.variants=4")

    @property
    def active(self) -> bool:
        if self.name == "cl4srec" or (self.name == "history_resample" and self.cap is not None):
            return True
        return self.name != "none" and self.p > 0

    @property
    def on_sequences(self) -> bool:
        """An augmentation of item sequences (sequence backbones), as opposed to training pairs."""
        return self.name in SEQUENCE_KINDS

    @property
    def on_texts(self) -> bool:
        """An augmentation of item texts (text backbones with a frozen encoder)."""
        return self.name in TEXT_KINDS

    @property
    def uses_mask(self) -> bool:
        """Inputs may hold the mask token: the model needs a (training-only) mask vector."""
        return self.name in ("mask", "cl4srec")


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


class EpochHistorySampler(Sampler[int]):
    """Per-user resampling of training pairs, afresh for every epoch from (seed, epoch).

    Each user contributes ``m_u = min(n_u, cap)`` pairs an epoch (``n_u`` without a cap), so an epoch's
    length is fixed. With probability ``p`` a user's ``m_u`` pairs are drawn *with replacement* from
    their own ``n_u`` pairs (a bootstrap of the history: some pairs twice, some not at all); otherwise
    ``m_u`` of them without replacement (all of them when there is no cap). Indices only ever point
    at the user's own training pairs. The epoch's indices are then shuffled.
    """

    def __init__(self, users: torch.Tensor, p: float, cap: int | None, seed: int) -> None:
        users = torch.as_tensor(users, dtype=torch.long)
        self.order = torch.argsort(users, stable=True)              # pair indices grouped by user
        counts = torch.bincount(users)
        self.counts = counts[counts > 0]
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.take = self.counts if cap is None else torch.clamp(self.counts, max=int(cap))
        self.p, self.seed, self.epoch = float(p), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.take.sum())

    def indices(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 11)
        owner = torch.repeat_interleave(torch.arange(len(self.counts)), self.take)   # one row per drawn pair
        n = self.counts[owner].double()
        boot = (torch.rand(len(self.counts), generator=g) < self.p)[owner]
        with_repl = (torch.rand(len(owner), generator=g, dtype=torch.float64) * n).floor().long()
        # without replacement: the first m_u of a random permutation of the user's n_u pairs
        keys = torch.rand(len(self.order), generator=g, dtype=torch.float64)
        pair_owner = torch.repeat_interleave(torch.arange(len(self.counts)), self.counts)
        perm = torch.argsort(pair_owner.double() * 2 + keys, stable=True) - self.starts[pair_owner]
        pos = torch.arange(len(owner)) - (torch.cumsum(self.take, 0) - self.take)[owner]  # 0..m_u-1
        no_repl = perm[self.starts[owner] + pos]
        offset = torch.where(boot, with_repl, no_repl)
        picked = self.order[self.starts[owner] + offset]
        return picked[torch.randperm(len(picked), generator=g)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


# ----- sequence transforms: (B, W) left-padded item tensors, padding PAD -----

def generator_for(seed: int, epoch: int, batch: int = 0, rank: int = 0) -> torch.Generator:
    """A generator determined by (seed, epoch, batch, rank): int tuples hash the same in every process."""
    return torch.Generator().manual_seed(hash((int(seed), int(epoch), int(batch), int(rank))) & 0x7FFF_FFFF_FFFF_FFFF)


def lengths(items: torch.Tensor) -> torch.Tensor:
    return (items != PAD).sum(1)


def _window(items: torch.Tensor, share: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, a random contiguous window of ``max(1, floor(share * n))`` of its ``n`` items:
    (first column, length) in the tensor's columns."""
    n = lengths(items)
    m = torch.clamp((share * n.double()).floor().long(), min=1)
    m = torch.minimum(m, n)
    start = (torch.rand(n.shape, generator=g, dtype=torch.float64) * (n - m + 1).double()).floor().long()
    start = torch.minimum(start, n - m)
    return items.shape[1] - n + start, m


def crop(items: torch.Tensor, eta: float, g: torch.Generator) -> torch.Tensor:
    """Keep a random contiguous run of ``max(1, floor(eta * n))`` items of each row (left-padded again)."""
    width = items.shape[1]
    lo, m = _window(items, eta, g)
    col = torch.arange(width).unsqueeze(0)
    src = lo.unsqueeze(1) + col - (width - m).unsqueeze(1)      # output column -> input column
    keep = col >= (width - m).unsqueeze(1)
    out = torch.gather(items, 1, src.clamp(0, width - 1))
    return torch.where(keep & (lengths(items) > 0).unsqueeze(1), out, torch.full_like(items, PAD))


def mask(items: torch.Tensor, gamma: float, token: int, g: torch.Generator) -> torch.Tensor:
    """Replace ``round(gamma * n)`` randomly chosen items of each row by ``token``."""
    n = lengths(items)
    k = torch.round(gamma * n.double()).long()
    keys = torch.rand(items.shape, generator=g, dtype=torch.float64).masked_fill(items == PAD, 2.0)
    rank = torch.argsort(torch.argsort(keys, dim=1), dim=1)       # 0 = the smallest key of the row
    return torch.where(rank < k.unsqueeze(1), torch.full_like(items, token), items)


def reorder(items: torch.Tensor, beta: float, g: torch.Generator) -> torch.Tensor:
    """Shuffle a random contiguous run of ``max(1, floor(beta * n))`` items of each row; the rest stays."""
    lo, m = _window(items, beta, g)
    col = torch.arange(items.shape[1]).unsqueeze(0).double()
    inside = (col >= lo.unsqueeze(1)) & (col < (lo + m).unsqueeze(1))
    # sort keys: a column outside the run keeps its own index; inside, random keys within [lo, lo + m - 1]
    rand = lo.unsqueeze(1) + torch.rand(items.shape, generator=g, dtype=torch.float64) * (m - 1).unsqueeze(1)
    order = torch.argsort(torch.where(inside, rand, col), dim=1)
    return torch.gather(items, 1, order)


def augment_rows(items: torch.Tensor, kind: str, settings: AugmentSettings, mask_token: int,
                 g: torch.Generator) -> torch.Tensor:
    """``kind`` (crop, mask or reorder) applied to every row."""
    if kind == "crop":
        return crop(items, settings.eta, g)
    if kind == "mask":
        return mask(items, settings.gamma, mask_token, g)
    if kind == "reorder":
        return reorder(items, settings.beta, g)
    raise ValueError(kind)


def random_view(items: torch.Tensor, settings: AugmentSettings, mask_token: int, g: torch.Generator) -> torch.Tensor:
    """CL4SRec's view: per row one of crop / mask / reorder, picked uniformly at random."""
    pick = torch.randint(0, 3, (items.shape[0],), generator=g)
    out = items.clone()
    for i, kind in enumerate(("crop", "mask", "reorder")):
        done = augment_rows(items, kind, settings, mask_token, g)
        out = torch.where((pick == i).unsqueeze(1), done, out)
    return out


def with_probability(items: torch.Tensor, done: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Each row of ``done`` with probability ``p``, else the row of ``items``."""
    take = torch.rand(items.shape[0], generator=g) < p
    return torch.where(take.unsqueeze(1), done, items)


def causal_rows(window: torch.Tensor, inputs: torch.Tensor | None, bos: int,
                pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of width W - 1 from a (B, W) window of items: the target of each column is the
    item that follows its input; the input before a row's first item is the start token ``bos``.

    ``inputs`` (optional, same shape as ``window``): what the model reads instead of the window's own
    items (the masked window); the targets always come from ``window``.
    """
    source = window if inputs is None else inputs
    inp, target = source[:, :-1], window[:, 1:]
    inp = torch.where((inp == PAD) & (target != PAD), torch.full_like(inp, bos), inp)
    inp = torch.where(inp == PAD, torch.full_like(inp, pad), inp)
    return inp, target


def word_dropout(texts: list[str], p: float, seed: int, variant: int) -> list[str]:
    """``texts`` with each word (whitespace-separated) dropped with probability ``p``, at least one word
    kept per text; determined by (seed, variant)."""
    g = generator_for(seed, variant, 0, 0)
    out = []
    for text in texts:
        words = text.split()
        if len(words) <= 1:
            out.append(text)
            continue
        keep = torch.rand(len(words), generator=g) >= p
        if not keep.any():
            keep[int(torch.randint(0, len(words), (1,), generator=g))] = True
        out.append(" ".join(w for w, k in zip(words, keep.tolist(), strict=True) if k))
    return out
