"""The MLflow UI in a real headless Chromium after a small sweep (scripts/ui_check.py): opens on the
runs table; grouped by strategy, test/ndcg_at_10 is one bar per strategy. Skipped where Chromium or
the playwright package is missing (neither is a dependency of tlexp: `apt-get install chromium`,
`pip install playwright`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import ui_check  # noqa: E402

pytestmark = pytest.mark.skipif(ui_check.chromium() is None or not ui_check.playwright_available(),
                                reason="needs Chromium (apt-get install chromium) and playwright (pip install "
                                       "playwright) to drive the MLflow UI")


@pytest.mark.slow
def test_the_ui_opens_on_runs_and_groups_strategies_into_one_bar_each(tmp_path: Path):
    report = ui_check.check(tmp_path, shots=tmp_path / "shots")
    assert report.ok, (report.checks, report.details)
    assert (tmp_path / "shots" / "ui_grouped_bars.png").stat().st_size > 10_000
