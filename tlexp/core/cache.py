"""Content-addressed caches under ``outputs/cache`` (processed scenarios, pretrained models).

A cache entry is a directory named by the hash of everything that determines it. Entries are
written to a temporary sibling and renamed into place, so an interrupted run never leaves a
half-written entry that a later run would trust; two concurrent writers of the same key are
harmless (the second rename loses, the content is identical).

In a multi-process (DDP) run every process reaches the same entry at the same time and must build
it *together* (a fit is a collective operation): the main process builds and publishes it, the
others build the same thing into a private folder of their own, without the lock and without
publishing (removed when the process exits).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tlexp.core.distributed import is_main_process


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of a JSON rendering with sorted keys: equal configs give equal keys everywhere."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``fcntl.flock``) on ``path`` for as long as the block runs.

    Parallel sweep jobs (joblib workers, SLURM array tasks on a shared disk) often want the same
    cache entry at the same moment; the lock makes exactly one of them build it while the others
    wait and then read it, so a sweep over strategies pretrains each (source, backbone, seed)
    once. The OS drops the lock if its holder dies. Without ``fcntl`` (Windows) it is a no-op:
    the rename below still keeps entries whole, only the work may be done twice.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def cached_dir(root: str | Path, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return ``(path, hit)`` for the entry ``root/key``, building it with ``build(tmpdir)`` if absent.

    A caller that waited on the lock while another process built the entry gets a hit.
    """
    root = Path(root)
    final = root / key
    if (final / ".complete").exists():
        return final, True
    root.mkdir(parents=True, exist_ok=True)
    if not is_main_process():
        return _build_private(root, key, build), False
    locks = root.parent / ".locks"  # beside the root, so that the root holds only entries
    locks.mkdir(exist_ok=True)
    with build_lock(locks / f"{root.name}.{key}.lock"):
        if (final / ".complete").exists():  # built by whoever held the lock before us
            return final, True
        return _build_entry(root, key, final, build)


def _build_private(root: Path, key: str, build: Callable[[Path], None]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.rank{os.environ.get('LOCAL_RANK', '')}.", dir=root))
    atexit.register(shutil.rmtree, tmp, True)
    build(tmp)
    return tmp


def _owner_prefix(key: str) -> str:
    """Temp folders carry their builder (host, pid): a later build can remove those of dead builders."""
    return f".{key}.{_host()}.{os.getpid()}."


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def remove_orphans(root: Path) -> list[Path]:
    """Remove temp folders under ``root`` left by builders on this host that no longer run (kill -9)."""
    host = _host()
    removed = []
    for p in root.glob(".*"):
        parts = p.name.split(".")
        if p.is_dir() and len(parts) >= 4 and parts[-3] == host and parts[-2].isdigit():
            try:
                os.kill(int(parts[-2]), 0)
            except ProcessLookupError:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
            except PermissionError:
                pass
    return removed


def _build_entry(root: Path, key: str, final: Path, build: Callable[[Path], None]) -> tuple[Path, bool]:
    remove_orphans(root)
    tmp = Path(tempfile.mkdtemp(prefix=_owner_prefix(key), dir=root))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if final.exists():  # a stale incomplete entry, or a concurrent writer won the race
            if (final / ".complete").exists():
                shutil.rmtree(tmp, ignore_errors=True)
                return final, False
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / ".complete").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, False
