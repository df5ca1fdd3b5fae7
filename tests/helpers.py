"""Shared test helpers: a tiny synthetic world, configs on it, reading a store, building a run's model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Small enough for seconds per run, large enough that training beats chance.
TINY = [
    "world.n_users=800", "source.n_items=300", "target.n_items=300",
    "trainer=debug", "trainer.max_epochs=3", "pretrain.max_epochs=3", "batch_size=256",
    "logger.predictions_sample=20",
]

TLEXP = [sys.executable, "-m", "tlexp.cli"]


def tiny_cfg(outputs: Path, *overrides: str, run_dir: str = "run"):
    """The composed run config on the tiny world, writing under ``outputs``."""
    from tlexp.core.config import compose

    return compose([*TINY, f"paths.output_root={outputs}", f"paths.output_dir={outputs / run_dir}",
                    *overrides])


def mlflow_runs(uri: str):
    """All runs in the store at ``uri`` as a DataFrame (mlflow.search_runs), leaving no global state."""
    from tlexp.tracking.queries import search_runs

    return search_runs(uri)


def assembled(cfg):
    """What the pipeline builds for ``cfg`` before training (stages trained or fetched from the cache)."""
    from tlexp.pipeline.build import assemble, load_scenario, make_strategy
    from tlexp.tracking.run import NullLog

    scenario, fp = load_scenario(cfg)
    return assemble(cfg, scenario, fp, make_strategy(cfg), NullLog())


def run_cli(args: list[str], env: dict[str, str], timeout: int = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``tlexp <args>`` in a subprocess (real imports, real Hydra), with ``env`` added to the environment."""
    return subprocess.run([*TLEXP, *args], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


def save_tiny_encoder(path: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A random 2-layer BERT with MiniLM's tokenizer, saved as a Hugging Face folder (no download)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tlexp.models.text_encoder import resolve_model_path

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def finished_run(out: Path, *overrides: str) -> dict:
    """One finished tiny run in its own embedded store under ``out`` (module fixtures share it), with
    TLEXP_OUTPUTS pointing there while it runs and the environment restored after."""
    import os

    from tlexp.pipeline import run_pipeline

    old = {k: os.environ.get(k) for k in ("TLEXP_OUTPUTS", "MLFLOW_TRACKING_URI")}
    os.environ["TLEXP_OUTPUTS"] = str(out)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        return run_pipeline(tiny_cfg(out, *overrides))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
