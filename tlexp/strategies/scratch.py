"""``scratch``: train on the target domain only — the no-transfer baseline."""

from tlexp.strategies.base import RecStrategy


class Scratch(RecStrategy):
    """No knowledge from the source. Cold-start users keep their untrained initial embedding."""
