"""Content-addressed caches under ``outputs/cache`` (processed scenarios, pretrained models).

A cache entry is a directory named by the hash of everything that determines it. Entries are
written to a temporary sibling and renamed into place, so an interrupted run never leaves a
half-written entry that a later run would trust; two concurrent writers of the same key are
harmless (the second rename loses, the content is identical).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of a JSON rendering with sorted keys: equal configs give equal keys everywhere."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def cached_dir(root: str | Path, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return ``(path, hit)`` for the entry ``root/key``, building it with ``build(tmpdir)`` if absent."""
    root = Path(root)
    final = root / key
    if (final / ".complete").exists():
        return final, True
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
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
