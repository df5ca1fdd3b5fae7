"""What a run is called and what produced it: names that tell runs apart, the command line.

A run's name is its strategy, the overrides that distinguish it from the defaults, and its seed,
e.g. ``finetune lr=0.003 data=douban_book_music s1``: five runs of one sweep no longer share the
name ``finetune-two_tower-s0`` in the MLflow UI. Overrides that do not change what is computed
(where files go, how chatty the trainer is) are left out of the name, but kept in the tags.
"""

from __future__ import annotations

import getpass
import shlex
import sys
from pathlib import Path

from tlexp.tracking.run import VOLATILE_LEAVES, VOLATILE_NODES

# override keys (before '=') that never name a run: the strategy and seed (named anyway), and what the
# config tags also leave out because it does not change the numbers (where files go, how it is shown)
NOT_IN_NAME = ("strategy", "hydra", *VOLATILE_NODES, *VOLATILE_LEAVES)
MAX_NAME = 200


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _display_key(override: str) -> str:
    key = _key(override)
    if "@" in key:  # backbone@strategy.teacher.backbone=sasrec -> teacher.backbone
        key = key.split("@", 1)[1].removeprefix("strategy.")
    return key


def _shorten(overrides: list[str]) -> list[str]:
    """``optimizer.lr=0.003`` -> ``lr=0.003``, unless two keys of the run end alike
    (``trainer.max_epochs`` and ``pretrain.max_epochs`` keep their node)."""
    keys = [_display_key(o) for o in overrides]
    last = [k.rsplit(".", 1)[-1] for k in keys]
    out = []
    for o, k, tail in zip(overrides, keys, last, strict=True):
        shown = tail if last.count(tail) == 1 and "@" not in o.partition("=")[0] else ".".join(k.split(".")[-2:])
        out.append(f"{shown}={o.partition('=')[2]}")
    return out


def naming_overrides(overrides: list[str]) -> list[str]:
    """The overrides that say what a run computes (``NOT_IN_NAME`` dropped), in the order given."""
    out = []
    for o in overrides:
        k = _key(o)
        if any(k == n or k.startswith(n + ".") for n in NOT_IN_NAME):
            continue
        out.append(o)
    return out


def run_name(strategy: str, overrides: list[str], seed: int, backbone: str | None = None) -> str:
    """``<strategy> [<backbone>] <distinguishing overrides> s<seed>`` (backbone when it is not the default)."""
    parts = [strategy]
    if backbone:
        parts.append(backbone)
    parts += _shorten([o for o in naming_overrides(overrides) if _key(o) != "backbone"])
    parts.append(f"s{seed}")
    name = " ".join(parts)
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def source_tags(overrides: list[str]) -> dict[str, str]:
    """MLflow's own "Source" / "User" columns, the command line of this process and the run's overrides."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (containers)
        user = "unknown"
    program = Path(sys.argv[0]).name if sys.argv else ""
    if program in ("tlexp", "__main__.py"):  # the tlexp executable, or python -m tlexp.cli
        command = shlex.join(["tlexp", "run", *sys.argv[1:]])
    else:  # the Python API, from a notebook or a script
        command = f"tlexp.run({overrides!r})  # in {shlex.join(sys.argv) or 'python'}"
    return {"mlflow.source.name": "tlexp run", "mlflow.source.type": "LOCAL", "mlflow.user": user,
            "tlexp.command": command[:5000], "tlexp.overrides": " ".join(overrides)[:5000]}
