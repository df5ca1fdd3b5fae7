"""Which process of a multi-process run this is.

Under Lightning's ``ddp`` strategy (and torchrun / SLURM) every process runs the whole program:
the same stages, the same fits, in lockstep. Only the main process may record the run (one MLflow
run, not one per process), publish cache entries and print; the others compute the same things and
keep them to themselves. The rank comes from the environment that launchers set, as Lightning's
own ``rank_zero_only`` reads it.
"""

from __future__ import annotations

import os

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_main_process() -> bool:
    """False in every process of a multi-process launch but the first (global rank 0)."""
    return all(os.environ.get(var, "0") in ("", "0") for var in RANK_VARIABLES)
