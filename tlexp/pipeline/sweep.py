"""A sweep (Hydra multirun) as one MLflow parent run with every job nested under it.

The Hydra callback runs in the launching process: ``on_multirun_start`` before any job (it creates
the store's tables, the experiment and the parent run, so parallel jobs never race on them — see
:mod:`tlexp.tracking.sweep`), ``on_multirun_end`` after the last one. A sweep that raises never
reaches the end hook; an ``atexit`` hook then ends its parent FAILED, so no parent stays RUNNING.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tlexp.tracking.sweep import (
    DATA_NODES,
    SweepInfo,
    end_parent_run,
    read_sweep_file,
    start_parent_run,
    swept_keys,
)

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
        share_cores(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        info = start_parent_run(config, sweep_dir)
        _OPEN[info.sweep_id] = info
        log.info("sweep %s: MLflow parent run %s in experiment '%s' at %s", info.sweep_id,
                 info.parent_run_id, info.experiment_name, info.tracking_uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        info = read_sweep_file(Path(str(config.hydra.sweep.dir)))
        if info is None:
            return
        attach_report(info)
        end_parent_run(info)
        _OPEN.pop(info.sweep_id, None)
        print(f"sweep {info.sweep_id}: parent MLflow run {info.parent_run_id} in experiment "
              f"'{info.experiment_name}'  (compare: tlexp compare --sweep {info.sweep_id})")


def share_cores(config: DictConfig) -> None:
    """Parallel jobs on one machine share its cores: ``cores // n_jobs`` OpenMP threads each.

    The joblib launcher runs ``n_jobs`` jobs at once (all cores by default) and each job's torch would
    start one thread per core; OpenMP threads spin at every barrier waiting for a descheduled one, so
    that oversubscription costs several times the work, not twice. The launcher's workers are started
    after this and inherit the setting; a user's own ``OMP_NUM_THREADS`` is left alone.
    """
    launcher = config.hydra.get("launcher") or {}
    if "joblib" not in str(launcher.get("_target_", "")) or "OMP_NUM_THREADS" in os.environ:
        return
    cores = os.cpu_count() or 1
    n_jobs = int(launcher.get("n_jobs") or -1)
    n_jobs = max(cores + 1 + n_jobs, 1) if n_jobs < 0 else n_jobs  # joblib: -1 = all cores, -2 = all but one
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // max(n_jobs, 1)))


def attach_report(info: SweepInfo) -> None:
    """The sweep's compare table (markdown + CSV) and bar chart, one per scenario, as artifacts of its
    parent run (``compare/``): what the sweep found, next to the runs it found it with.

    Groups are the strategy plus every non-data key the sweep varied. A sweep whose runs cannot be
    compared (e.g. a knob varied inside a group) gets the reason as the tag ``compare.skipped``.
    """
    import tempfile

    from mlflow.tracking import MlflowClient
    from rich.console import Console

    from tlexp.analysis.compare import compare_table, notes, to_markdown
    from tlexp.analysis.plots import compare_bars
    from tlexp.core.errors import TlexpError
    from tlexp.tracking.queries import load_runs

    client = MlflowClient(tracking_uri=info.tracking_uri)
    try:
        overrides = client.get_run(info.parent_run_id).data.tags.get("sweep.overrides", "").split()
        by = ["strategy", *[k for k in swept_keys(overrides) if k.split(".")[0] not in DATA_NODES
                            and k not in ("strategy", "hparams_search")]]
        df = load_runs(info.tracking_uri, sweep=info.sweep_id)
        scenario = [c for c in ("tags.source", "tags.target", "tags.scenario_key") if c in df.columns]
        parts, skipped = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i, (key, runs) in enumerate(df.groupby(scenario, dropna=False) if scenario else [("", df)]):
                label = " → ".join(str(k) for k in key[:2]) if isinstance(key, tuple) else str(key)
                try:
                    table = compare_table(runs.reset_index(drop=True), by=by)
                except TlexpError as err:
                    skipped.append(f"{label}: {err}")
                    continue
                parts.append(f"## {label} ({len(runs)} runs, by {', '.join(by)})\n\n{to_markdown(table)}\n"
                             f"{notes(table, markdown=True)}")
                compare_bars(table, Path(tmp) / f"compare_{i}.png", title=f"{label} · by {', '.join(by)}")
                table.to_csv(Path(tmp) / f"compare_{i}.csv", index=False)
            if parts:
                (Path(tmp) / "compare.md").write_text(f"# sweep {info.sweep_id}\n\n" + "\n\n".join(parts))
                client.log_artifacts(info.parent_run_id, tmp, "compare")
        if skipped:
            client.set_tag(info.parent_run_id, "compare.skipped", "; ".join(skipped)[:5000])
    except Exception as err:  # noqa: BLE001 - a report that cannot be made must not fail the sweep
        client.set_tag(info.parent_run_id, "compare.skipped", f"{type(err).__name__}: {err}"[:5000])
        Console(stderr=True, soft_wrap=True).print(f"sweep {info.sweep_id}: no compare report ({type(err).__name__})",
                                   highlight=False, markup=False)
