"""Sequential and text backbones: shapes, causal/padding masks, histories, transfer, cold items, e2e runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tlexp.data.datamodule import SequenceDataset, datamodule_for, trim_padding
from tlexp.data.scenario import DomainData
from tlexp.evaluation.evaluator import evaluate, make_eval_set
from tlexp.models.losses import BPRLoss, CrossEntropyLoss
from tlexp.models.sasrec import SASRec, causal_mask
from tlexp.models.text_seq import TextSeq
from tlexp.models.text_two_tower import TextTwoTower


def toy_domain(name: str = "toy", n_items: int = 12, prefix: str = "") -> DomainData:
    """5 users; user 4 is cold (test only). Item 11 never occurs in train (a cold item)."""
    rows = {"train": [(0, [0, 1, 2, 3]), (1, [4, 5]), (2, [6]), (3, [1, 2, 3, 4, 5, 6, 7, 8])],
            "valid": [(0, [9]), (1, [6]), (3, [0])],
            "test": [(0, [5]), (1, [11]), (3, [2]), (4, [3, 11])]}
    frames = {}
    for split, lists in rows.items():
        recs = [(u, i, 100 * ({"train": 0, "valid": 1, "test": 2}[split]) + t)
                for u, items in lists for t, i in enumerate(items)]
        frames[split] = pd.DataFrame(recs, columns=["user", "item", "timestamp"]).astype("int64")
    info = pd.DataFrame({"item": [f"{prefix}{i}" for i in range(n_items)],
                         "text": [f"{prefix} thing number {i}" for i in range(n_items)],
                         "category": ["cat a" if i % 2 else "cat b" for i in range(n_items)]})
    return DomainData(name=name, users=np.array([f"u{u}" for u in range(5)], dtype=object), item_info=info,
                      cold_users=np.array([4]), **frames)


def sasrec(data: DomainData, **kw) -> SASRec:
    torch.manual_seed(0)
    kw = {"dim": 16, "max_seq_len": 6, "n_layers": 2, "n_heads": 2, "dropout": 0.0, **kw}
    return SASRec(data, **kw).eval()


def test_sasrec_shapes_and_histories():
    d = toy_domain()
    m = sasrec(d)
    assert (m.pad_token, m.bos_token) == (12, 13)
    users = torch.arange(5)
    assert m.user_repr({"user": users, "split": "val"}).shape == (5, 16)
    assert m.item_repr().shape == (12, 16) and m.item_repr(torch.tensor([3, 4])).shape == (2, 16)
    assert m.sequence_repr(m.history(users, "val")).shape == (5, 6, 16)
    pad, bos = 12, 13
    # val reads train only; test reads train + valid; the cold user has only the start token
    assert m.history(users, "val")[0].tolist() == [pad, bos, 0, 1, 2, 3]
    assert m.history(users, "test")[0].tolist() == [bos, 0, 1, 2, 3, 9]
    assert m.history(users, "test")[3].tolist() == [4, 5, 6, 7, 8, 0]  # truncated to the last 6
    assert m.history(users, "test")[4].tolist() == [pad] * 5 + [bos]
    # val and test representations differ exactly where the history differs
    v, t = m.user_repr({"user": users, "split": "val"}), m.user_repr({"user": users, "split": "test"})
    assert not torch.allclose(v[0], t[0]) and torch.allclose(v[2], t[2]) and torch.allclose(v[4], t[4])


def test_sequence_dataset_is_causal_shift_by_one():
    d = toy_domain()
    ds = SequenceDataset(d, max_seq_len=6, pad=12, bos=13)
    assert ds.users.tolist() == [0, 1, 2, 3]  # the cold user has no training sequence
    b = ds.__getitems__([0, 3])
    assert b["seq"][0].tolist() == [12, 12, 13, 0, 1, 2] and b["target"][0].tolist() == [-1, -1, 0, 1, 2, 3]
    assert b["seq"][1].tolist() == [2, 3, 4, 5, 6, 7] and b["target"][1].tolist() == [3, 4, 5, 6, 7, 8]
    trimmed = trim_padding(ds.__getitems__([0, 1]), 12)
    assert trimmed["seq"].shape == (2, 4) and trimmed["target"][1].tolist() == [-1, -1, 4, 5]
    dm = datamodule_for(d, sasrec(d), batch_size=2)
    batches = list(dm.train_dataloader())
    assert sorted(u for b in batches for u in b["user"].tolist()) == [0, 1, 2, 3]
    assert datamodule_for(d, torch.nn.Linear(1, 1), 2).__class__.__name__ == "RecDataModule"


def test_causal_mask_blocks_future_and_padding():
    pad = torch.tensor([[True, False, False]])
    blocked = causal_mask(pad)[0]
    assert blocked.tolist() == [[False, True, True],   # a padded query sees only itself
                                [True, False, True],   # no padding key, no future key
                                [True, False, False]]


def test_no_peeking_at_future_items():
    d = toy_domain()
    m = sasrec(d, max_seq_len=8)
    a = torch.tensor([[13, 0, 1, 2, 3, 4, 5, 6]])
    b = a.clone()
    b[0, 5:] = torch.tensor([9, 10, 11])     # change the future after position 4
    c = a.clone()
    c[0, 2] = 7                              # change the past before position 4
    ha, hb, hc = m.sequence_repr(a), m.sequence_repr(b), m.sequence_repr(c)
    torch.testing.assert_close(ha[0, :5], hb[0, :5])
    assert not torch.allclose(ha[0, 5:], hb[0, 5:])
    assert not torch.allclose(ha[0, 4], hc[0, 4])   # the test can fail: the past does matter


def test_no_attention_to_padding():
    d = toy_domain()
    m = sasrec(d, max_seq_len=10)
    short = torch.tensor([[12, 12, 13, 0, 1, 2]])
    long = torch.tensor([[12] * 6 + [13, 0, 1, 2]])
    torch.testing.assert_close(m.sequence_repr(short)[0, 2:], m.sequence_repr(long)[0, 6:])
    # whatever vectors sit at padded positions, real positions do not change
    x = torch.randn(1, 6, 16)
    pad = short == 12
    y1 = m.seq_encoder(x, pad)
    x2 = x.clone()
    x2[0, :2] = torch.randn(2, 16) * 100
    y2 = m.seq_encoder(x2, pad)
    torch.testing.assert_close(y1[0, 2:], y2[0, 2:])
    x3 = x.clone()
    # a real position does matter: perturb it non-uniformly (a constant added to every feature is
    # removed exactly by the input LayerNorm, so it could not show anything)
    x3[0, 2] += torch.linspace(-1.0, 1.0, 16)
    assert not torch.allclose(m.seq_encoder(x3, pad)[0, 3:], y1[0, 3:])
    # chunked, trimmed evaluation equals the plain forward
    users = torch.arange(5)
    full = m.sequence_repr(m.history(users, "test"))[:, -1]
    torch.testing.assert_close(m.user_repr({"user": users, "split": "test"}), full, atol=1e-5, rtol=1e-5)


def test_training_pairs_and_losses_work_on_sequences():
    d = toy_domain()
    m = sasrec(d)
    batch = SequenceDataset(d, 6, 12, 13).__getitems__([0, 1, 2, 3])
    q, items = m.training_pairs(batch)
    # every train item is a target, except user 3's first two (8 items, windows of max_seq_len=6)
    expected = sorted(d.train["item"].tolist())
    expected.remove(1)
    expected.remove(2)
    assert q.shape == (13, 16) and sorted(items.tolist()) == expected
    ce = CrossEntropyLoss()(m, batch)
    ref = torch.nn.functional.cross_entropy(q @ m.item_repr().T, items)
    torch.testing.assert_close(ce, ref)
    torch.manual_seed(0)
    sampled = CrossEntropyLoss(num_negatives=5)(m, batch)
    assert torch.isfinite(sampled) and torch.isfinite(BPRLoss()(m, batch))
    sampled.backward()
    assert m.seq_encoder.pos_emb.weight.grad is not None and m.item_emb.weight.grad is not None


def test_sasrec_transfer_moves_transformer_and_shared_item_rows():
    src, tgt = toy_domain("src"), toy_domain("tgt", n_items=10)
    s, t = sasrec(src), sasrec(tgt, dropout=0.0)
    torch.manual_seed(1)
    t = SASRec(tgt, dim=16, max_seq_len=6)
    item_map = torch.full((10,), -1, dtype=torch.long)
    item_map[3] = 7
    moved = t.transfer_from(s, torch.zeros(5, dtype=torch.long), item_map)
    assert "item_emb.weight" in moved and "bos" in moved
    assert any(n.startswith("seq_encoder.layers") for n in moved)
    torch.testing.assert_close(t.seq_encoder.pos_emb.weight, s.seq_encoder.pos_emb.weight)
    torch.testing.assert_close(t.item_emb.weight[3], s.item_emb.weight[7])
    assert not torch.allclose(t.item_emb.weight[4], s.item_emb.weight[4])


def with_history_for_user_4(d: DomainData) -> DomainData:
    """The same domain, with user 4's test items moved to train (a source-side history for them)."""
    moved = d.test[d.test["user"] == 4]
    return DomainData(d.name, d.users, d.item_info, pd.concat([d.train, moved], ignore_index=True), d.valid,
                      d.test[d.test["user"] != 4].reset_index(drop=True))


