"""Where the configs live and how to compose them outside ``tlexp run`` (tests, `tlexp data`, scripts).

The configs sit in the repository's top-level ``conf/`` (the design card's layout); a built wheel
carries a copy inside the package as ``tlexp/conf``. ``TLEXP_CONFIG_DIR`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The conf/ folder: $TLEXP_CONFIG_DIR, the package's copy, or the repository's."""
    env = os.environ.get("TLEXP_CONFIG_DIR")
    for cand in ([Path(env)] if env else []) + [PACKAGE_DIR / "conf", PACKAGE_DIR.parent / "conf"]:
        if (cand / "config.yaml").exists():
            return cand
    raise FileNotFoundError("tlexp cannot find its conf/ folder; set TLEXP_CONFIG_DIR to it")


def project_root() -> Path:
    """The folder holding conf/ — the repository root in a source checkout."""
    return config_dir().parent


def register_resolvers() -> None:
    """Custom interpolations used by conf/ (idempotent)."""
    if not OmegaConf.has_resolver("tlexp_root"):
        OmegaConf.register_new_resolver("tlexp_root", lambda: str(project_root()))


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """Compose the run config as ``tlexp run`` would, without starting a Hydra job.

    ``${hydra:...}`` interpolations (the run's output folder) are only available with
    ``return_hydra_config=True``; callers that need an output folder set ``paths.output_dir``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []),
                             return_hydra_config=return_hydra_config)
