"""Named fault points: where a chaos test may stop this process with a signal, deterministically.

``TLEXP_FAULTS="target_epoch_end:2=SIGKILL,evaluate=SIGTERM"`` makes the second pass through the
point ``target_epoch_end`` send SIGKILL to this process, and the first pass through ``evaluate``
SIGTERM. Without the variable a fault point costs one dictionary lookup. ``scripts/chaos.py`` and
the reliability tests inject every signal at every stage this way, instead of racing a ``kill``
against a timer.

Points: ``data`` (scenario loaded), ``stage`` (a declared model is about to train), ``<name>_epoch_end``
for ``pretrain``/``teacher``/``target`` (after the epoch's checkpoint), ``evaluate`` (before final
evaluation), ``artifacts`` (before the run's files are logged).
"""

from __future__ import annotations

import os
import signal

_COUNTS: dict[str, int] = {}


def _plan() -> dict[str, tuple[int, int]]:
    spec = os.environ.get("TLEXP_FAULTS", "")
    out: dict[str, tuple[int, int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, sig = part.partition("=")
        name, _, nth = point.partition(":")
        out[name] = (int(nth or 1), int(getattr(signal, sig.strip() or "SIGTERM")))
    return out


def fault_point(name: str) -> None:
    """Send the planned signal to this process on the planned pass through ``name`` (see above)."""
    if "TLEXP_FAULTS" not in os.environ:
        return
    plan = _plan()
    if name not in plan:
        return
    _COUNTS[name] = _COUNTS.get(name, 0) + 1
    nth, signum = plan[name]
    if _COUNTS[name] == nth:
        os.kill(os.getpid(), signum)