def test_cold_users_are_read_from_their_source_sequence_after_transfer():
    src = with_history_for_user_4(toy_domain("src"))
    s = sasrec(src)
    torch.manual_seed(1)
    t = SASRec(toy_domain("tgt", n_items=10), dim=16, max_seq_len=6, dropout=0.0).eval()
    users = torch.arange(5)
    t.transfer_from(s, users, torch.full((10,), -1))
    assert t.n_source_histories == 1  # only user 4 has no target history
    offset = t.source_offset
    assert t.hist_test[4].tolist() == [10, 10, 10, 11, 3 + offset, 11 + offset]
    assert t.hist_val[4].tolist() == t.hist_test[4].tolist()
    # the transferred model reads the same sequence with the same weights: the source's representation
    torch.testing.assert_close(t.user_repr({"user": users, "split": "test"})[4],
                               s.user_repr({"user": users, "split": "test"})[4])
    off = SASRec(toy_domain("tgt", n_items=10), dim=16, max_seq_len=6, source_history=False)
    off.transfer_from(s, users, torch.full((10,), -1))
    assert off.n_source_histories == 0 and off.hist_test[4].tolist() == [10] * 5 + [11]


def test_text_seq_scores_items_it_never_saw(tiny_encoder: Path, tmp_path: Path):  # noqa: F811
    enc = {"name_or_path": str(tiny_encoder), "max_length": 16, "progress": False, "cache_dir": str(tmp_path)}
    torch.manual_seed(0)
    src = TextSeq(toy_domain("src", prefix="paint"), encoder=enc, dim=16, max_seq_len=6, dropout=0.0)
    tgt_data = toy_domain("tgt", n_items=9, prefix="office")
    tgt = TextSeq(tgt_data, encoder=enc, dim=16, max_seq_len=6, dropout=0.0)
    # no parameter is indexed by item: the model is the same size for any catalogue
    assert src.num_parameters() == tgt.num_parameters()
    assert not any(p.shape[0] in (9, 12) for p in tgt.parameters())
    moved = tgt.transfer_from(src, torch.full((5,), -1), torch.full((9,), -1))
    assert len(moved) == len(list(tgt.named_parameters()))
    src.eval()
    tgt.eval()
    for (n, p), (_, q) in zip(src.named_parameters(), tgt.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=n)
    scores = tgt.score(tgt.user_repr({"user": torch.arange(5), "split": "test"}), tgt.item_repr())
    assert scores.shape == (5, 9) and torch.isfinite(scores).all()
    assert tgt.tracking_info()["tags"]["text_cache"] in ("hit", "miss")
    # a cold-start user is read from their source sequence: paint items through the target's adaptor
    src_h = TextSeq(with_history_for_user_4(toy_domain("src", prefix="paint")), encoder=enc, dim=16,
                    max_seq_len=6, dropout=0.0).eval()
    tgt.transfer_from(src_h, torch.arange(5), torch.full((9,), -1))
    assert tgt.n_source_histories == 1
    users = torch.arange(5)
    torch.testing.assert_close(tgt.user_repr({"user": users, "split": "test"})[4],
                               src_h.user_repr({"user": users, "split": "test"})[4], atol=1e-5, rtol=1e-5)
    two = TextTwoTower(tgt_data, encoder=enc, dim=16)
    assert two.item_repr().shape == (9, 16) and two.user_repr({"user": torch.arange(5)}).shape == (5, 16)
    assert two.tracking_info()["tags"]["text_cache"] == "hit"  # same texts and encoder: from the cache


