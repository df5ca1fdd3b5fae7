"""Sequence augmentations (crop, mask, reorder, cl4srec): each transform's shape and semantics on
tensors, the settings' one-line errors, and — for every kind — that no validation or test item ever
enters training through it (inputs, targets or contrastive views)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tlexp.core.errors import ConfigError
from tlexp.data.augment import (PAD, AugmentSettings, causal_rows, crop, generator_for, mask, random_view,
                                reorder)


def rows() -> torch.Tensor:
    """Left-padded rows of 0..12 distinct items (ids 100+), padding PAD."""
    width = 12
    out = torch.full((13, width), PAD)
    for n in range(13):
        if n:
            out[n, width - n:] = 100 + torch.randperm(50)[:n]
    return out


def real(row: torch.Tensor) -> list[int]:
    return [int(x) for x in row if x != PAD]


def test_crop_keeps_a_contiguous_run_of_the_right_length_left_padded():
    items = rows()
    for eta in (0.2, 0.5, 0.6, 1.0):
        out = crop(items, eta, generator_for(0, 1, 2))
        for row, new in zip(items, out, strict=True):
            n, got = len(real(row)), real(new)
            assert len(got) == (max(1, int(eta * n)) if n else 0)
            assert (new[: new.shape[0] - len(got)] == PAD).all()  # padding stays on the left
            seq = real(row)
            assert any(seq[i: i + len(got)] == got for i in range(n - len(got) + 1)) or not n


def test_reorder_keeps_the_multiset_and_moves_only_a_contiguous_run():
    items = rows()
    out = reorder(items, 0.6, generator_for(0, 1, 2))
    moved_any = False
    for row, new in zip(items, out, strict=True):
        assert ((row == PAD) == (new == PAD)).all()  # padding untouched
        assert sorted(real(row)) == sorted(real(new))
        diff = torch.nonzero(row != new).flatten()
        if diff.numel():
            moved_any = True
            n = len(real(row))
            assert int(diff[-1] - diff[0]) + 1 <= max(1, int(0.6 * n))  # changes lie within one run
    assert moved_any
    assert torch.equal(reorder(items, 0.6, generator_for(0, 1, 2)), out)  # same seed, same draw
    assert not torch.equal(reorder(items, 0.6, generator_for(0, 2, 2)), out)  # next epoch, fresh draw


def test_mask_replaces_exactly_round_gamma_n_items_and_leaves_padding():
    items = rows()
    for gamma in (0.1, 0.3, 0.5, 1.0):
        out = mask(items, gamma, token=7, g=generator_for(3, 0))
        for row, new in zip(items, out, strict=True):
            n = len(real(row))
            assert int((new == 7).sum()) == round(gamma * n)
            assert ((row == PAD) == (new == PAD)).all()
            keep = new != 7
            assert torch.equal(row[keep], new[keep])


def test_causal_rows_put_the_start_token_before_the_first_item():
    window = torch.tensor([[PAD, PAD, 5, 6, 7], [1, 2, 3, 4, 5]])
    inp, target = causal_rows(window, None, bos=98, pad=99)
    assert inp.tolist() == [[99, 98, 5, 6], [1, 2, 3, 4]]
    assert target.tolist() == [[PAD, 5, 6, 7], [2, 3, 4, 5]]
    masked = window.clone()
    masked[0, 3] = 50
    inp, target = causal_rows(window, masked, bos=98, pad=99)
    assert inp.tolist()[0] == [99, 98, 5, 50] and target.tolist()[0] == [PAD, 5, 6, 7]
    items = rows()
    view = random_view(items, AugmentSettings(name="cl4srec"), 7, generator_for(0, 0))
    assert view.shape == items.shape and ((view != PAD).sum(1) <= (items != PAD).sum(1)).all()
    for row, new in zip(items, view, strict=True):
        assert set(real(new)) <= set(real(row)) | {7}


def test_settings_one_line_errors():
    AugmentSettings(name="crop", p=1.0, eta=0.5)
    with pytest.raises(ConfigError, match=r"augment.p=0 must be a probability in \(0, 1\].*crop.yaml"):
        AugmentSettings(name="crop", p=0)
    with pytest.raises(ConfigError, match=r"augment.eta=1.5 must be a share in \(0, 1\]"):
        AugmentSettings(name="crop", p=0.5, eta=1.5)
    with pytest.raises(ConfigError, match=r"augment.gamma=0 must be"):
        AugmentSettings(name="mask", p=0.5, gamma=0)
    with pytest.raises(ConfigError, match=r"augment.cl_temperature=0 must be a number > 0"):
        AugmentSettings(name="cl4srec", cl_temperature=0)
    assert AugmentSettings(name="cl4srec").active and AugmentSettings(name="cl4srec").uses_mask
    assert not AugmentSettings(name="reorder", p=0.5).uses_mask


def test_config_keys_are_checked(tmp_path: Path):
    from helpers import tiny_cfg

    from tlexp.pipeline.build import augment_settings

    with pytest.raises(ConfigError, match=r"augment: unknown key\(s\) \['eta2'\]"):
        augment_settings(tiny_cfg(tmp_path, "augment=crop", "+augment.eta2=1"))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory):
    from helpers import tiny_cfg

    from tlexp.pipeline.build import load_scenario

    scenario, _ = load_scenario(tiny_cfg(tmp_path_factory.mktemp("aug")))
    return scenario.target


def by_user(frame) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for u, i in zip(frame["user"].tolist(), frame["item"].tolist(), strict=True):
        out.setdefault(int(u), set()).add(int(i))
    return out


@pytest.mark.parametrize("kind", ["crop", "mask", "reorder", "cl4srec"])
def test_no_validation_or_test_item_enters_training(target, kind: str):
    from tlexp.data.datamodule import SequenceDataModule

    n = target.n_items
    pad, bos, mask_token = n, n + 1, n + 2
    aug = AugmentSettings(name=kind, p=0.9, eta=0.5, gamma=0.5, beta=0.6)
    dm = SequenceDataModule(target, max_seq_len=8, pad=pad, bos=bos, batch_size=64, augment=aug, seed=0,
                            mask_token=mask_token)
    train, held = by_user(target.train), by_user(target.valid)
    for u, items in by_user(target.test).items():
        held.setdefault(u, set()).update(items)
    cold = set(target.cold_users.tolist()) | set(target.valid_cold_users.tolist())
    changed = 0
    for epoch in range(2):
        loader = dm.train_dataloader()
        loader.batch_sampler.sampler.set_epoch(epoch)  # what Lightning does before each epoch
        for batch in loader:
            plain = dm.train_set.__getitems__([int(i) for i in torch.searchsorted(dm.train_set.users,
                                                                                  batch["user"])])
            changed += int(not torch.equal(plain["seq"], batch["seq"]))
            tokens = [batch["seq"], batch["target"]] + ([batch["views"][:, 0], batch["views"][:, 1]]
                                                        if kind == "cl4srec" else [])
            for r, u in enumerate(batch["user"].tolist()):
                assert u not in cold
                only_held = held.get(u, set()) - train[u]
                for t in tokens:
                    got = {int(x) for x in t[r] if 0 <= x < n}
                    assert got <= train[u], f"{kind}: a non-training item of user {u} entered training"
                    assert not got & only_held
                    assert {int(x) for x in t[r] if x >= n} <= {pad, bos, mask_token}
                seq, tgt = batch["seq"][r], batch["target"][r]
                assert ((tgt >= 0) == (seq != pad)).all()  # a target at every input position, none at padding
                # targets are the true next items: the next input, unless that input was masked
                nxt, follow = tgt[:-1], seq[1:]
                ok = (follow == nxt) | (follow == mask_token) | (nxt < 0)
                assert ok.all()
    if kind == "cl4srec":  # the recommendation loss reads the plain sequences; the views are augmented
        assert changed == 0
        assert not torch.equal(batch["views"][:, 0], batch["views"][:, 1])
    else:
        assert changed > 0


def test_the_mask_vector_and_contrastive_term_live_in_the_objective(target):
    from tlexp.data.datamodule import SequenceDataModule
    from tlexp.models.losses import CrossEntropyLoss
    from tlexp.models.recommender import Recommender
    from tlexp.models.sasrec import SASRec
    from tlexp.training.augment import AugmentObjective
    from tlexp.training.module import LossObjective

    torch.manual_seed(0)
    model = SASRec(target, dim=8, max_seq_len=8, n_layers=1)
    plain_keys = set(SASRec(target, dim=8, max_seq_len=8, n_layers=1).state_dict())
    aug = AugmentSettings(name="cl4srec", gamma=0.5)
    objective = AugmentObjective(LossObjective(CrossEntropyLoss()), model, aug)
    assert set(model.state_dict()) == plain_keys and "mask" in dict(objective.named_parameters())
    dm = SequenceDataModule(target, 8, model.pad_token, model.bos_token, 32, augment=aug, seed=0,
                            mask_token=model.mask_token)
    batch = next(iter(dm.train_dataloader()))
    assert (batch["views"] == model.mask_token).any()

    class Module:  # what the objective asks of the training module
        def __init__(self):
            self.model, self.logged = Recommender(model), {}

        def log_train(self, name, value, batch_size, prog_bar=False):
            self.logged[name] = float(torch.as_tensor(value).detach())

    module = Module()
    loss = objective.step(module, dict(batch))
    loss.backward()
    assert torch.isfinite(loss) and module.logged["train/loss_cl"] > 0
    assert objective.mask.grad is not None and objective.mask.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="no mask vector"):  # outside the objective, no mask token is readable
        model.sequence_repr(batch["views"][:, 0])


def test_word_dropout_is_seeded_and_keeps_a_word():
    from tlexp.data.augment import word_dropout

    texts = ["a red pen with a cap", "easel", "", "two words"] * 50
    a, b = word_dropout(texts, 0.3, 0, 1), word_dropout(texts, 0.3, 0, 1)
    assert a == b and a != word_dropout(texts, 0.3, 0, 2)
    for old, new in zip(texts, a, strict=True):
        assert (new == old) if len(old.split()) <= 1 else (1 <= len(new.split()) <= len(old.split()))
        assert set(new.split()) <= set(old.split())
    kept = sum(len(n.split()) for o, n in zip(texts, a, strict=True) if o.startswith("a red"))
    assert 0.55 < kept / (6 * 50) < 0.85  # about 1 - p of the words


def test_text_dropout_reads_cached_variants_in_training_only(target, tiny_encoder: Path, tmp_path: Path):
    from tlexp.models.losses import CrossEntropyLoss
    from tlexp.models.recommender import Recommender
    from tlexp.models.text_seq import TextSeq
    from tlexp.training.augment import TextDropoutObjective
    from tlexp.training.module import LossObjective

    enc = {"name_or_path": str(tiny_encoder), "max_length": 16, "cache_dir": str(tmp_path / "cache"),
           "progress": False}
    model = TextSeq(target, encoder=enc, dim=8, max_seq_len=8, n_layers=1)
    aug = AugmentSettings(name="text_dropout", p=0.3, variants=2)
    objective = TextDropoutObjective(LossObjective(CrossEntropyLoss()), model, aug, seed=0)
    assert objective.cache == ["miss", "miss"]
    assert TextDropoutObjective(LossObjective(CrossEntropyLoss()), model, aug, seed=0).cache == ["hit", "hit"]
    clean = model.item_repr().detach().clone()
    tower = model.item_tower
    seen = {}

    class Inner(LossObjective):
        def step(self, module, batch):
            seen["items"] = module.model.backbone.item_repr().detach().clone()
            return torch.zeros(())

    objective.inner = Inner(CrossEntropyLoss())

    module = type("Module", (), {"current_epoch": 0, "model": Recommender(model)})()
    objective.step(module, {})
    assert not torch.allclose(seen["items"], clean)  # training reads the word-dropped texts
    assert torch.equal(model.item_repr().detach(), clean)  # everything else the clean ones
    first = objective.table(0, tower.text_emb)
    assert torch.equal(first, objective.table(0, tower.text_emb))
    assert not torch.equal(first, objective.table(1, tower.text_emb))
    assert "text_emb" not in model.state_dict() and not any("_tables" in k for k in objective.state_dict())


def test_mask_is_refused_where_a_sequence_teacher_would_read_the_masked_inputs(target):
    from tlexp.models.losses import CrossEntropyLoss
    from tlexp.models.sasrec import SASRec
    from tlexp.training.augment import AugmentObjective
    from tlexp.training.module import LossObjective

    student = SASRec(target, dim=8, max_seq_len=8, n_layers=1)
    inner = LossObjective(CrossEntropyLoss())
    inner.teacher = SASRec(target, dim=8, max_seq_len=8, n_layers=1)
    with pytest.raises(ConfigError, match="augment=mask feeds masked sequences to the strategy's sequence teacher"):
        AugmentObjective(inner, student, AugmentSettings(name="mask", p=0.5))
    AugmentObjective(inner, student, AugmentSettings(name="cl4srec"))


def test_lightning_tells_the_batch_sampler_its_epoch():
    """Augmentations are seeded by the epoch Lightning passes to ``batch_sampler.sampler.set_epoch``."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, Dataset

    from tlexp.data.datamodule import BucketBatchSampler, keep_batch

    seen = []

    class Tags(Dataset):
        def __len__(self):
            return 10

        def __getitems__(self, idx):
            seen.append((idx.epoch, idx.number))
            return {"x": torch.ones(len(idx), 1)}

    class Fit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, 1)

        def training_step(self, batch, i):
            return self.lin(batch["x"]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), 0.1)

    loader = DataLoader(Tags(), batch_sampler=BucketBatchSampler(torch.ones(10), 4), collate_fn=keep_batch)
    pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu").fit(Fit(), loader)
    assert seen == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
