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

from tlexp.analysis.compare import UnlikeRuns, compare_table, run_compare, to_markdown
from tlexp.analysis.statistics import holm, paired_t_test, t_interval
from tlexp.core.errors import ConfigError
from tlexp.tracking.queries import load_runs

# strategy -> per-seed (all, warm, cold) test ndcg@10
VALUES = {
    "scratch": {0: (0.10, 0.11, 0.05), 1: (0.12, 0.12, 0.06), 2: (0.11, 0.115, 0.04)},
    "finetune": {0: (0.13, 0.12, 0.15), 1: (0.14, 0.135, 0.16), 2: (0.125, 0.12, 0.17)},
    "popular": {0: (0.05, 0.05, 0.05), 1: (0.05, 0.05, 0.05), 2: (0.05, 0.05, 0.07)},
}
# what a run's config looks like to compare: one hash tag per top-level node (tlexp/tracking/run.py)
CONFIG = {"config.source": "ecommerce1", "config.target": "social1", "config.split": "loo1",
          "config.backbone": "tt64", "config.optimizer": "adam5e-3", "config.transfer": "t01"}
STRATEGY_NODE = {"scratch": "s1", "finetune": "f1", "popular": "p1"}


def log_run(client, exp, strategy, seed, values, config=None, sweep="S1", parent=None, status="FINISHED"):
    tags = {"strategy": strategy, "seed": str(seed), "backbone": "two_tower", "sweep_id": sweep,
            **(config or CONFIG), "config.strategy": STRATEGY_NODE.get(strategy, strategy)}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp, tags=tags)
    rid = run.info.run_id
    a, w, c = values
    for k, v in {"test/ndcg_at_10": a, "test_warm/ndcg_at_10": w, "test_cold/ndcg_at_10": c,
                 "val/ndcg_at_10": a + 0.01}.items():
        client.log_metric(rid, k, v)
    client.log_param(rid, "optimizer.lr", "0.005" if (config or CONFIG)["config.optimizer"] == "adam5e-3" else "0.001")
    client.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """9 finished runs (3 strategies x 3 seeds), a failed run, a sweep parent; 3 runs in another
    experiment; and a third experiment whose runs differ in their optimizer."""
    from mlflow.tracking import MlflowClient

    from tlexp.tracking.store import embedded_uri

    out = tmp_path_factory.mktemp("cmp") / "outputs"
    out.mkdir()
    uri = embedded_uri(out)
    client = MlflowClient(uri)
    exp = client.create_experiment("ecommerce-to-social", artifact_location=(out / "mlartifacts").as_uri())
    other = client.create_experiment("news-to-video", artifact_location=(out / "mlartifacts2").as_uri())
    mixed = client.create_experiment("mixed", artifact_location=(out / "mlartifacts3").as_uri())
    parent = client.create_run(exp, tags={"tlexp.sweep_parent": "true", "sweep_id": "S1"})
    client.set_terminated(parent.info.run_id)
    for strategy, seeds in VALUES.items():
        for seed, values in seeds.items():
            log_run(client, exp, strategy, seed, values, parent=parent.info.run_id)
    log_run(client, exp, "finetune", 3, (0.99, 0.99, 0.99), status="FAILED")
    video = {**CONFIG, "config.source": "news1", "config.target": "video1"}
    for seed in range(3):
        log_run(client, other, "scratch", seed, (0.5, 0.5, 0.5), config=video, sweep="S0")
    for seed in range(3):  # finetune with two optimizers: not one group
        log_run(client, mixed, "finetune", seed, (0.2, 0.2, 0.2), sweep="S2")
        log_run(client, mixed, "finetune", seed, (0.3, 0.3, 0.3), sweep="S2",
                config={**CONFIG, "config.optimizer": "adam1e-3"})
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
    assert t.loc["finetune", "test/ndcg_at_10 mean"] == pytest.approx(np.mean([0.13, 0.14, 0.125]))
    assert t.loc["finetune", "test/ndcg_at_10 std"] == pytest.approx(np.std([0.13, 0.14, 0.125], ddof=1))


