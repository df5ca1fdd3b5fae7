"""``tlexp recommend``: a finished run's model -> each user's top-K unseen items, with titles.

The recommendation-generation step of the pipeline. Everything comes from the run in MLflow:
its resolved ``config.yaml`` rebuilds the scenario (from the Parquet cache when it is there) and
the model exactly as ``tlexp run`` built it (:func:`tlexp.pipeline.build.assemble`), the best
checkpoint under the artifact folder ``checkpoints/`` supplies the weights, the strategy's
after-fit step runs again (seeded as in the run: EMCDR's mapping) and the choices it leaves to
validation are made again (fusion's ensemble weights). Scoring and masking are the evaluator's,
so for a user in the run's predictions sample the items are the same as in its ``predictions.csv``.

"Seen" items are the user's training and validation interactions — what the model was allowed
to know when the run was evaluated (``exclude=history``, the default). ``exclude=all`` also
drops the held-out test items, i.e. everything the user ever interacted with in the data.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlexp.core.errors import ConfigError

USAGE = """\
usage: tlexp recommend run=<run_id> users=<ids or file> [k=10] [out=recs.csv] [exclude=history|all]
                       [history=N] [quantize=none|int8] [export=scorer.pt] [--explain] [outputs=DIR]

  run      id of a finished run (tlexp compare / tlexp ui list them)
  users    comma-separated user ids (e.g. u12,u40), or a file: one id per line, or a CSV with a
           'user' column (e.g. a run's predictions.csv)
  k        items per user (default 10)
  out      also write the recommendations as CSV (user, rank, item, title, category, score)
  exclude  history (default: the user's train+valid items, as the run was evaluated) or all
           (also the held-out test items)
  history  also show each user's last N known items (train+valid), e.g. history=5
  The 'hit' column marks recommended items that are among the user's held-out test items.
  quantize none (default: the run's fp32 model) or int8: post-training dynamic int8 towers, text
           encoder and item matrix (tlexp/serving/quantize.py, docs/serving.md)
  export   write the int8 scorer of all the run's users to this file (tensors only; read it back with
           tlexp.serving.quantize.load_scorer); users= is then optional
  --explain  add a 'because' column: the history item (source or target domain) with the biggest
           part of each item's score, and its share (tlexp explain shows all of them)
  outputs  tlexp's outputs folder holding the embedded store (default $TLEXP_OUTPUTS or outputs;
           MLFLOW_TRACKING_URI wins)
"""


@dataclass
class LoadedRun:
    """A finished run rebuilt in memory: its config, scenario and model (in eval mode)."""

    run_id: str
    cfg: Any
    scenario: Any
    model: Any  # a tlexp.models.recommender.Recommender, in eval mode
    source_model: Any = None  # the source model the run transferred from (strategies.base.Trained), if any


def load_run(run_id: str, tracking_uri: str, outputs: str | Path | None = None) -> LoadedRun:
    """Rebuild the model of ``run_id`` from its logged config and best checkpoint."""
    import torch
    from mlflow.exceptions import MlflowException
    from omegaconf import DictConfig, OmegaConf, open_dict

    from tlexp.core.config import check_targets, register
    from tlexp.evaluation.plan import EvaluationPlan
    from tlexp.pipeline.build import assemble, eval_settings, load_scenario, make_strategy
    from tlexp.tracking.run import NullLog
    from tlexp.tracking.store import open_store

    register()
    client = open_store(tracking_uri, create=False)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"run '{run_id}' is not in the store {tracking_uri}; list runs with "
                          "`tlexp compare` or `tlexp ui` (or set MLFLOW_TRACKING_URI / outputs=)") from None
    if run.data.tags.get("tlexp.sweep_parent") == "true":
        sweep = run.data.tags.get("sweep_id", "")
        kids = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                                  max_results=3)
        example = f" (e.g. run={kids[0].info.run_id})" if kids else ""
        raise ConfigError(f"run '{run_id}' is the parent of sweep {sweep}: it holds the sweep's summary, not a "
                          f"model; pick one of its jobs{example}; list them with `tlexp runs --sweep {sweep}`")
    if run.info.status != "FINISHED":
        raise ConfigError(f"run '{run_id}' is {run.info.status}, not FINISHED: only a finished run has a "
                          "final model; pick another run")
    with tempfile.TemporaryDirectory(prefix="tlexp-recommend-") as tmp:
        names = {a.path for a in client.list_artifacts(run_id)}
        if "config.yaml" not in names:
            raise ConfigError(f"run '{run_id}' has no config.yaml artifact, so it cannot be rebuilt; "
                              "it was not logged by tlexp run")
        cfg = OmegaConf.load(client.download_artifacts(run_id, "config.yaml", tmp))
        if not isinstance(cfg, DictConfig):
            raise ConfigError(f"run '{run_id}': config.yaml is not a mapping; refusing to build anything from it")
        check_targets(OmegaConf.to_container(cfg, resolve=False), f"run '{run_id}' config.yaml")
        ckpts = [a.path for a in client.list_artifacts(run_id, "checkpoints") if a.path.endswith(".ckpt")] \
            if "checkpoints" in names else []
        ckpt = None
        if ckpts:
            try:  # tensors and plain containers only: a checkpoint can run no code while it loads
                ckpt = torch.load(client.download_artifacts(run_id, ckpts[0], tmp), map_location="cpu",
                                  weights_only=True)
            except Exception as err:  # noqa: BLE001 - pickle's UnpicklingError and friends
                raise ConfigError(f"run '{run_id}': checkpoint {ckpts[0]} holds more than tensors "
                                  f"({str(err).splitlines()[0][:200]}); refusing to load it") from None
        with open_dict(cfg):
            # The run's cache if it is still where the run left it, else this outputs folder's.
            if not Path(str(cfg.paths.cache_dir)).exists():
                root = Path(outputs or os.environ.get("TLEXP_OUTPUTS", "outputs"))
                cfg.paths.cache_dir = str(root / "cache")
            cfg.paths.output_dir = str(Path(tmp) / "run")
        scenario, source_fp = load_scenario(cfg)
        strategy = make_strategy(cfg)
        if strategy.trains and ckpt is None:
            raise ConfigError(f"run '{run_id}' logged no checkpoint (logger.log_checkpoint=false), so its "
                              "trained weights are gone; rerun it with logger.log_checkpoint=true")
        asm = assemble(cfg, scenario, source_fp, strategy, NullLog())
        model = asm.built.model
        if ckpt is not None:  # the training module's checkpoint: the recommender's weights are under model.
            state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
            model.load_state_dict(state)
        # finish the model as the run did: the strategy's after-fit step, then its validation choices
        strategy.after_fit(asm.built, asm.inputs)
        model.eval()
        plan = EvaluationPlan(scenario.target, eval_settings(cfg), strategy.kshot_shots())
        with torch.no_grad():
            plan.select(model, strategy.candidates(asm.built))
    source = asm.inputs.models.get("source")
    if source is not None and source.domain.name != scenario.source.name:
        source = None  # pretrained on another domain: its items are not the user's source history
    return LoadedRun(run_id, cfg, scenario, model, source)


def parse_users(spec: str) -> list[str]:
    """``u1,u2`` or a file (one id per line, or a CSV with a 'user' column)."""
    p = Path(spec)
    if p.is_file():
        text = p.read_text()
        first = text.splitlines()[0] if text.strip() else ""
        if "," in first and "user" in first.split(","):
            return [str(u) for u in pd.read_csv(p, dtype=str)["user"].dropna()]
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    users = [u.strip() for u in spec.split(",") if u.strip()]
    if not users:
        raise ConfigError(f"users='{spec}' names no user; give ids like users=u1,u2 or a file with one id a line")
    return users


def recommend(loaded: LoadedRun, users: list[str], k: int = 10, exclude: str = "history") -> pd.DataFrame:
    """Top-``k`` items per user (rows: user, rank, item, title, category, score), seen items excluded."""
    import torch

    from tlexp.evaluation.metrics import topk_items

    if exclude not in ("history", "all"):
        raise ConfigError(f"exclude='{exclude}' is unknown; use exclude=history (train+valid items, as the run "
                          "was evaluated) or exclude=all (also the held-out test items)")
    target = loaded.scenario.target
    idx = target.user_index(np.asarray(users, dtype=object))
    unknown = [u for u, i in zip(users, idx, strict=True) if i < 0]
    if unknown:
        raise ConfigError(f"user(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} are not in the "
                          f"target domain '{target.name}' ({target.n_users} users, e.g. {', '.join(target.users[:3])})")
    if k < 1 or k > target.n_items:
        raise ConfigError(f"k={k} is out of range; the target domain has {target.n_items} items")
    parts = [target.train, target.valid] + ([target.test] if exclude == "all" else [])
    # only these users' rows: a single-user request must not copy the whole interaction table
    seen = pd.concat([df[df["user"].isin(idx)] for df in parts])
    seen = seen.groupby("user")["item"].apply(lambda s: np.unique(s.to_numpy()))
    model = loaded.model
    rows = []
    bs = int(loaded.cfg.eval.batch_size)
    with torch.no_grad():
        score_fn = model.score_fn()
        for lo in range(0, len(idx), bs):
            chunk = idx[lo: lo + bs].astype(np.int64)
            scores = score_fn(torch.from_numpy(chunk).to(model.device)).float()
            for b, u in enumerate(chunk):
                if u in seen.index:
                    scores[b, torch.from_numpy(seen[u]).to(scores.device)] = -torch.inf
            n_ok = int(torch.isfinite(scores).sum(1).min())
            top = topk_items(scores, min(k, n_ok)).cpu().numpy()
            for b, u in enumerate(chunk):
                for r, item in enumerate(top[b]):
                    rows.append((target.users[u], r + 1, int(item), float(scores[b, item])))
    info = target.item_info
    out = pd.DataFrame(rows, columns=["user", "rank", "item_index", "score"])
    out["item"] = info["item"].to_numpy()[out["item_index"]]
    out["title"] = info["text"].to_numpy()[out["item_index"]]
    out["category"] = info["category"].to_numpy()[out["item_index"]]
    held_out = set(zip(target.test["user"].to_numpy().tolist(), target.test["item"].to_numpy().tolist(), strict=True))
    user_idx = target.user_index(out["user"].to_numpy(dtype=object))
    out["hit"] = [(int(u), int(i)) in held_out for u, i in zip(user_idx, out["item_index"], strict=True)]
    return out[["user", "rank", "item", "title", "category", "score", "hit"]]


def user_history(loaded: LoadedRun, users: list[str], n: int = 5) -> pd.DataFrame:
    """Each user's last ``n`` known target items (train, then valid: what the model saw), newest last."""
    target = loaded.scenario.target
    idx = target.user_index(np.asarray(users, dtype=object))
    frames = [target.train.assign(split="train"), target.valid.assign(split="valid")]
    known = pd.concat(frames, ignore_index=True)
    known = known[known["user"].isin(idx[idx >= 0])]
    known = known.groupby("user", sort=False).tail(n)
    info = target.item_info
    out = pd.DataFrame({"user": target.users[known["user"].to_numpy()], "item": info["item"].to_numpy()[known["item"]],
                        "title": info["text"].to_numpy()[known["item"]],
                        "category": info["category"].to_numpy()[known["item"]], "split": known["split"].to_numpy()})
    order = {u: i for i, u in enumerate(users)}
    return out.sort_values("user", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
