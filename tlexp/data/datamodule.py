"""Lightning data plumbing: training pairs in batches, and a one-item trigger for evaluation.

Batches are fetched with ``__getitems__`` (one tensor index per batch instead of one Python
call per sample), which keeps the data path out of the way of training throughput. Lightning's
distributed sampler injection works unchanged, since the DataLoader is an ordinary one.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tlexp.core.errors import ConfigError
from tlexp.data.augment import (PAD, AugmentSettings, EpochHistorySampler, EpochSubsetSampler, augment_rows, causal_rows, generator_for,
                                mask, random_view, with_probability)
from tlexp.data.reweight import EpochWeightedSampler
from tlexp.data.scenario import DomainData


class PairDataset(Dataset):
    """(user, item) positive pairs of a split."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor):
        self.users, self.items = users.long(), items.long()

    def __len__(self) -> int:
        return int(self.users.numel())

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"user": self.users[i], "item": self.items[i]}

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        t = torch.as_tensor(idx, dtype=torch.long)  # long even when empty (a Poisson batch can be)
        return {"user": self.users[t], "item": self.items[t]}


def keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """collate_fn for datasets that already return whole batches (module-level: picklable for spawn)."""
    return batch


class EvalTrigger(Dataset):
    """One dummy element: runs the validation step once per rank, which evaluates its user shard."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> int:
        return 0


class RecDataModule(pl.LightningDataModule):
    """Training pairs from ``data.train``; evaluation is driven by the strategy's eval sets.

    ``sample_weights`` (one per training pair): each epoch draws the pairs with replacement in
    proportion to them (importance resampling, tlexp/data/reweight.py) instead of a shuffle.
    """

    def __init__(self, data: DomainData, batch_size: int = 1024, num_workers: int = 0,
                 augment: AugmentSettings | None = None, seed: int = 0, sample_weights=None):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set = PairDataset(torch.tensor(data.train["user"].to_numpy()),
                                     torch.tensor(data.train["item"].to_numpy()))
        self.item_counts = torch.bincount(self.train_set.items, minlength=data.n_items)
        self.augment, self.seed = augment or AugmentSettings(), int(seed)
        self.sample_weights = sample_weights
        if sample_weights is not None and len(sample_weights) != len(self.train_set):
            raise ValueError(f"{len(sample_weights)} sample weights for {len(self.train_set)} training pairs")

    def sampler(self):
        """The epoch's order of training pairs, when it is not a plain shuffle (None)."""
        a = self.augment
        if self.sample_weights is not None:
            if a.active:
                raise ConfigError(f"augment={a.name} and importance resampling of the same pairs cannot be "
                                  "combined; use one of them")
            return EpochWeightedSampler(self.sample_weights, self.seed)
        if a.active and a.name == "interaction_dropout":  # a fresh (1 - p) share each epoch
            return EpochSubsetSampler(len(self.train_set), 1 - a.p, self.seed)
        if a.active and a.name == "history_resample":
            return EpochHistorySampler(self.train_set.users, a.p, a.cap, self.seed)
        return None

    def train_dataloader(self) -> DataLoader:
        sampler = self.sampler()
        if sampler is not None:
            return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, collate_fn=keep_batch,
                              num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=keep_batch,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(EvalTrigger(), batch_size=1)


# ----- sequences, for backbones that read each user's item history (``needs_history = True``) -----

def user_sequences(frames: list, n_users: int) -> list[list[int]]:
    """Each user's items in time order (stable on ties), from one or more split frames."""
    import pandas as pd

    frame = pd.concat([f[["user", "item", "timestamp"]] for f in frames], ignore_index=True)
    frame = frame.sort_values(["user", "timestamp"], kind="stable")
    seqs: list[list[int]] = [[] for _ in range(n_users)]
    for u, items in frame.groupby("user", sort=False)["item"]:
        seqs[int(u)] = items.tolist()
    return seqs


def pad_left(seqs: list[list[int]], length: int, pad: int) -> torch.Tensor:
    """(len(seqs), length) tensor: the last ``length`` tokens of each sequence, left-padded with ``pad``.

    Left padding keeps each user's most recent item in the last column, which is where a causal
    model's user representation is read.
    """
    out = torch.full((len(seqs), length), pad, dtype=torch.long)
    for r, s in enumerate(seqs):
        s = s[-length:]
        if s:
            out[r, length - len(s):] = torch.as_tensor(s, dtype=torch.long)
    return out


