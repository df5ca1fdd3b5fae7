"""Errors a user can act on.

Anything raised as a :class:`TlexpError` is printed by the CLI as one line (no traceback) and
exits non-zero. The message must say which file/field is wrong and how to fix it.
"""


class TlexpError(Exception):
    """Base for user-facing errors: printed as one line by the CLI."""


class DataError(TlexpError):
    """Input data is missing, malformed or empty after filtering."""


class ConfigError(TlexpError):
    """A configuration value is inconsistent with the data or strategy."""
