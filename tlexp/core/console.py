"""What a run says on the console: one line per stage, and no third-party noise.

Stage lines go through the ``tlexp`` logger, so that the same words land in the run's log file
(Hydra's file handler, ``run.log``, logged as an artifact) and on stdout (message only; stderr is for errors: see
``conf/hydra/default.yaml``). Known third-party warnings are filtered *at the source* by message,
so that a new, unknown warning still shows; everything else below WARNING from libraries stays
out of the console.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

log = logging.getLogger("tlexp")

# (message regex, why it is safe to drop)
KNOWN_WARNINGS: tuple[tuple[str, str], ...] = (
    (r".*isinstance\(treespec, LeafSpec\)", "Lightning's own use of a deprecated torch pytree API"),
    (r".*It is recommended to use `self\.log\(.*sync_dist=True`",
     "epoch-level metrics are computed on gathered data by tlexp's validation, not averaged per rank"),
    (r".*Found \d+ module\(s\) in eval mode at the start of training",
     "a frozen teacher (distill) stays in eval mode on purpose"),
    (r".*does not have many workers which may be a bottleneck",
     "tlexp's in-memory batches need no loader workers"),
    (r".*The number of training batches \(\d+\) is smaller than the logging interval",
     "tiny worlds log once per epoch, which is what tlexp reads"),
    (r".*Mean of empty slice", "a segment with no users has no mean; reported as NaN on purpose"),
    (r".*invalid value encountered in (scalar )?divide", "same: an empty segment"),
    (r".*litlogger", "an advertisement"),
    (r".*Checkpoint directory .* exists and is not empty", "resume keeps its checkpoints on purpose"),
)

NOISY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "alembic", "mlflow", "mlflow.store.db.utils",
                 "mlflow.tracking", "urllib3", "filelock", "torch.distributed", "transformers",
                 "sentence_transformers", "hydra_plugins")


def quiet_third_party() -> None:
    """Drop the known third-party warnings and INFO chatter; idempotent (DDP workers call it too)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per downloaded config file
    # transformers 5 draws a "Loading weights" bar per from_pretrained (and peft calls it too); tlexp's
    # own stage line says which encoder loaded. Read at call time, so setting it here is enough.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    for pattern, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def stage(name: str, message: str) -> None:
    """Announce a stage of the run: ``data: ecommerce → social (scenario cache hit)``."""
    log.info("%s: %s", name, message)
