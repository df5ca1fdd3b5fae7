"""`tlexp compare` on a real (embedded SQLite) store filled with runs of known metric values.

The runs are created with MlflowClient rather than trained, so that every expected number is
known exactly; the end-to-end check on trained sweep runs is in test_sweep.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import mlflow_runs

from tlexp.analysis.compare import compare_table, run_compare, to_markdown
from tlexp.analysis.statistics import paired_t_test
from tlexp.core.errors import ConfigError
from tlexp.tracking.queries import load_runs

# strategy -> per-seed (all, warm, cold) test ndcg@10
VALUES = {
    "scratch": {0: (0.10, 0.11, 0.05), 1: (0.12, 0.12, 0.06), 2: (0.11, 0.115, 0.04)},
    "finetune": {0: (0.13, 0.12, 0.15), 1: (0.14, 0.135, 0.16), 2: (0.125, 0.12, 0.17)},
    "popular": {0: (0.05, 0.05, 0.05), 1: (0.05, 0.05, 0.05), 2: (0.05, 0.05, 0.05)},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A store with 9 finished runs (3 strategies x 3 seeds), one failed run, a sweep parent, and
    3 runs in another experiment."""
    from mlflow.tracking import MlflowClient

    from tlexp.tracking.store import embedded_uri

    out = tmp_path_factory.mktemp("cmp") / "outputs"
    out.mkdir()
    uri = embedded_uri(out)
    client = MlflowClient(uri)
    exp = client.create_experiment("ecommerce-to-social", artifact_location=(out / "mlartifacts").as_uri())
    other = client.create_experiment("news-to-video", artifact_location=(out / "mlartifacts2").as_uri())
    parent = client.create_run(exp, tags={"tlexp.sweep_parent": "true", "sweep_id": "S1"})
    client.set_terminated(parent.info.run_id)
    for strategy, seeds in VALUES.items():
        for seed, (a, w, c) in seeds.items():
            run = client.create_run(exp, tags={"strategy": strategy, "seed": str(seed), "backbone": "two_tower",
                                               "sweep_id": "S1", "mlflow.parentRunId": parent.info.run_id})
            rid = run.info.run_id
            for k, v in {"test/ndcg_at_10": a, "test_warm/ndcg_at_10": w, "test_cold/ndcg_at_10": c,
                         "val/ndcg_at_10": a + 0.01}.items():
                client.log_metric(rid, k, v)
            client.log_param(rid, "optimizer.lr", "0.005")
            client.set_terminated(rid)
    failed = client.create_run(exp, tags={"strategy": "finetune", "seed": "3", "sweep_id": "S1"})
    client.log_metric(failed.info.run_id, "test/ndcg_at_10", 0.99)
    client.set_terminated(failed.info.run_id, "FAILED")
    for seed in range(3):
        r = client.create_run(other, tags={"strategy": "scratch", "seed": str(seed), "sweep_id": "S0"})
        client.log_metric(r.info.run_id, "test/ndcg_at_10", 0.5)
        client.set_terminated(r.info.run_id)
    return uri


def test_means_and_stds_equal_pandas_on_search_runs(store: str):
    table = compare_table(load_runs(store, "ecommerce-to-social"), "test/ndcg_at_10", ["strategy"])
    df = mlflow_runs(store)
    df = df[(df["status"] == "FINISHED") & (df["experiment_id"] == df.loc[df["tags.strategy"] == "popular",
                                                                           "experiment_id"].iloc[0])]
    df = df[df["tags.tlexp.sweep_parent"].isna()]
    expected = df.groupby("tags.strategy")[["metrics.test/ndcg_at_10", "metrics.test_cold/ndcg_at_10"]].agg(
        ["mean", "std", "count"])
    t = table.set_index("strategy")
    assert sorted(t.index) == ["finetune", "popular", "scratch"]
    for s in t.index:
        for col in ("test/ndcg_at_10", "test_cold/ndcg_at_10"):
            assert t.loc[s, f"{col} mean"] == pytest.approx(expected.loc[s, (f"metrics.{col}", "mean")], abs=1e-12)
            assert t.loc[s, f"{col} std"] == pytest.approx(expected.loc[s, (f"metrics.{col}", "std")], abs=1e-12)
        assert t.loc[s, "n"] == 3  # the FAILED finetune run (0.99) is left out
    # and against the numbers put in: finetune all = mean(0.13, 0.14, 0.125)
    assert t.loc["finetune", "test/ndcg_at_10 mean"] == pytest.approx(np.mean([0.13, 0.14, 0.125]))
    assert t.loc["finetune", "test/ndcg_at_10 std"] == pytest.approx(np.std([0.13, 0.14, 0.125], ddof=1))


