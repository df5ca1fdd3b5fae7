"""``tlexp.run(overrides=[...])``: one experiment from Python — what a notebook user wants.

The same config and pipeline as ``tlexp run <overrides>`` (single runs; sweeps stay on the command
line, where Hydra's launchers and sweepers live), and the same MLflow run. Bad input raises
:class:`tlexp.core.errors.TlexpError` with the one-line message the CLI would print.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RunResult:
    """What one run produced: its MLflow id and store, final metrics, and where its files are."""

    run_id: str
    metrics: dict[str, float]
    tracking_uri: str
    experiment: str
    run_dir: str
    run_name: str
    monitor: str
    segments: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, metric: str) -> float:
        """``result["test/ndcg_at_10"]``."""
        return self.metrics[metric]


def run(overrides: Sequence[str] = (), outputs: str | Path | None = None) -> RunResult:
    """Run one experiment configured by Hydra ``overrides`` (e.g. ``["strategy=scratch", "seed=1"]``).

    ``outputs`` is tlexp's outputs folder (the embedded store, caches, run folders); by default
    ``TLEXP_OUTPUTS`` or ``outputs/``, as for the CLI.
    """
    from tlexp.core.config import compose
    from tlexp.core.console import quiet_third_party
    from tlexp.core.errors import ConfigError
    from tlexp.pipeline import run_pipeline

    overrides = [str(o) for o in overrides]
    if any(o.startswith("-") for o in overrides):
        raise ConfigError(f"tlexp.run takes config overrides only (got {[o for o in overrides if o.startswith('-')]}); "
                          "run sweeps (-m) with `tlexp run -m ...`")
    if outputs is not None:
        overrides.append(f"paths.output_root={Path(outputs).resolve()}")
    quiet_third_party()
    # the run folder as `tlexp run` names it (hydra.run.dir: date, time, strategy, a unique id)
    try:
        run_dir = str(compose(overrides, return_hydra_config=True).hydra.run.dir)
    except Exception as err:  # noqa: BLE001 - Hydra's override/config errors, as one line
        raise ConfigError(f"tlexp.run: {str(err).splitlines()[0]}") from None
    cfg = compose([*overrides, f"paths.output_dir={run_dir}"])
    res = run_pipeline(cfg, overrides=overrides)
    return RunResult(run_id=res["run_id"], metrics=dict(res["metrics"]), tracking_uri=res["tracking_uri"],
                     experiment=res["experiment"], run_dir=res["run_dir"], run_name=res["run_name"],
                     monitor=res["monitor"], segments=dict(res["segments"]))
