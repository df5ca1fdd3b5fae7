"""Drive the MLflow UI in a real headless Chromium after a small sweep, as a user would.

    python scripts/ui_check.py [--shots docs/img] [--keep]

1. ``tlexp run -m strategy=popular,scratch,finetune seed=0,1`` on a tiny world (own store);
2. ``tlexp ui`` on a free port; the experiment link it prints is opened;
3. checks: the link opens on the training-runs table (not MLflow 3's GenAI overview); grouped by
   the ``strategy`` tag, the chart of ``test/ndcg_at_10`` is a bar chart with one bar per strategy,
   labelled with the strategy names;
4. screenshots of both views (``--shots``; docs/ui.md shows them).

Needs Chromium (``apt-get install chromium``; ``CHROMIUM`` names another binary) and the
``playwright`` Python package (``pip install playwright``; its own browser download is not
needed). Exit 0 when every check holds; the test tests/integration/test_ui_browser.py runs it and
skips where Chromium or playwright are missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tlexp.core.signals import stop_group

ROOT = Path(__file__).resolve().parents[1]
TINY = ["world.n_users=800", "source.n_items=300", "target.n_items=300", "trainer=debug", "trainer.max_epochs=3",
        "pretrain.max_epochs=3", "logger.predictions_sample=0"]
STRATEGIES = ("popular", "scratch", "finetune")


def chromium() -> str | None:
    """The Chromium binary to drive, or None."""
    for cand in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def playwright_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Report:
    checks: dict[str, bool] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tlexp(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tlexp.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, **kw)


def check(work: Path, shots: Path | None = None, timeout_s: float = 90) -> Report:
    """Run the sweep, the UI and the browser checks in ``work``; return what held."""
    from playwright.sync_api import sync_playwright

    report = Report()
    env = {**os.environ, "TLEXP_OUTPUTS": str(work / "outputs")}
    env.pop("MLFLOW_TRACKING_URI", None)
    sweep = _tlexp(["run", "-m", f"strategy={','.join(STRATEGIES)}", "seed=0,1", *TINY], env, timeout=900)
    report.checks["sweep finished"] = sweep.returncode == 0
    if sweep.returncode != 0:
        report.details["sweep"] = sweep.stderr[-2000:]
        return report
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "tlexp.cli", "ui", "--port", str(port)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        link = None
        deadline = time.time() + 120
        while time.time() < deadline and link is None:
            line = ui.stdout.readline()
            m = re.search(r"(http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\?\S+)", line)
            link = m.group(1) if m else None
        report.checks["tlexp ui prints a runs-table link"] = link is not None
        if link is None:
            return report
        for _ in range(240):  # the server answers once its workers are up
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.goto(link, wait_until="load")
            page.get_by_text("Group by").first.wait_for(timeout=timeout_s * 1000)
            page.get_by_text("matching runs").first.wait_for(timeout=timeout_s * 1000)
            body = page.inner_text("body")
            report.checks["opens on the runs table"] = "Run Name" in body and "Token Usage" not in body
            if page.get_by_role("button", name="Close").count():  # the assistant side panel
                page.get_by_role("button", name="Close").first.click()
            if shots:
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / "ui_runs.png"))
            # group by the strategy tag, then the chart view, then the one metric
            page.get_by_text("Group by").first.click()
            page.get_by_role("menuitemcheckbox", name="strategy").or_(
                page.get_by_role("menuitem", name="strategy")).first.click()
            page.keyboard.press("Escape")
            page.locator("input[name=runs-view-mode][value=CHART]").locator("xpath=..").click(force=True)
            area = page.locator("[data-testid=experiment-view-compare-runs-chart-area]")
            area.wait_for(timeout=timeout_s * 1000)
            area.locator("input").first.fill("test/ndcg_at_10")
            charts: list[dict] = []
            deadline = time.time() + timeout_s
            while time.time() < deadline:
                charts = page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot'))
                    .filter(e => e.offsetParent)
                    .map(e => ({bars: e.querySelectorAll('.trace.bars .point').length,
                                lines: e.querySelectorAll('.trace.scatter').length,
                                legend: Array.from(e.querySelectorAll('.legendtext')).map(t => t.textContent)}))""")
                card_text = area.inner_text()
                if len(charts) == 1 and charts[0]["bars"] and all(s in card_text for s in STRATEGIES):
                    break
                time.sleep(1)
            card_text = area.inner_text()
            report.details["charts"] = repr(charts)
            report.checks["test/ndcg_at_10 is one chart"] = len(charts) == 1
            report.checks["one bar per strategy"] = bool(charts) and charts[0]["bars"] == len(STRATEGIES)
            report.checks["bars labelled by strategy"] = all(s in card_text for s in STRATEGIES)
            if shots:
                page.screenshot(path=str(shots / "ui_grouped_bars.png"))
            browser.close()
    finally:
        stop_group(ui, timeout=15)  # tlexp ui forwards the signal to its server's group
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shots", type=Path, help="folder for the screenshots (e.g. docs/img)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (store, runs)")
    args = p.parse_args(argv)
    if chromium() is None or not playwright_available():
        print("needs Chromium (apt-get install chromium) and playwright (pip install playwright)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tlexp-ui-"))
    t0 = time.time()
    try:
        report = check(work, args.shots)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for name, ok in report.checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    for k, v in report.details.items():
        print(f"  {k}: {v}")
    print(f"{sum(report.checks.values())}/{len(report.checks)} checks hold · {time.time() - t0:.0f} s")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
