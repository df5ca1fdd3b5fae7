"""Entry points: the ``tlexp`` command (:mod:`tlexp.cli.app`) and its subcommands, one module each."""
