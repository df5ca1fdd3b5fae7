"""A real ``mlflow server`` over HTTP on loopback: tlexp logs to it exactly as to the embedded store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import tiny_cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not come up on {url} (exit {proc.poll()})")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@pytest.mark.slow
def test_run_logs_to_a_remote_server(outputs: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    from tlexp.pipeline import run_pipeline

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    result = run_pipeline(tiny_cfg(outputs, "strategy=finetune", "logger.tracking_uri=" + mlflow_server))
    assert result["tracking_uri"] == mlflow_server
    client = MlflowClient(mlflow_server)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert "test_cold/ndcg_at_10" in run.data.metrics and run.data.tags["strategy"] == "finetune"
    cfg = yaml.safe_load(Path(client.download_artifacts(result["run_id"], "config.yaml")).read_text())
    assert cfg["strategy"]["name"] == "finetune"
    assert not (outputs / "mlflow.db").exists()


@pytest.mark.slow
def test_a_server_that_is_down_or_dies_mid_run_fails_fast_with_a_resume_command(tmp_path: Path):
    """Down: one line and exit 2 within seconds. Dies mid-run: one line, exit 3, checkpoints kept, and
    the `tlexp run resume=<id>` that continues the run once the server is back."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import chaos

    # the unreachable half (a whole extra tlexp process) is test_reliability's in-process check
    outcome = chaos.server_faults(tmp_path, unreachable=False)
    assert outcome.survived, outcome.detail