def test_gain_and_paired_test_against_scratch(store: str):
    from scipy import stats

    table = compare_table(load_runs(store, sweep="S1"), "test_cold/ndcg_at_10", ["strategy"]).set_index("strategy")
    fine = [VALUES["finetune"][s][2] for s in range(3)]
    base = [VALUES["scratch"][s][2] for s in range(3)]
    assert table.loc["finetune", "gain_pct"] == pytest.approx((np.mean(fine) / np.mean(base) - 1) * 100)
    assert table.loc["finetune", "p_value"] == pytest.approx(stats.ttest_rel(fine, base).pvalue, rel=1e-9)
    assert table.loc["finetune", "n_pairs"] == 3
    assert bool(table.loc["scratch", "is_baseline"]) and math.isnan(table.loc["scratch", "p_value"])
    # the columns are the chosen metric on all three segments
    assert table.attrs["columns"] == ["test/ndcg_at_10", "test_warm/ndcg_at_10", "test_cold/ndcg_at_10"]


def test_paired_t_test_is_the_textbook_one():
    """t = mean(d) / (sd(d) / sqrt(n)) over the per-seed differences d, two-sided p from Student's t."""
    from scipy import stats

    a, b = [0.13, 0.14, 0.125, 0.15], [0.10, 0.12, 0.11, 0.10]
    d = np.subtract(a, b)
    t_hand = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    t, p = paired_t_test(a, b)
    assert t == pytest.approx(t_hand, rel=1e-12)
    assert p == pytest.approx(2 * stats.t.sf(abs(t_hand), d.size - 1), rel=1e-12)
    assert paired_t_test(b, a)[0] == pytest.approx(-t_hand) and paired_t_test(b, a)[1] == pytest.approx(p)
    # zero variance of the differences, too few pairs, unequal lengths
    assert paired_t_test([1.0, 2.0], [0.5, 1.5]) == (math.inf, 0.0)
    assert all(math.isnan(x) for x in paired_t_test([1.0, 2.0], [1.0, 2.0]))
    assert all(math.isnan(x) for x in paired_t_test([1.0], [0.0]))
    with pytest.raises(ValueError):
        paired_t_test([1.0, 2.0], [1.0])


def test_filters_by_experiment_and_sweep_and_groups_by_params(store: str):
    other = compare_table(load_runs(store, "news-to-video"), "test/ndcg_at_10", ["strategy"])
    assert other["n"].tolist() == [3] and other["test/ndcg_at_10 mean"].iloc[0] == pytest.approx(0.5)
    assert load_runs(store, sweep="latest")["tags.sweep_id"].unique().tolist() == ["S0"]  # created last
    by_two = compare_table(load_runs(store, sweep="S1"), "test/ndcg_at_10", ["strategy", "optimizer.lr"])
    assert set(by_two["optimizer.lr"]) == {"0.005"} and len(by_two) == 3
    with pytest.raises(ConfigError, match="no tag or param"):
        compare_table(load_runs(store, sweep="S1"), "test/ndcg_at_10", ["nonsense"])
    with pytest.raises(ConfigError, match="is not logged"):
        compare_table(load_runs(store, sweep="S1"), "test/hit_at_99", ["strategy"])
    with pytest.raises(ConfigError, match="experiments there: Default, ecommerce-to-social, news-to-video"):
        load_runs(store, "no-such-experiment")
    with pytest.raises(ConfigError, match="known sweeps: S0, S1"):
        load_runs(store, sweep="S9")


def test_outputs_markdown_csv_plot_and_best_highlight(store: str, tmp_path: Path):
    from rich.console import Console

    console = Console(record=True, width=160)
    table = run_compare(store, experiment="ecommerce-to-social", metric="test_cold/ndcg_at_10",
                        csv=str(tmp_path / "t.csv"), markdown=str(tmp_path / "t.md"),
                        plot=str(tmp_path / "t.png"), console=console)
    text = console.export_text()
    assert "finetune" in text and "0.1600 ± 0.0100" in text and "baseline" in text
    csv = pd.read_csv(tmp_path / "t.csv")
    assert csv.set_index("strategy").loc["finetune", "test_cold/ndcg_at_10 mean"] == pytest.approx(0.16)
    md = (tmp_path / "t.md").read_text()
    # best mean per column in bold: finetune in every column (warm: 0.125 vs scratch 0.115)
    assert "| finetune | 3 | **0.1317 ± 0.0076** |" in md
    assert "| popular | 3 | 0.0500 ± 0.0000 |" in md
    png = (tmp_path / "t.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image as mpimg

    img = mpimg.imread(tmp_path / "t.png")
    assert img.shape[0] > 300 and float(img[..., :3].std()) > 0.05  # not a blank canvas
    assert to_markdown(table).count("\n") == 2 + len(table)
