"""``python -m tlexp.cli``: the same as the ``tlexp`` command."""

from tlexp.cli.app import entry

entry()
