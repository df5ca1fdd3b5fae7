"""``tlexp explain``: which of a user's history items made a recommended item score high.

Two attributions, chosen by what the model is; both split a score exactly into one part per
history item plus a remainder, so the parts always add up to the score that ranked the item:

- **projection** (ID and text two-tower models, and any recommender whose score is linear in a
  user vector, dot product or cosine): the user's vector ``z`` is written as a combination of
  their history items' vectors plus what those cannot span, ``z = sum_j a_j v_j + r`` (least
  squares, minimum norm). Because the score is linear in ``z``, ``score(i) = sum_j a_j <v_j, w_i>
  + <r, w_i>``: history item ``j`` contributes ``a_j <v_j, w_i>``, exactly; the remainder is what the
  user's vector holds beyond their history (e.g. a popularity bias coordinate). Source-domain
  history items take part through the source model's item vectors when the run transferred one of
  the same size (the target model started from that space; how far it drifted shows in the
  remainder).
- **integrated gradients** (sequential models: SASRec, text_seq), Captum's
  ``IntegratedGradients`` over the input vectors of the history sequence, from a baseline where
  every history item's vector is zero (start token and positions kept). Its completeness property
  makes the parts add up to ``score - score(baseline)``; the remainder is ``score(baseline)`` plus
  the integration error (Captum's convergence delta, reported).

``share`` is a part's size relative to all parts and the remainder: ``c_j / (sum_k |c_k| + |r|)``,
signed (a negative share pulled the item down); 1 means the item alone explains the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from tlexp.core.errors import ConfigError

USAGE = """\
usage: tlexp explain run=<run_id> users=<ids or file> [items=<ids>] [k=5] [top=3] [quantize=none|int8]
                     [out=explain.csv] [outputs=DIR]

  run      id of a finished run
  users    comma-separated user ids, or a file (as tlexp recommend)
  items    explain these target items (comma-separated ids) instead of the user's top-k
  k        recommended items to explain per user (default 5)
  top      history items shown per explained item (default 3), biggest |share| first
  quantize int8: explain the int8 model that `tlexp recommend quantize=int8` serves
  out      also write every history item's part as CSV
"""


@dataclass
class History:
    """One user's history items as the model sees them: vectors and labels, in time order."""

    items: list[str]
    titles: list[str]
    domains: list[str]  # "target" or "source"


def _titles(info: pd.DataFrame, idx: np.ndarray) -> tuple[list[str], list[str]]:
    keys = info["item"].to_numpy()[idx].astype(str).tolist()
    return keys, info["text"].fillna("").to_numpy()[idx].astype(str).tolist()


def target_history(scenario, user: int) -> np.ndarray:
    """The user's target items the model was allowed to know (train, then valid), time order."""
    t = scenario.target
    seen = pd.concat([t.train, t.valid])
    return seen.loc[seen["user"] == user, "item"].to_numpy()


def source_history(scenario, user_key: str) -> np.ndarray:
    """The user's whole source-domain history (all of it was training data for the source model)."""
    s = scenario.source
    if s is None or s.n_users == 0:
        return np.zeros(0, dtype=np.int64)
    idx = int(s.user_index(np.asarray([user_key], dtype=object))[0])
    if idx < 0:
        return np.zeros(0, dtype=np.int64)
    allrows = pd.concat([s.train, s.valid, s.test])
    return allrows.loc[allrows["user"] == idx, "item"].to_numpy()


# ----- the projection attribution (linear scorers) -----
def linear_form(backbone, z: torch.Tensor, items: torch.Tensor) -> tuple[str, torch.Tensor]:
    """How the backbone's score depends on a user vector: ``("dot", W)`` when score(z) = z @ W, or
    ``("cosine", W)`` when score(z) = normalize(z) @ W; W = (d, n_items). Checked numerically on ``z``;
    anything else cannot be split exactly by projection."""
    eye = torch.eye(z.shape[-1], dtype=z.dtype)
    w = backbone.score(eye, items)  # row k: the score of the unit vector e_k (cosine: already unit)
    got = backbone.score(z, items)
    if torch.allclose(got, z @ w, rtol=1e-4, atol=1e-5):
        return "dot", w
    if torch.allclose(got, torch.nn.functional.normalize(z, dim=-1) @ w, rtol=1e-4, atol=1e-5):
        return "cosine", w
    raise ConfigError(f"tlexp explain: the {type(backbone).__name__} score is neither a dot product nor a cosine of "
                      "the user vector, so it cannot be split exactly; explain a two-tower or sequential run")


