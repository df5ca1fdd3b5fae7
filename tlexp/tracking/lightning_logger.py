"""Lightning's MLflow logger, attached to a run tlexp created, and never ending it.

Lightning's ``MLFlowLogger.finalize`` marks the run FINISHED as soon as ``fit`` returns — before
evaluation and artifacts — so a failure or a SIGTERM in between would leave a FINISHED run without
test metrics. tlexp's :class:`~tlexp.tracking.run.TrackedRun` ends the run, once everything is
logged. (A module of its own, imported lazily: Lightning is heavy, and ``ddp_spawn`` pickles the
logger, which needs a module-level class.)
"""

from __future__ import annotations

from lightning.pytorch.loggers import MLFlowLogger


class RunLogger(MLFlowLogger):
    """Per-epoch metrics into an existing MLflow run; the run's status is not the logger's to set."""

    def finalize(self, status: str = "success") -> None:
        pass
