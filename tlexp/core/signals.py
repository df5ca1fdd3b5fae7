"""Stopping a run by a signal ends it the same way at every stage: as an :class:`Interrupted`.

Ctrl-C (SIGINT) and SIGTERM (what schedulers and ``kill`` send) both raise :class:`Interrupted`
wherever the program is — loading data, pretraining, evaluating, logging — so that the run is
recorded as KILLED, caches being built are discarded, and the command exits with the shell's
convention, 128 + the signal number (130, 143). Lightning catches interrupts inside ``fit`` and
turns them into ``sys.exit(1)`` (Ctrl-C) or its own ``SIGTERMException``; :func:`from_lightning`
turns them back (:mod:`tlexp.training.trainer`).
"""

from __future__ import annotations

import signal
import threading

_LAST: list[int] = []


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (``signum``); ``exit_code`` is 128 + ``signum``."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, frame: object) -> None:
    _LAST.append(signum)
    raise Interrupted(signum)


def install() -> None:
    """Raise :class:`Interrupted` on SIGINT and SIGTERM from now on (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise)


def last_interrupt() -> Interrupted:
    """The interrupt behind a stop Lightning reported in its own way (Ctrl-C unless SIGTERM came)."""
    return Interrupted(_LAST[-1] if _LAST else signal.SIGINT)


def stop_group(proc, timeout: float = 10.0) -> None:
    """End a child started with ``start_new_session=True`` (an MLflow server and its workers): SIGTERM
    to its whole process group, SIGKILL if it is still there after ``timeout`` seconds."""
    import os
    import subprocess

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:  # gone between poll and kill
        pass
