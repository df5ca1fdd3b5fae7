"""``tlexp run``: the Hydra entry point (single runs and ``-m`` sweeps).

The process keeps the real ``tlexp`` executable as ``sys.argv[0]`` and gets the overrides as its
arguments (the ``run`` word is dropped by :mod:`tlexp.cli.app`). That is what lets Lightning's
``ddp`` strategy relaunch the run in its worker processes (it re-executes ``sys.argv``) and what
Hydra's shell completion script is installed for.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from tlexp.core.config import config_dir, register
from tlexp.core.errors import TlexpError

register()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one configured experiment; returns the validation monitor (``eval.monitor``) for sweepers."""
    from rich.console import Console
    from rich.markup import escape

    from tlexp.analysis.report import print_result
    from tlexp.pipeline import run_pipeline

    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                  "alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = run_pipeline(cfg)
    except TlexpError as err:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False)
        sys.exit(2)
    if result.get("main_process", True):
        print_result(result)
    return result["metrics"].get(result["monitor"])


def main(overrides: list[str]) -> int:
    """Run Hydra on ``overrides`` (``tlexp run`` minus the word ``run``)."""
    sys.argv = [sys.argv[0], *overrides]
    hydra_main()
    return 0
