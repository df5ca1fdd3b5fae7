"""``popular``: rank items by their number of target training interactions. No training."""

from tlexp.strategies.base import RecStrategy


class Popular(RecStrategy):
    """The sanity floor. The pipeline gives it a Popularity backbone and skips fitting."""

    trains = False
