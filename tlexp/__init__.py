"""tlexp — transfer-learning experiments for recommender systems.

From Python (a notebook)::

    import tlexp
    result = tlexp.run(["strategy=scratch", "seed=1"])
    result.run_id, result["test/ndcg_at_10"]

The command line (``tlexp run ...``) is the same pipeline; see README.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from tlexp.cli.api import RunResult

__all__ = ["run"]


def run(overrides: Any = (), outputs: Any = None) -> RunResult:
    """One experiment, configured like ``tlexp run <overrides>``; see :func:`tlexp.cli.api.run`."""
    from tlexp.cli.api import run as _run  # lazy: ``import tlexp`` stays cheap (the CLI's --help imports it)

    return _run(overrides, outputs)
