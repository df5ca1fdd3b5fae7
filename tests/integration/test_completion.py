"""Hydra's shell completion through the real ``tlexp`` command, as a user installs it:
``eval "$(tlexp run -sc install=bash)"``, then TAB (the completion function, driven by COMP_LINE /
COMP_POINT / COMP_WORDS / COMP_CWORD, as bash sets them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def complete(line: str) -> list[str]:
    words = line.split() + ([""] if line.endswith(" ") else [])
    script = f'''
eval "$(tlexp run -sc install=bash)"
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}
COMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}
hydra_bash_completion
printf '%s\\n' "${{COMPREPLY[@]}}"
'''
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None or not (BIN / "tlexp").exists(),
                    reason="needs bash and the installed tlexp script")
def test_bash_completion_offers_config_groups_and_choices():
    assert "complete -o nospace -o default -F hydra_bash_completion tlexp" in subprocess.run(
        [str(BIN / "tlexp"), "run", "-sc", "install=bash"], capture_output=True, text=True, timeout=120).stdout
    assert {"strategy=", "strategy."} <= set(complete("tlexp run strat"))
    assert "strategy=distill" in complete("tlexp run strategy=")
    # domains are offered on both sides, from conf/domain alone
    assert "source=amazon_arts" in complete("tlexp run source=ama")
    assert "target=douban_music" in complete("tlexp run target=douban_m")
    assert {"transfer=", "transfer."} <= set(complete("tlexp run strategy=finetune tran"))
