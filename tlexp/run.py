"""``tlexp run``: the Hydra entry point (single runs and ``-m`` sweeps)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from tlexp.config import config_dir, register_resolvers
from tlexp.errors import TlexpError

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one configured experiment; returns val/ndcg_at_10 for sweepers to optimise."""
    from rich.console import Console

    from tlexp.pipeline import run_pipeline
    from tlexp.report import print_result

    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                  "alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = run_pipeline(cfg)
    except TlexpError as err:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {err}", highlight=False)
        sys.exit(2)
    print_result(result)
    return result["metrics"].get("val/ndcg_at_10")
