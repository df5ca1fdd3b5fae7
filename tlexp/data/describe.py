"""What data is there, and what it looks like: the presets and domains, and a scenario's statistics.

``describe`` composes the run config exactly as ``tlexp run`` would (same overrides), builds (or
reads from cache) the scenario and returns, for source and target, the statistics a paper's
"datasets" table needs, plus what cleaning removed. The ``tlexp data`` command prints them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def first_comment(path: Path) -> str:
    """The first comment line of a yaml that is not a Hydra directive: its one-line description."""
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("#") and not s.startswith("# @package"):
            return s.lstrip("#").strip()
        if s and not s.startswith("#"):
            break
    return ""


def preset_direction(path: Path) -> str:
    src = tgt = "?"
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("- override /source:"):
            src = s.split(":", 1)[1].strip()
        elif s.startswith("- override /target:"):
            tgt = s.split(":", 1)[1].strip()
    return f"{src} -> {tgt}"


def listing() -> dict:
    from tlexp.core.config import config_dir

    conf = config_dir()
    presets = {p.stem: {"direction": preset_direction(p), "description": first_comment(p)}
               for p in sorted((conf / "data").glob("*.yaml"))}
    domains = {p.stem: {"description": first_comment(p)} for p in sorted((conf / "domain").glob("*.yaml"))}
    return {"presets": presets, "domains": domains}


def _cleaning_counts(loader, cache_dir: str | None) -> dict:
    """What cleaning removed; cached next to the scenarios (keyed by the loader's fingerprint) so a
    cached describe does not reload the raw files."""
    get = getattr(loader, "cleaning_counts", None)
    if get is None:  # e.g. the synthetic world: nothing is cleaned
        return {}
    if cache_dir is None:
        return get()
    from tlexp.core.cache import stable_hash

    path = Path(cache_dir) / "cleaning" / f"{loader.name}-{stable_hash(loader.fingerprint())}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    counts = get()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{np.random.randint(1 << 30)}.tmp")
    tmp.write_text(json.dumps(counts))
    tmp.replace(path)  # atomic: never a half-written file
    return counts


def domain_stats(dd, overlap: int, cleaning: dict | None = None) -> dict:
    """Statistics of one indexed, split domain (tlexp.data.scenario.DomainData)."""
    frames = [getattr(dd, s) for s in ("train", "valid", "test")]
    allx = pd.concat([f[["user", "item"]] for f in frames], ignore_index=True)
    per_user = allx.groupby("user").size().to_numpy() if len(allx) else np.zeros(1)
    n_users, n_items, n_inter = dd.n_users, dd.n_items, len(allx)
    train_items = set(np.unique(dd.train["item"].to_numpy()).tolist())
    test_items = np.unique(dd.test["item"].to_numpy())
    return {
        "domain": dd.name,
        "users": int(n_users),
        "items": int(n_items),
        "items_with_interactions": int(allx["item"].nunique()),
        "interactions": int(n_inter),
        "density": float(n_inter / max(1, n_users * n_items)),
        "items_with_text": int((dd.item_info["text"].astype(str).str.strip() != "").sum()),
        "overlap_users": int(overlap),
        "cold_start_users_in_test": int(len(dd.cold_users)),
        "cold_start_users_in_valid": int(len(dd.valid_cold_users)),
        "order": "time" if dd.ordered else "random per user (no time order in the data)",
        "cold_start_items_in_test": int(sum(i not in train_items for i in test_items.tolist())),
        "interactions_per_user_median": float(np.median(per_user)),
        "interactions_per_user_p90": float(np.percentile(per_user, 90)),
        "train": int(len(dd.train)), "valid": int(len(dd.valid)), "test": int(len(dd.test)),
        "cleaning": dict(cleaning or {}),
    }


def describe(overrides: list[str]) -> dict:
    """Compose the config, build (or read) the scenario, return the statistics of both domains."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tlexp.core.config import compose
    from tlexp.data.scenario import build_scenario

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(list(overrides) + [f"paths.output_dir={tmp}"])
        source, target = instantiate(cfg.source), instantiate(cfg.target)
        split = OmegaConf.to_container(cfg.split, resolve=True)
        cache_dir = cfg.paths.get("cache_dir")
        scn = build_scenario(source, target, split, cache_dir)
    overlap = int(scn.overlap_users().size)
    return {
        "scenario": scn.name, "key": scn.key, "cache_hit": bool(scn.cache_hit), "split": split,
        "source": domain_stats(scn.source, overlap, _cleaning_counts(source, cache_dir)),
        "target": domain_stats(scn.target, overlap, _cleaning_counts(target, cache_dir)),
    }
