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
from tlexp.core.signals import Interrupted, install

register()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one configured experiment; returns the validation monitor (``eval.monitor``) for sweepers."""
    from rich.console import Console
    from rich.markup import escape

    from tlexp.analysis.report import print_result
    from tlexp.pipeline import run_pipeline

    from tlexp.core.console import quiet_third_party

    quiet_third_party()
    logging.captureWarnings(True)  # into run.log (conf/hydra/default.yaml), never onto the console
    err_console = Console(stderr=True, soft_wrap=True)
    try:
        if cfg.get("resume"):
            from tlexp.pipeline.resume import resume_config

            cfg = resume_config(cfg)
            err_console.print(f"resuming run {cfg.resume} in {cfg.paths.output_dir} (its own logged config; "
                              "other overrides are not applied)", highlight=False)
        result = run_pipeline(cfg)
    except TlexpError as err:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False)
        sys.exit(2)
    except Exception as err:
        if not tracking_failure(err):
            raise
        from tlexp.pipeline.run import CURRENT

        where = f"; its checkpoints are in {CURRENT['run_dir']}/checkpoints" if CURRENT.get("run_dir") else ""
        hint = f"; when the store is back: tlexp run resume={CURRENT['run_id']}" if CURRENT.get("run_id") else ""
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        err_console.print(f"[bold red]error:[/bold red] the tracking store {escape(CURRENT.get('tracking_uri', ''))} "
                          f"stopped answering ({escape(first)}){escape(where)}{escape(hint)}", highlight=False)
        sys.exit(3)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM, at any stage: the run is KILLED
        code = stop.exit_code if isinstance(stop, Interrupted) else 130
        err_console.print(f"[bold yellow]stopped:[/bold yellow] {escape(str(stop) or 'stopped by SIGINT')} "
                          "(the MLflow run is marked KILLED)", highlight=False)
        sys.exit(code)
    if result.get("main_process", True):
        print_result(result)
    return result["metrics"].get(result["monitor"])


def tracking_failure(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is the tracking store failing: MLflow, HTTP or connection errors."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        module = type(cur).__module__
        if module.startswith(("mlflow", "requests", "urllib3")) or isinstance(cur, ConnectionError):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def main(overrides: list[str]) -> int:
    """Run Hydra on ``overrides`` (``tlexp run`` minus the word ``run``)."""
    sys.argv = [sys.argv[0], *overrides]
    install()  # SIGINT and SIGTERM raise Interrupted at every stage
    hydra_main()
    return 0