class SequenceDataset(Dataset):
    """One training example per user with training history: causal inputs and next-item targets.

    With the user's train sequence ``h`` and a start token, the inputs are ``[BOS] + h`` without its
    last item and the targets ``h``, both truncated to the last ``max_seq_len`` positions: every
    position is trained to predict the item that follows it (SASRec's all-positions objective), and
    the start position learns what a user with no history picks first (cold-start users).
    Targets are -1 where there is nothing to predict (padding).

    With a sequence augmentation (``augment``), a batch tagged by :class:`BucketBatchSampler` with its
    epoch and number is augmented from the window of the last ``max_seq_len + 1`` training items of
    each user (what the plain example is made of): nothing but training items goes in.
    """

    def __init__(self, data: DomainData, max_seq_len: int, pad: int, bos: int,
                 augment: AugmentSettings | None = None, seed: int = 0, mask_token: int | None = None):
        seqs = [s for s in user_sequences([data.train], data.n_users)]
        users = [u for u, s in enumerate(seqs) if s]
        self.users = torch.tensor(users, dtype=torch.long)
        self.seq = pad_left([[bos] + seqs[u][:-1] for u in users], max_seq_len, pad)
        self.target = pad_left([seqs[u] for u in users], max_seq_len, -1)
        self.pad, self.bos, self.seed = pad, bos, int(seed)
        self.augment = augment if augment is not None and augment.active and augment.on_sequences else None
        self.mask_token = mask_token
        if self.augment is not None:
            if self.augment.uses_mask and mask_token is None:
                raise ConfigError(f"augment={self.augment.name} needs a mask token, which this backbone has not "
                                  "(sequence backbones: sasrec, text_seq); use augment=crop or reorder")
            self.window = pad_left([seqs[u] for u in users], max_seq_len + 1, PAD)

    def __len__(self) -> int:
        return int(self.users.numel())

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"user": self.users[i], "seq": self.seq[i], "target": self.target[i]}

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        t = torch.as_tensor(list(idx))
        batch = {"user": self.users[t], "seq": self.seq[t], "target": self.target[t]}
        if self.augment is not None and isinstance(idx, TaggedBatch):
            batch.update(self.augmented(t, generator_for(self.seed, idx.epoch, idx.number, idx.rank)))
        return batch

    def augmented(self, rows: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        """The augmented parts of a batch of dataset rows: ``seq``/``target`` (crop, mask, reorder) or
        ``views`` (cl4srec: (B, 2, max_seq_len) tokens of two augmented views of each training history)."""
        a, window = self.augment, self.window[rows]
        if a.name == "cl4srec":
            items = window[:, 1:]  # the history a user is represented by after training (train items)
            end = torch.zeros(items.shape[0], 1, dtype=items.dtype)
            views = [causal_rows(torch.cat([random_view(items, a, self.mask_token, g), end], 1), None,
                                 self.bos, self.pad)[0] for _ in range(2)]
            return {"views": torch.stack(views, 1)}
        if a.name == "mask":  # the inputs are masked, the targets stay the true next items
            inputs = window.clone()
            inputs[:, -1] = PAD  # the last item is only ever a target
            inputs = with_probability(window, mask(inputs, a.gamma, self.mask_token, g), a.p, g)
            seq, target = causal_rows(window, inputs, self.bos, self.pad)
        else:
            done = augment_rows(window, a.name, a, self.mask_token if self.mask_token is not None else PAD, g)
            seq, target = causal_rows(with_probability(window, done, a.p, g), None, self.bos, self.pad)
        return {"seq": seq, "target": target}


class TaggedBatch(list):
    """A batch of dataset indices that knows its epoch, its number in the epoch and its process rank
    (what a sequence augmentation is seeded by). Picklable: it travels to DataLoader workers."""

    def __init__(self, idx: list[int], epoch: int, number: int, rank: int = 0):
        super().__init__(idx)
        self.epoch, self.number, self.rank = int(epoch), int(number), int(rank)

    def __reduce__(self):
        return (TaggedBatch, (list(self), self.epoch, self.number, self.rank))


class BucketBatchSampler(torch.utils.data.Sampler):
    """Random batches of sequences of similar length, so that little compute goes to padding.

    Each epoch: shuffle, cut into pools of ``pool`` batches, sort each pool by length, cut into
    batches, shuffle the batches. Histories are short and skewed (median ~8, max 50), so random
    batches would almost always be padded to the full length; bucketed ones are ~4x cheaper. Draws
    from torch's global generator, so ``seed_everything`` makes it reproducible.

    Batches are :class:`TaggedBatch` lists (their epoch and number seed a sequence augmentation).
    Lightning calls ``set_epoch`` on ``batch_sampler.sampler`` before each epoch: that is this object.
    """

    def __init__(self, lengths: torch.Tensor, batch_size: int, pool: int = 50):
        self.lengths, self.batch_size, self.pool = lengths, batch_size, pool
        self.epoch = 0
        self.sampler = self  # where Lightning looks for set_epoch on a custom batch sampler

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        perm = torch.randperm(self.lengths.numel())
        batches = []
        for lo in range(0, perm.numel(), self.batch_size * self.pool):
            chunk = perm[lo: lo + self.batch_size * self.pool]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches += [chunk[i: i + self.batch_size].tolist() for i in range(0, chunk.numel(), self.batch_size)]
        for number, b in enumerate(torch.randperm(len(batches)).tolist()):
            yield TaggedBatch(batches[b], self.epoch, number)

    def __len__(self) -> int:
        return (self.lengths.numel() + self.batch_size - 1) // self.batch_size


class TaggedBatchSampler(torch.utils.data.BatchSampler):
    """A plain batch sampler whose batches are :class:`TaggedBatch` lists: the distributed path of a
    sequence augmentation (Lightning swaps the sampler for its DistributedSampler, whose epoch and
    rank tag the batches)."""

    def __iter__(self):
        epoch, rank = getattr(self.sampler, "epoch", 0), getattr(self.sampler, "rank", 0)
        for number, idx in enumerate(super().__iter__()):
            yield TaggedBatch(idx, epoch, number, rank)


def trim_padding(batch: dict[str, torch.Tensor], pad: int) -> dict[str, torch.Tensor]:
    """Drop the leading columns that are padding in every row (left-padded sequences)."""
    seq = batch["seq"]
    real = (seq != pad).any(0)
    first = int(real.int().argmax()) if bool(real.any()) else seq.shape[1] - 1
    if first == 0:
        return batch
    return {k: (v[:, first:] if v.dim() == 2 else v) for k, v in batch.items()}


class SequenceDataModule(pl.LightningDataModule):
    """Per-user causal training sequences from ``data.train``; evaluation as in :class:`RecDataModule`."""

    def __init__(self, data: DomainData, max_seq_len: int, pad: int, bos: int, batch_size: int = 256,
                 num_workers: int = 0, augment: AugmentSettings | None = None, seed: int = 0,
                 mask_token: int | None = None):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set = SequenceDataset(data, max_seq_len, pad, bos, augment, seed, mask_token)
        self.item_counts = torch.bincount(torch.tensor(data.train["item"].to_numpy(), dtype=torch.long),
                                          minlength=data.n_items)

    def train_dataloader(self) -> DataLoader:
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if distributed:  # Lightning shards an ordinary shuffled loader across ranks
            if self.train_set.augment is not None:  # batches tagged with (epoch, number, rank)
                sampler = TaggedBatchSampler(torch.utils.data.RandomSampler(self.train_set), self.batch_size, False)
                return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=keep_batch,
                                  num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
            return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=keep_batch,
                              num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        lengths = (self.train_set.target >= 0).sum(1)
        return DataLoader(self.train_set, batch_sampler=BucketBatchSampler(lengths, self.batch_size),
                          collate_fn=keep_batch, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(EvalTrigger(), batch_size=1)


def datamodule_for(data: DomainData, backbone: torch.nn.Module, batch_size: int = 1024,
                   num_workers: int = 0, augment: AugmentSettings | None = None,
                   seed: int = 0, sample_weights=None) -> pl.LightningDataModule:
    """The training data a backbone learns from: user sequences if it reads histories, else pairs.

    ``sample_weights``: importance weights of the training pairs (ID backbones only).

    A sequential backbone may set its own ``batch_size`` (sequences per batch), since one sequence
    holds up to ``max_seq_len`` training positions.
    """
    active = augment is not None and augment.active
    if getattr(backbone, "needs_history", False):
        if active and not (augment.on_sequences or augment.on_texts):
            raise ConfigError(f"augment={augment.name} works on training pairs of ID models; this backbone reads "
                              "item sequences: use augment=crop, mask, reorder, cl4srec or text_dropout (or none)")
        if sample_weights is not None:
            raise ConfigError("importance reweighting of source pairs (pretrain.reweight, adapt.method=reweight) "
                              "works on (user, item) pairs; this backbone learns from user sequences: use an ID "
                              "backbone such as backbone=two_tower")
        bs = getattr(backbone, "batch_size", None) or batch_size
        return SequenceDataModule(data, backbone.max_seq_len, backbone.pad_token, backbone.bos_token,
                                  int(bs), num_workers, augment, seed, getattr(backbone, "mask_token", None))
    if active and augment.on_sequences:
        raise ConfigError(f"augment={augment.name} works on item sequences (backbone=sasrec or text_seq); this "
                          "backbone learns from (user, item) pairs: use augment=interaction_dropout (or none)")
    return RecDataModule(data, batch_size, num_workers, augment, seed, sample_weights)
