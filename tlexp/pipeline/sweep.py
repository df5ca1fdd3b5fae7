"""A sweep (Hydra multirun) as one MLflow parent run with every job nested under it.

The Hydra callback runs in the launching process: ``on_multirun_start`` before any job (it creates
the store's tables, the experiment and the parent run, so parallel jobs never race on them — see
:mod:`tlexp.tracking.sweep`), ``on_multirun_end`` after the last one. A sweep that raises never
reaches the end hook; an ``atexit`` hook then ends its parent FAILED, so no parent stays RUNNING.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tlexp.tracking.sweep import SweepInfo, end_parent_run, read_sweep_file, start_parent_run

log = logging.getLogger(__name__)

_OPEN: dict[str, SweepInfo] = {}


@atexit.register
def _end_open_parents() -> None:
    for info in list(_OPEN.values()):
        try:
            end_parent_run(info, "FAILED")
        except Exception:  # noqa: BLE001 - at exit, report and move on
            log.warning("could not end sweep parent run %s", info.parent_run_id)
    _OPEN.clear()


class MlflowSweepCallback(Callback):
    """Registered in conf/hydra/default.yaml; active for multiruns only (single runs ignore it).

    It keeps no MLflow objects as attributes: Hydra pickles callbacks into launcher workers.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        info = start_parent_run(config, sweep_dir)
        _OPEN[info.sweep_id] = info
        log.info("sweep %s: MLflow parent run %s in experiment '%s' at %s", info.sweep_id,
                 info.parent_run_id, info.experiment_name, info.tracking_uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        info = read_sweep_file(Path(str(config.hydra.sweep.dir)))
        if info is None:
            return
        end_parent_run(info)
        _OPEN.pop(info.sweep_id, None)
        print(f"sweep {info.sweep_id}: parent MLflow run {info.parent_run_id} in experiment "
              f"'{info.experiment_name}'  (compare: tlexp compare --sweep {info.sweep_id})")
