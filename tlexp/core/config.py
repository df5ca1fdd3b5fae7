"""Where the configs live, what tlexp adds to Hydra, and composing outside ``tlexp run``.

The configs sit in the repository's top-level ``conf/`` (the design card's layout); a built wheel
carries a copy inside the package as ``tlexp/conf``. ``TLEXP_CONFIG_DIR`` overrides both.

Domains are defined once, in ``conf/domain/<name>.yaml``. :func:`register` offers each of them to
Hydra as ``source/<name>`` and ``target/<name>`` (through Hydra's ConfigStore), so ``source=news
target=video`` works for every domain without a wrapper file per side, and tab completion lists
them. Everything that composes (``tlexp run``, :func:`compose`, the tests) calls :func:`register`
first; it is idempotent.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # tlexp/
DOMAIN_SIDES = ("source", "target")


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


def domain_names() -> list[str]:
    """The domains defined in ``conf/domain/``."""
    return sorted(p.stem for p in (config_dir() / "domain").glob("*.yaml"))


def domain_spec(name: str) -> DictConfig:
    """``conf/domain/<name>.yaml`` as written (interpolations unresolved): what a loader is built from.

    A plain YAML read, not a Hydra composition: domain files are single nodes without a defaults
    list, which keeps this usable at any time (e.g. by a strategy naming extra source domains).
    """
    from tlexp.core.errors import ConfigError

    path = config_dir() / "domain" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"no domain named '{name}' in {path.parent}; choose one of {domain_names()} "
                          "(or add conf/domain/<name>.yaml)")
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig) or "defaults" in node:
        raise ConfigError(f"{path}: a domain file must be one mapping without a defaults list")
    return node


_REGISTERED: tuple = ()


# One per process: run folders are unique even for runs started in the same second (hydra/default.yaml).
PROCESS_ID = f"{os.getpid()}{secrets.token_hex(2)}"


JOB_ENV = ("TLEXP_OUTPUTS", "TLEXP_DATA_DIR", "MLFLOW_TRACKING_URI")


def job_env() -> dict[str, str]:
    """The environment a sweep's jobs need to write where the sweep does, as the launching process
    sees it: the outputs folder (absolute: a worker starts elsewhere), the data folder and the
    tracking store. Launchers whose workers do not inherit this process's environment (a Ray
    cluster's workers inherit the raylet's) pass it on: ``${tlexp_job_env:}`` in conf/hydra/launcher."""
    env = {"TLEXP_OUTPUTS": str(Path(os.environ.get("TLEXP_OUTPUTS", "outputs")).resolve())}
    if os.environ.get("TLEXP_DATA_DIR"):
        env["TLEXP_DATA_DIR"] = str(Path(os.environ["TLEXP_DATA_DIR"]).resolve())
    if os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    return env


def register() -> None:
    """Resolvers and the ``source``/``target`` config groups (call before composing; cheap when nothing changed)."""
    if not OmegaConf.has_resolver("tlexp_job_env"):
        OmegaConf.register_new_resolver("tlexp_job_env", job_env)
    if not OmegaConf.has_resolver("tlexp_root"):
        OmegaConf.register_new_resolver("tlexp_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("tlexp_uid"):
        OmegaConf.register_new_resolver("tlexp_uid", lambda: PROCESS_ID)
    global _REGISTERED
    folder = config_dir() / "domain"
    state = (str(folder), tuple((p.name, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.yaml"))))
    if state == _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name in domain_names():  # follows TLEXP_CONFIG_DIR and edits of the files
        node = domain_spec(name)
        for side in DOMAIN_SIDES:
            store.store(group=side, name=name, node=node, provider="tlexp (conf/domain)")
    _REGISTERED = state


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """Compose the run config as ``tlexp run`` would, without starting a Hydra job.

    ``${hydra:...}`` interpolations (the run's output folder) are only available with
    ``return_hydra_config=True``; callers that need an output folder set ``paths.output_dir``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []),
                             return_hydra_config=return_hydra_config)


# What a config read back from a store may instantiate: tlexp's own classes and the optimizer and
# trainer pieces it uses. A store may be shared, and a config artifact written by anyone.
ALLOWED_TARGETS = ("tlexp.", "torch.optim.", "lightning.pytorch.Trainer", "lightning.pytorch.callbacks.")


def check_targets(node: Any, where: str = "config.yaml") -> None:
    """Refuse a stored config that would instantiate anything outside :data:`ALLOWED_TARGETS`."""
    from tlexp.core.errors import ConfigError

    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and not (isinstance(value, str) and value.startswith(ALLOWED_TARGETS)):
                raise ConfigError(f"{where}: _target_ '{value}' is not one of tlexp's own classes (allowed: "
                                  f"{', '.join(ALLOWED_TARGETS)}); refusing to build anything from it")
            check_targets(value, f"{where}:{key}" if key != "_target_" else where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_targets(value, f"{where}[{i}]")