def test_each_segment_is_compared_with_its_best_baseline_paired_by_seed(store: str):
    """all/warm: scratch beats popular, so it is the baseline; cold: popular (0.0567) beats scratch (0.05)."""
    from scipy import stats

    table = compare_table(load_runs(store, sweep="S1"), "test_cold/ndcg_at_10", ["strategy"])
    assert table.attrs["baselines"] == {"test/ndcg_at_10": "scratch", "test_warm/ndcg_at_10": "scratch",
                                        "test_cold/ndcg_at_10": "popular"}
    t = table.set_index("strategy")
    fine = np.array([VALUES["finetune"][s][2] for s in range(3)])
    base = np.array([VALUES["popular"][s][2] for s in range(3)])
    d = fine - base
    assert t.loc["finetune", "test_cold/ndcg_at_10 gain_pct"] == pytest.approx(d.mean() / base.mean() * 100)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert t.loc["finetune", "test_cold/ndcg_at_10 ci_low"] == pytest.approx((d.mean() - half) / base.mean() * 100)
    assert t.loc["finetune", "test_cold/ndcg_at_10 ci_high"] == pytest.approx((d.mean() + half) / base.mean() * 100)
    assert t.loc["finetune", "test_cold/ndcg_at_10 p"] == pytest.approx(stats.ttest_rel(fine, base).pvalue)
    # Holm over every comparison shown: finetune and scratch against popular on cold, finetune and
    # popular against scratch on all and warm: six p-values
    ps = [v for c in table.attrs["columns"] for v in t[f"{c} p"].dropna()]
    assert len(ps) == 6
    assert t.loc["finetune", "test_cold/ndcg_at_10 p_holm"] == pytest.approx(
        holm(ps)[ps.index(t.loc["finetune", "test_cold/ndcg_at_10 p"])])
    assert t.loc["popular", "test_cold/ndcg_at_10 baseline"] == "popular"
    assert t.loc["scratch", "test/ndcg_at_10 baseline"] == "scratch"
    # --baseline forces one
    forced = compare_table(load_runs(store, sweep="S1"), "test/ndcg_at_10", ["strategy"], baseline="popular")
    assert set(forced.attrs["baselines"].values()) == {"popular"}


def test_unlike_runs_are_never_pooled_silently(store: str):
    # two scenarios in one table: refused, naming the nodes that differ
    both = pd.concat([load_runs(store, "ecommerce-to-social"), load_runs(store, "news-to-video")])
    with pytest.raises(UnlikeRuns, match=r"source .*target|target .*source"):
        compare_table(both, "test/ndcg_at_10", ["strategy"])
    # one strategy with two optimizers: refused within the group, unless --by separates them
    mixed = load_runs(store, "mixed")
    with pytest.raises(UnlikeRuns, match=r"optimizer \(within 'finetune'\).*optimizer.lr: 0.001, 0.005"):
        compare_table(mixed, "test/ndcg_at_10", ["strategy"])
    split = compare_table(mixed, "test/ndcg_at_10", ["strategy", "optimizer.lr"])
    assert split["n"].tolist() == [3, 3] and not split.attrs["pooled"]
    pooled = compare_table(mixed, "test/ndcg_at_10", ["strategy"], pool=True)
    assert pooled["n"].tolist() == [6] and set(pooled.attrs["pooled"]) == {"optimizer"}
    assert "POOLED (--pool)" in to_markdown(pooled)
    # runs without config tags cannot be checked
    bare = load_runs(store, "ecommerce-to-social").drop(columns=[c for c in mixed.columns if "tags.config." in c])
    with pytest.raises(UnlikeRuns, match="no config"):
        compare_table(bare, "test/ndcg_at_10", ["strategy"])


