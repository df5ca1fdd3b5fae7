"""Orchestration: the stage order of one run (:mod:`tlexp.pipeline.run`), building a run's model
(:mod:`tlexp.pipeline.build`, shared with serving) and sweeps as MLflow parent runs
(:mod:`tlexp.pipeline.sweep`)."""

from tlexp.pipeline.build import load_scenario
from tlexp.pipeline.run import run_pipeline

__all__ = ["load_scenario", "run_pipeline"]
