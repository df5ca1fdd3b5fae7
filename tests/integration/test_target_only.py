"""The target-only protocol (#13): `source=none` for strategies that transfer nothing, the ratio split
in a seeded random order (RecBole's RS + RO), and a clear refusal for strategies that need a source."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY, mlflow_runs

from tlexp.core.errors import ConfigError


def tiny_cfg(outputs: Path, *overrides: str, run_dir: str):
    """The tiny world without a source (so without its source.* overrides)."""
    from tlexp.core.config import compose

    return compose([*(o for o in TINY if not o.startswith("source.")), f"paths.output_root={outputs}",
                    f"paths.output_dir={outputs / run_dir}", *overrides])


def test_source_none_runs_the_target_alone_and_refuses_transfer(tmp_path: Path):
    from tlexp.pipeline import run_pipeline

    res = run_pipeline(tiny_cfg(tmp_path, "source=none", "strategy=scratch", "split=ratio", "split.order=random",
                                run_dir="scratch"))
    df = mlflow_runs(res["tracking_uri"]).set_index("run_id")
    run = df.loc[res["run_id"]]
    assert run["status"] == "FINISHED" and res["experiment"] == "social"  # named by the target alone
    assert run["tags.source"] == "none" and run["params.data.source_users"] == "0"
    # no source, no overlap users, so no cold-start segments
    assert "test_cold/ndcg_at_10" not in res["metrics"] and 0 < res["metrics"]["test/ndcg_at_10"] <= 1
    assert run["params.split.order"] == "random" and run["params.data.target_ordered"] == "False"
    pop = run_pipeline(tiny_cfg(tmp_path, "source=none", "strategy=popular", "split=ratio", run_dir="popular"))
    assert pop["segments"]["test"] == res["segments"]["test"]
    with pytest.raises(ConfigError, match="source=none"):
        run_pipeline(tiny_cfg(tmp_path, "source=none", "strategy=finetune", run_dir="finetune"))