def projection_parts(z: torch.Tensor, basis: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(parts (n_hist, n_items), remainder (n_items,)) with parts.sum(0) + remainder == z @ w exactly.

    ``z = basis.T @ a + r`` by minimum-norm least squares; part_j = a_j * (basis_j @ w).
    """
    if basis.shape[0] == 0:
        return torch.zeros(0, w.shape[1], dtype=w.dtype), z @ w
    a = torch.linalg.lstsq(basis.T.double(), z.double().unsqueeze(-1)).solution.squeeze(-1)
    parts = (a.unsqueeze(-1) * (basis.double() @ w.double())).to(w.dtype)
    return parts, (z @ w) - parts.sum(0)


# ----- integrated gradients (sequential backbones) -----
def sequence_parts(backbone, users: torch.Tensor, items: torch.Tensor, steps: int = 64
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integrated gradients of score(user, item) over the history's input vectors, for one user.

    Returns (tokens (L,), parts (L, n_items), remainder (n_items,), delta (n_items,)): parts per
    sequence position (zero at padding and the start token); parts.sum(0) + remainder == score.
    """
    from captum.attr import IntegratedGradients

    seq = backbone.history(users, "test")[:1]
    keep = seq[0] != backbone.pad_token
    seq = seq[:, keep] if keep.any() else seq[:, -1:]
    pad = seq == backbone.pad_token
    with torch.no_grad():
        x = backbone.input_vectors(seq)
        item_vecs = backbone.item_repr(items)
    is_item = ((seq < backbone.n_items) | (seq >= backbone.source_offset)).unsqueeze(-1)
    baseline = torch.where(is_item, torch.zeros_like(x), x)

    def forward(inputs: torch.Tensor, column: int) -> torch.Tensor:
        user = backbone.seq_encoder(inputs, pad.expand(inputs.shape[0], -1))[:, -1]
        return backbone.score(user, item_vecs[column: column + 1]).squeeze(-1)

    ig = IntegratedGradients(forward)
    parts, rest, deltas = [], [], []
    for c in range(items.numel()):
        attr, delta = ig.attribute(x, baselines=baseline, additional_forward_args=(c,), n_steps=steps,
                                   return_convergence_delta=True)
        with torch.no_grad():
            base_score = forward(baseline, c)
        per_pos = attr.sum(-1)[0] * is_item[0, :, 0]
        parts.append(per_pos)
        deltas.append(delta.reshape(()))
        rest.append(base_score.reshape(()) + delta.reshape(()))
    return seq[0], torch.stack(parts, 1).detach(), torch.stack(rest).detach(), torch.stack(deltas).detach()


def explain(loaded, users: list[str], items: list[str] | None = None, k: int = 5, top: int = 3,
            exclude: str = "history") -> pd.DataFrame:
    """One row per (user, explained item, history item): its part of the score and its share.

    Rows: user, rank, item, title, score, history_item, history_title, domain, part, share, method;
    plus one row per explained item with ``history_item = "(rest)"`` for the remainder.
    """
    from tlexp.models.sasrec import SequentialBackbone
    from tlexp.serving.recommend import recommend

    if top < 1:
        raise ConfigError(f"top={top} must be at least 1")
    target = loaded.scenario.target
    model = loaded.model
    backbone = model.backbone
    if items:
        idx = pd.Index(target.items).get_indexer(items)
        unknown = [i for i, j in zip(items, idx, strict=True) if j < 0]
        if unknown:
            raise ConfigError(f"item(s) {', '.join(unknown[:5])} are not in the target domain '{target.name}' "
                              f"({target.n_items} items, e.g. {', '.join(map(str, target.items[:3]))})")
        uidx = target.user_index(np.asarray(users, dtype=object))
        bad = [u for u, i in zip(users, uidx, strict=True) if i < 0]
        if bad:
            raise ConfigError(f"user(s) {', '.join(bad[:5])} are not in the target domain '{target.name}' "
                              f"({target.n_users} users, e.g. {', '.join(target.users[:3])})")
        with torch.no_grad():
            scores = model.score_fn()(torch.from_numpy(uidx.astype(np.int64)))
        wanted = pd.DataFrame([(u, r + 1, target.items[j], float(scores[b, j]))
                               for b, u in enumerate(users) for r, j in enumerate(idx)],
                              columns=["user", "rank", "item", "score"])
    else:
        wanted = recommend(loaded, users, k, exclude)[["user", "rank", "item", "score"]]
    info = target.item_info
    item_pos = pd.Index(target.items)
    sequential = isinstance(backbone, SequentialBackbone)
    source_model = getattr(loaded, "source_model", None)
    rows = []
    for user in dict.fromkeys(wanted["user"]):
        mine = wanted[wanted["user"] == user]
        u = int(target.user_index(np.asarray([user], dtype=object))[0])
        cols = torch.from_numpy(item_pos.get_indexer(mine["item"].to_numpy()).astype(np.int64))
        ut = torch.tensor([u])
        if sequential:
            tokens, parts, rest, _ = sequence_parts(backbone, ut, cols)
            tokens = tokens.numpy()
            is_src = tokens >= backbone.source_offset
            is_tgt = tokens < backbone.n_items
            keep = is_src | is_tgt
            labels = []
            for t, s in zip(tokens[keep], is_src[keep], strict=True):
                if s:
                    key, title = _titles(loaded.scenario.source.item_info, np.array([t - backbone.source_offset]))
                    labels.append((key[0], title[0], "source"))
                else:
                    key, title = _titles(info, np.array([t]))
                    labels.append((key[0], title[0], "target"))
            parts = parts[torch.from_numpy(keep)]
            method = "integrated gradients"
        else:
            with torch.no_grad():
                z = model.user_vectors(ut)[0]
                form, w = linear_form(backbone, z.unsqueeze(0), backbone.item_repr(cols))
                zz = torch.nn.functional.normalize(z, dim=-1) if form == "cosine" else z
                hist = target_history(loaded.scenario, u)
                basis = [backbone.item_repr(torch.from_numpy(hist.astype(np.int64)))] if len(hist) else []
                keys, titles = _titles(info, hist)
                labels = [(a, b, "target") for a, b in zip(keys, titles, strict=True)]
                src_hist = source_history(loaded.scenario, str(user)) if source_model is not None else np.zeros(0)
                if len(src_hist):
                    sv = source_model.backbone.item_repr(torch.from_numpy(src_hist.astype(np.int64)))
                    if sv.shape[-1] == zz.shape[-1]:
                        basis.append(sv)
                        keys, titles = _titles(loaded.scenario.source.item_info, src_hist)
                        labels += [(a, b, "source") for a, b in zip(keys, titles, strict=True)]
                basis_t = torch.cat(basis) if basis else torch.zeros(0, zz.shape[-1])
                parts, rest = projection_parts(zz, basis_t, w)
            method = f"projection ({form})"
        for c, r in enumerate(mine.itertuples(index=False)):
            p = parts[:, c] if parts.numel() else torch.zeros(0)
            denom = float(p.abs().sum() + rest[c].abs()) or 1.0
            order = torch.argsort(p.abs(), descending=True)[:top].tolist() if p.numel() else []
            title = info["text"].to_numpy()[item_pos.get_loc(r.item)] if r.item in item_pos else ""
            for j in order:
                rows.append((user, r.rank, r.item, title, r.score, labels[j][0], labels[j][1], labels[j][2],
                             float(p[j]), float(p[j]) / denom, method))
            rows.append((user, r.rank, r.item, title, r.score, "(rest)",
                         "beyond the history" if not sequential else "baseline + integration error", "",
                         float(rest[c]), float(rest[c]) / denom, method))
    return pd.DataFrame(rows, columns=["user", "rank", "item", "title", "score", "history_item", "history_title",
                                       "domain", "part", "share", "method"])
