"""scripts/optimise_grid.py without training: matching runs to configurations, the choice on validation,
the table's arithmetic (best baseline per segment, Δwarm paired by seed, share of the cold gain kept) and
the grouping of missing runs into Hydra sweeps."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from tlexp.core.config import project_root


@pytest.fixture(scope="module")
def og():
    spec = importlib.util.spec_from_file_location("optimise_grid", project_root() / "scripts" / "optimise_grid.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["optimise_grid"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("optimise_grid", None)


def run(og, cfg, seed, val_combined=0.0, test=0.0, warm=0.0, cold=0.0, start=0.0):
    return {"config": cfg, "seed": seed, "start": start, "seconds": 1.0,
            "metrics": {"val_combined/ndcg_at_10": val_combined, "test/ndcg_at_10": test,
                        "test_warm/ndcg_at_10": warm, "test_cold/ndcg_at_10": cold}}


def test_config_matches_logged_params(og):
    params = {"strategy.name": "finetune", "transfer.lr_scale": "1.0", "regularize.l2_sp": "0.001",
              "augment.name": "interaction_dropout", "augment.p": "0.3"}
    assert og.Config("finetune", 1.0, 0.001, 0.3).matches(params)
    assert not og.Config("finetune", 1.0, 0.001, 0.1).matches(params)
    assert not og.Config("finetune", 1.0, 0.0, 0.3).matches(params)
    assert not og.Config("finetune", 1.0, 0.001).matches(params)  # augmented run is not the plain one
    assert og.Config("finetune", 0.1).matches({"strategy.name": "finetune", "transfer.lr_scale": "0.1",
                                               "regularize.l2_sp": "0.0", "augment.name": "none", "augment.p": "0.0"})
    assert og.Config("popular").matches({"strategy.name": "popular", "transfer.lr_scale": "0.1",
                                         "regularize.l2_sp": "0.0", "augment.name": "none"})


def test_select_reads_validation_only_and_breaks_ties_by_grid_order(og):
    a, b, c = og.grid("finetune+aug")[:3]
    runs = [run(og, a, 0, val_combined=0.02, test=0.9), run(og, b, 0, val_combined=0.03, test=0.1),
            run(og, c, 0, val_combined=0.03, test=0.5), run(og, a, 1, val_combined=0.9)]
    assert og.select([a, b, c], runs, seed=0) == b  # not c (tie, later), not a (best test, other seed)
    with pytest.raises(LookupError):
        og.select(og.grid("finetune+aug"), runs, seed=0)  # the fourth candidate has no run


def test_both_grid_uses_the_chosen_l2_sp_weight(og):
    assert {c.l2_sp for c in og.grid("finetune+both", 0.01)} == {0.01}
    assert {c.aug_p for c in og.grid("finetune+both", 0.01)} == {0.1, 0.3}
    with pytest.raises(ValueError):
        og.grid("finetune+both")


def test_latest_run_of_a_seed_wins(og):
    cfg = og.Config("scratch")
    runs = [run(og, cfg, 0, test=0.1, start=1), run(og, cfg, 0, test=0.2, start=2)]
    assert [r["metrics"]["test/ndcg_at_10"] for r in og.runs_of(runs, cfg)] == [0.2]


def test_table_arithmetic(og):
    seeds = [0, 1, 2]
    runs = []
    for s in seeds:  # itemknn best on warm (0.03), popular best on cold (0.05)
        runs += [run(og, og.Config("popular"), s, test=0.02, warm=0.01, cold=0.05),
                 run(og, og.Config("itemknn"), s, test=0.04, warm=0.03, cold=0.04),
                 run(og, og.Config("ease"), s, test=0.01, warm=0.01, cold=0.01),
                 run(og, og.Config("scratch"), s, test=0.01 + s / 1000, warm=0.01, cold=0.0)]
    plain, l2sp = og.Config("finetune", 0.1), og.Config("finetune", 1.0, 0.001)
    for s in seeds:
        runs += [run(og, plain, s, warm=0.02, cold=0.09 + (s - 1) / 100),  # cold mean 0.09: gain 0.04
                 run(og, l2sp, s, warm=0.03 + s / 100, cold=0.085)]        # gain 0.035: 87.5 %
    table, numbers = og.results_table(runs, {"finetune": plain, "finetune+L2-SP": l2sp}, seeds)
    assert numbers["best_baseline"] == {"test/ndcg_at_10": "itemknn", "test_warm/ndcg_at_10": "itemknn",
                                        "test_cold/ndcg_at_10": "popular"}
    m, s, n = numbers["families"]["finetune"]["test_cold/ndcg_at_10"]
    assert (m, n) == (pytest.approx(0.09), 3) and s == pytest.approx(0.01)  # sample std (n - 1)
    assert numbers["families"]["finetune"]["kept_share"] == pytest.approx(1.0)
    assert numbers["families"]["finetune"]["goal"] == "no"  # warm 0.02 < itemknn's 0.03
    fam = numbers["families"]["finetune+L2-SP"]
    assert fam["cold_gain"] == pytest.approx(0.035)
    assert fam["kept_share"] == pytest.approx(0.875)
    assert fam["delta_warm"][0] == pytest.approx(0.01) and fam["delta_warm"][2] == 3
    assert fam["goal"] == "yes"
    assert "87 %" in table or "88 %" in table


def test_no_cold_gain_is_said_not_divided(og):
    assert og.kept_share(0.01, 0.0) is None and og.kept_share(0.01, -0.02) is None
    assert og.kept_share(0.01, 0.02) == pytest.approx(0.5)
    runs = []
    for s in (0, 1, 2):
        runs += [run(og, og.Config(b), s, warm=0.01, cold=0.05) for b in og.BASELINES]
        runs.append(run(og, og.Config("finetune", 0.1), s, warm=0.02, cold=0.04))
    table, numbers = og.results_table(runs, {"finetune": og.Config("finetune", 0.1)}, [0, 1, 2])
    assert numbers["families"]["finetune"]["kept_share"] is None
    assert "no gain" in table


def test_mean_std_skips_missing_values(og):
    assert og.mean_std([0.1, math.nan, 0.3])[::2] == (pytest.approx(0.2), 2)
    assert og.mean_std([0.5]) == (0.5, 0.0, 1)
    assert og.mean_std([])[2] == 0


def test_missing_runs_become_cartesian_sweeps(og):
    cfgs = og.grid("finetune+aug")
    full = og.sweeps([(c, 0) for c in cfgs])
    assert full == [{"strategy": ["finetune"], "transfer.lr_scale": ["0.1", "1.0"], "augment": ["interaction_dropout"],
                     "augment.p": ["0.1", "0.3"], "seed": ["0"]}]
    part = og.sweeps([(cfgs[0], 0), (cfgs[3], 0)])  # not a product: one sweep per configuration
    assert len(part) == 2 and all(len(v) == 1 for sw in part for v in sw.values())
    base = og.sweeps([(og.Config(b), s) for b in og.BASELINES for s in (0, 1, 2)])
    assert base == [{"strategy": list(og.BASELINES), "seed": ["0", "1", "2"]}]
    assert og.sweeps([(cfgs[0], 1), (cfgs[0], 2)]) == [{**{k: [v] for k, v in cfgs[0].overrides().items()},
                                                        "seed": ["1", "2"]}]


def test_a_seedless_baseline_stands_on_its_one_run_and_says_so(og):
    ease, pop = og.Config("ease"), og.Config("popular")
    runs = [run(og, ease, 0, warm=0.05, cold=0.02)] + [run(og, pop, s, warm=0.01, cold=0.03) for s in (0, 1, 2)]
    view = og.expand_seedless(runs, [ease], 0, [0, 1, 2])
    assert sorted(r["seed"] for r in og.runs_of(view, ease)) == [0, 1, 2]
    assert sum(1 for r in view if r.get("reused")) == 2
    assert og.expand_seedless(runs, [og.Config("itemknn")], 0, [0, 1, 2]) == runs  # no run: nothing invented
    ft = og.Config("finetune", 0.1)
    view += [run(og, ft, s, warm=0.06, cold=0.05) for s in (0, 1, 2)]
    table, numbers = og.results_table(view, {"finetune": ft}, [0, 1, 2])
    assert numbers["best_baseline"]["test_warm/ndcg_at_10"] == "ease"
    assert numbers["families"]["finetune"]["delta_warm"][2] == 3  # paired with the reused run
    assert "1 run for 3 seeds" in table
    assert og.seed_spread(view, ease, [0, 1, 2]) != og.seed_spread(view, ease, [0, 1, 2])  # NaN: one own run
    assert og.seed_spread(view, pop, [0, 1, 2]) == 0.0
