"""``python -m tlexp.cli``: the same as the ``tlexp`` command."""

import sys

from tlexp.cli.app import main

sys.exit(main())