def test_the_command_refuses_unlike_runs_with_a_non_zero_exit(store: str, tmp_path: Path, capsys, monkeypatch):
    from tlexp.cli.app import main

    outputs = Path(store.removeprefix("sqlite:///")).parent
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["compare", "--outputs", str(outputs)]) == 2  # three experiments in one table
    err = capsys.readouterr().err
    assert "differ in more than the seed" in err and "--pool" in err
    assert main(["compare", "--outputs", str(outputs), "--experiment", "ecommerce-to-social"]) == 0
    assert main(["compare", "--outputs", str(outputs), "--pool"]) == 0
    assert "POOLED" in capsys.readouterr().out


def test_fewer_than_three_seeds_warns(store: str):
    df = load_runs(store, "ecommerce-to-social")
    two = df[df["tags.seed"].isin(["0", "1"])]
    assert any("fewer than 3 paired seeds" in w for w in compare_table(two, "test/ndcg_at_10").attrs["warnings"])
    assert not compare_table(df, "test/ndcg_at_10").attrs["warnings"]


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


def test_holm_and_t_interval_are_the_textbook_ones():
    from scipy import stats

    # Holm: sorted p * (m - rank), running maximum, capped at 1, back in input order
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    d = np.array([0.01, 0.03, 0.02, 0.04])
    lo, hi = t_interval(d)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half))
    assert all(math.isnan(x) for x in t_interval([0.1]))


def test_filters_by_experiment_and_sweep_and_groups_by_params(store: str):
    other = compare_table(load_runs(store, "news-to-video"), "test/ndcg_at_10", ["strategy"])
    assert other["n"].tolist() == [3] and other["test/ndcg_at_10 mean"].iloc[0] == pytest.approx(0.5)
    assert load_runs(store, sweep="latest")["tags.sweep_id"].unique().tolist() == ["S2"]  # created last
    by_two = compare_table(load_runs(store, sweep="S1"), "test/ndcg_at_10", ["strategy", "optimizer.lr"])
    assert set(by_two["optimizer.lr"]) == {"0.005"} and len(by_two) == 3
    with pytest.raises(ConfigError, match="no tag or param"):
        compare_table(load_runs(store, sweep="S1"), "test/ndcg_at_10", ["nonsense"])
    with pytest.raises(ConfigError, match="is not logged"):
        compare_table(load_runs(store, sweep="S1"), "test/hit_at_99", ["strategy"])
    with pytest.raises(ConfigError, match="experiments there: Default, ecommerce-to-social, mixed, news-to-video"):
        load_runs(store, "no-such-experiment")
    with pytest.raises(ConfigError, match="known sweeps: S0, S1, S2"):
        load_runs(store, sweep="S9")


def test_outputs_markdown_csv_plot_and_best_highlight(store: str, tmp_path: Path):
    from rich.console import Console

    console = Console(record=True, width=200)
    table = run_compare(store, experiment="ecommerce-to-social", metric="test_cold/ndcg_at_10",
                        csv=str(tmp_path / "t.csv"), markdown=str(tmp_path / "t.md"),
                        plot=str(tmp_path / "t.png"), console=console)
    assert list(table["strategy"]) == ["finetune", "popular", "scratch"]
    text = console.export_text()
    assert "finetune" in text and "0.1600 ± 0.0100" in text and "baseline" in text and "Δ cold vs popular" in text
    csv = pd.read_csv(tmp_path / "t.csv")
    assert csv.set_index("strategy").loc["finetune", "test_cold/ndcg_at_10 mean"] == pytest.approx(0.16)
    assert csv.set_index("strategy").loc["finetune", "test_cold/ndcg_at_10 baseline"] == "popular"
    md = (tmp_path / "t.md").read_text()
    # best mean per column in bold: finetune in every column (warm: 0.125 vs scratch 0.115)
    assert "| finetune | 3 | **0.1317 ± 0.0076** |" in md
    assert "| popular | 3 | 0.0500 ± 0.0000 |" in md
    assert "Δ all vs scratch" in md and "Δ cold vs popular" in md and "Holm" in md
    png = (tmp_path / "t.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image as mpimg

    img = mpimg.imread(tmp_path / "t.png")
    assert img.shape[0] > 300 and float(img[..., :3].std()) > 0.05  # not a blank canvas
