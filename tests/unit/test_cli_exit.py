"""The ``tlexp`` command's fast exit (tlexp.cli.app.entry) ends the process the way the interpreter would."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _entry(prelude: str, argv: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    code = textwrap.dedent(prelude) + f"\nimport sys\nsys.argv = {['tlexp', *argv]!r}\n" \
        "from tlexp.cli.app import entry\nentry()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_exit_codes_and_buffered_output_survive():
    proc = _entry("print('buffered line', end='')", ["no-such-command"])
    assert proc.returncode == 2
    assert proc.stdout.startswith("buffered line")  # flushed before os._exit
    proc = _entry("import atexit; atexit.register(lambda: print('atexit ran'))", ["--help"])
    assert proc.returncode == 0 and "atexit ran" in proc.stdout
