"""scripts/benchmark.py: every entry's overrides and search space name real config keys, and the #16
variants are finetune plus their own knobs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _a_value(space: str) -> str:
    """One value from a sweeper search-space string (choice / interval / tag(log, interval))."""
    if "choice(" in space:
        return re.search(r"choice\(([^,)]+)", space).group(1)
    return re.search(r"interval\(([^,]+),", space).group(1)


@pytest.mark.parametrize("entry", ["scratch", "finetune", "finetune_l2sp", "finetune_aug", "finetune_both", "adapt"])
def test_entries_compose_into_a_valid_config(entry: str):
    from tlexp.core.config import compose

    b = _script()
    overrides = [*b.strategy_args(entry), *(f"{k}={_a_value(v)}" for k, v in b.SPACES[entry].items())]
    cfg = compose(overrides)
    assert cfg.strategy.name == b.VARIANTS.get(entry, (entry, []))[0]
    if entry.startswith("finetune_"):
        assert set(b.SPACES["finetune"]) < set(b.SPACES[entry])
    if entry in ("finetune_aug", "finetune_both"):
        assert cfg.augment.name == "interaction_dropout" and 0 < cfg.augment.p < 1
    if entry in ("finetune_l2sp", "finetune_both"):
        assert cfg.regularize.l2_sp > 0
