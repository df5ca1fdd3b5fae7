"""Reliability and safety under faults: signals at any stage, kill -9 then resume, concurrent first runs on a
fresh store, a diverging loss, crafted artifacts, bad values, an unreachable store, ``tlexp ui`` signals.

The same catalogue, complete (every signal at every stage, 8 concurrent runs, a server that dies mid-run),
is ``scripts/chaos.py``; these tests run its cheaper part through the same functions.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, tiny_cfg

sys.path.insert(0, str(ROOT / "scripts"))
import chaos  # noqa: E402


def test_a_signal_at_any_stage_kills_the_run_with_the_documented_exit_code(tmp_path: Path):
    """One signal in a subprocess here (SIGTERM inside Lightning's fit of the source pretraining, where it
    used to exit 0); every signal at every stage: scripts/chaos.py. In process: Ctrl-C at evaluation."""
    outcome = chaos.signal_at("pretrain_epoch_end", "SIGTERM", tmp_path)
    assert outcome.survived, outcome.detail


def test_ctrl_c_at_any_later_stage_ends_the_run_killed(outputs: Path, monkeypatch: pytest.MonkeyPatch):
    from tlexp.core.signals import Interrupted
    from tlexp.pipeline import run_pipeline
    from tlexp.tracking.queries import search_runs

    from tlexp.core import faults, signals

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signals.install()
        for i, stage in enumerate(("target_epoch_end", "evaluate", "artifacts")):
            monkeypatch.setenv("TLEXP_FAULTS", f"{stage}=SIGINT")
            faults._COUNTS.clear()
            with pytest.raises(Interrupted) as stop:
                run_pipeline(tiny_cfg(outputs, "strategy=scratch", run_dir=f"r{i}"))
            assert stop.value.exit_code == 130
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    df = search_runs(f"sqlite:///{outputs.resolve() / 'mlflow.db'}")
    assert df["status"].tolist() == ["KILLED"] * 3


def test_kill_9_then_resume_finishes_the_same_run_with_identical_test_metrics(tmp_path: Path):
    outcome = chaos.kill9_then_resume(tmp_path)
    assert outcome.survived, outcome.detail


def test_concurrent_first_runs_on_a_fresh_store_all_land_in_their_own_folders(tmp_path: Path):
    # two racing first runs are the case that broke stores; scripts/chaos.py runs eight
    outcome = chaos.concurrent_first_runs(tmp_path, 2)
    assert outcome.survived, outcome.detail


def test_a_diverging_loss_fails_the_run_and_caches_nothing(outputs: Path):
    from tlexp.pipeline import run_pipeline
    from tlexp.tracking.queries import search_runs
    from tlexp.training.module import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="diverged"):
        run_pipeline(tiny_cfg(outputs, "optimizer.lr=1e30"))
    df = search_runs(f"sqlite:///{outputs.resolve() / 'mlflow.db'}")
    assert df["status"].tolist() == ["FAILED"] and "diverged" in df["tags.error"].iloc[0]
    assert not list((outputs / "cache").rglob(".complete"))[1:]  # the scenario only: no pretrained model
    assert not (outputs / "cache" / "pretrain").exists() or not any((outputs / "cache" / "pretrain").iterdir())


def test_crafted_config_or_checkpoint_is_refused_and_runs_nothing(tmp_path: Path):
    from tlexp.core.errors import ConfigError
    from tlexp.serving.recommend import load_run
    from tlexp.tracking.store import embedded_uri

    out = tmp_path / "outputs"
    out.mkdir()
    marker = tmp_path / "pwned"
    uri = embedded_uri(out)
    for run_id in chaos.craft_runs(uri, marker):
        with pytest.raises(ConfigError, match="refusing"):
            load_run(run_id, uri, out)
    assert not marker.exists()


@pytest.mark.parametrize("value,message", [
    ("trainer.max_epochs=abc", "must be an integer"), ("batch_size=-1", "must be >= 1"),
    ("optimizer.lr=-1", "must be > 0"), ("eval.ks=[0]", "positive cut-offs"), ("seed=abc", "must be an integer"),
    ("split.min_user_interactions=100000", "no valid interactions"), ("split.cold_valid_share=2", "between 0 and 1")])
def test_bad_values_are_refused_before_any_work_in_one_line(outputs: Path, value: str, message: str):
    from tlexp.core.errors import ConfigError
    from tlexp.pipeline import run_pipeline

    with pytest.raises(ConfigError, match=message) as err:
        run_pipeline(tiny_cfg(outputs, value))
    assert "\n" not in str(err.value)
    assert not (outputs / "mlflow.db").exists()  # refused before any run was created


def test_an_unreachable_store_fails_in_seconds_and_reads_never_create_a_store(tmp_path: Path):
    from tlexp.tracking.store import StoreUnavailable, open_store

    t0 = time.time()
    with pytest.raises(StoreUnavailable, match="cannot be used"):
        open_store(f"http://127.0.0.1:{chaos.free_port()}")
    assert time.time() - t0 < 30
    missing = tmp_path / "nothing" / "mlflow.db"
    with pytest.raises(StoreUnavailable, match="no MLflow store"):
        open_store(f"sqlite:///{missing}", create=False)
    assert not missing.parent.exists()  # a read command created nothing


def test_ui_stops_its_server_on_sigterm(tmp_path: Path):
    port = chaos.free_port()
    env = {**os.environ, "TLEXP_OUTPUTS": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    (tmp_path / "mlflow.db").touch()
    proc = subprocess.Popen([sys.executable, "-m", "tlexp.cli", "ui", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the UI never answered")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        for _ in range(40):  # the server child went with it: the port closes
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.5)
            except OSError:
                break
        else:
            pytest.fail("the mlflow server kept listening after tlexp ui was stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
