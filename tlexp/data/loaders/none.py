"""``source=none``: no source domain — the target-only protocol (RecBole's setting).

Strategies that transfer nothing (popular, scratch, ease, itemknn) run on the target alone; with no
source there are no overlap users, so no cold-start users either. A strategy that needs a source
model is refused with one line before any work.
"""

from __future__ import annotations

NO_SOURCE = "none"


class NoSource:
    """A loader with nothing to load; the scenario builder gives it an empty domain."""

    ordered = True

    def __init__(self, name: str = NO_SOURCE, **_ignored) -> None:
        if name != NO_SOURCE:
            raise ValueError(f"the no-source loader is named '{NO_SOURCE}', not '{name}'")
        self.name = NO_SOURCE

    def fingerprint(self) -> dict:
        return {"loader": "none"}

    def load(self):  # never called: build_scenario does not split an absent domain
        raise RuntimeError("source=none has no data to load")