def test_moe_adaptor_is_a_gated_mixture_of_whitening_experts():
    from tlexp.models.adaptors import MoEAdaptor

    torch.manual_seed(0)
    m = MoEAdaptor(6, 4, n_experts=3, dropout=0.0)
    with torch.no_grad():
        m.bias.normal_()
        m.gate.normal_()
    x = torch.randn(5, 6)
    w = m.weight.view(6, 3, 4)
    gate = torch.softmax(x @ m.gate, -1)
    expected = sum(gate[:, k: k + 1] * ((x - m.bias[k]) @ w[:, k]) for k in range(3))
    torch.testing.assert_close(m(x), expected)
    assert m(torch.randn(2, 7, 6)).shape == (2, 7, 4)


def test_cold_items_segment_uses_only_cold_items():
    d = toy_domain()
    es = make_eval_set(d, "test")
    assert "_cold_items" in es.segments
    # users 1 (test item 11) and 4 (test items 3 and 11) have a test item never seen in train
    assert es.users[es.segments["_cold_items"]].tolist() == [1, 4]
    scores = torch.zeros(5, 12)
    scores[:, 11] = 5.0   # item 11 first for everyone
    scores[:, 3] = 4.0
    m = evaluate(es, lambda users: scores[users], [1, 2])
    # cold-items segment: truth {11} for both users -> hit at rank 1
    assert m["test_cold_items/recall_at_1"] == 1.0 and m["test_cold_items/ndcg_at_1"] == 1.0
    # overall: user 4 has truth {3, 11} (recall@1 = 0.5); user 0's item 5 and user 3's item 2 missed
    assert m["test/recall_at_1"] == pytest.approx((0 + 1 + 0 + 0.5) / 4)
    assert "val_cold_items/recall_at_1" not in evaluate(make_eval_set(d, "valid"), lambda u: scores[u], [1])


# ----- end to end on the synthetic world -----

SMALL = ["world.n_users=400", "trainer.max_epochs=1", "pretrain.max_epochs=1", "backbone.dim=16",
         "logger.predictions_sample=0", "+trainer.limit_train_batches=4"]


def test_sasrec_sets_its_own_early_stopping_patience_and_the_command_line_still_wins():
    """SASRec's validation curve dips after epoch 0 (docs/backbones.md); its config raises patience."""
    from tlexp.core.config import compose

    cfg = compose(["backbone=sasrec"])
    assert cfg.callbacks.early_stopping.patience == 10 and cfg.pretrain.patience == 10
    assert compose(["backbone=sasrec", "callbacks.early_stopping.patience=4"]).callbacks.early_stopping.patience == 4
    assert compose([]).callbacks.early_stopping.patience == 3  # other backbones keep the default
