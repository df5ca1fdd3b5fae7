"""Run names tell runs apart; the command line and overrides are recorded."""

from __future__ import annotations

from tlexp.tracking.naming import naming_overrides, run_name, source_tags
from tlexp.tracking.sweep import experiment_name_for, swept_keys


def test_names_keep_what_distinguishes_runs_and_drop_where_files_go():
    name = run_name("finetune", ["optimizer.lr=3e-3", "paths.output_root=/x", "seed=1", "logger.predictions_sample=0",
                                 "data=douban_book_music", "trainer.enable_progress_bar=false"], 1, "two_tower")
    assert name == "finetune two_tower lr=3e-3 data=douban_book_music s1"


def test_keys_that_end_alike_keep_their_node():
    name = run_name("scratch", ["trainer.max_epochs=2", "pretrain.max_epochs=3", "backbone=sasrec"], 0, "sasrec")
    assert name == "scratch sasrec trainer.max_epochs=2 pretrain.max_epochs=3 s0"
    assert run_name("distill", ["backbone@strategy.teacher.backbone=sasrec"], 2, "two_tower") == \
        "distill two_tower teacher.backbone=sasrec s2"


def test_long_names_are_cut():
    assert len(run_name("finetune", [f"x{i}.y=1" for i in range(60)], 0)) == 200


def test_source_tags_record_the_overrides():
    tags = source_tags(["a=1", "b.c=2"])
    assert tags["tlexp.overrides"] == "a=1 b.c=2" and tags["mlflow.source.name"] == "tlexp run"
    assert naming_overrides(["hydra.job.chdir=true", "+paths.x=1", "optimizer=adamw"]) == ["optimizer=adamw"]


def test_swept_keys_and_the_experiment_of_a_data_sweep():
    assert swept_keys(["optimizer.lr=1e-3,3e-3", "seed=0,1,2", "data=social", "transfer.lr_scale=range(0,1,0.5)"]) \
        == ["optimizer.lr", "transfer.lr_scale"]
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"logger": {"experiment_name": None}, "source": {"name": "ecommerce"},
                            "target": {"name": "social"}})
    assert experiment_name_for(cfg, ["data=social,ecommerce", "seed=0,1"]) == "sweep data=social,ecommerce"
    assert experiment_name_for(cfg, ["strategy=scratch,finetune"]) == "ecommerce-to-social"
    cfg.logger.experiment_name = "mine"
    assert experiment_name_for(cfg, ["data=social,ecommerce"]) == "mine"
