"""Lightning data plumbing: training pairs in batches, and a one-item trigger for evaluation.

Batches are fetched with ``__getitems__`` (one tensor index per batch instead of one Python
call per sample), which keeps the data path out of the way of training throughput. Lightning's
distributed sampler injection works unchanged, since the DataLoader is an ordinary one.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

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
        t = torch.as_tensor(idx)
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
    """Training pairs from ``data.train``; evaluation is driven by the strategy's eval sets."""

    def __init__(self, data: DomainData, batch_size: int = 1024, num_workers: int = 0):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set = PairDataset(torch.tensor(data.train["user"].to_numpy()),
                                     torch.tensor(data.train["item"].to_numpy()))
        self.item_counts = torch.bincount(self.train_set.items, minlength=data.n_items)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=keep_batch,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(EvalTrigger(), batch_size=1)
