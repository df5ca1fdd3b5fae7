"""The command line as a user types it (subprocesses, so imports and Hydra are real)."""

from __future__ import annotations

from pathlib import Path

from helpers import TINY, mlflow_runs, run_cli

def test_help_lists_subcommands():
    out = run_cli(["--help"], {}).stdout
    for cmd in ("run", "ui", "data"):
        assert f"\n  {cmd}" in out


def test_run_logs_to_the_store_named_by_mlflow_tracking_uri(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "TLEXP_OUTPUTS": str(tmp_path / "outputs")}
    proc = run_cli(["run", *TINY, "strategy=finetune", "optimizer=adamw", "optimizer.lr=3e-3", "seed=1"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cold" in proc.stdout and "MLflow run" in proc.stdout and uri in proc.stdout.replace("\n", "")
    df = mlflow_runs(uri)
    assert len(df) == 1 and df["status"].iloc[0] == "FINISHED"
    assert df["params.optimizer._target_"].iloc[0] == "torch.optim.AdamW"
    assert df["params.optimizer.lr"].iloc[0] == "0.003" and df["tags.seed"].iloc[0] == "1"
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # the env store won


def test_wrong_group_choice_lists_the_valid_ones(tmp_path: Path):
    proc = run_cli(["run", "strategy=nope"], {"TLEXP_OUTPUTS": str(tmp_path)})
    assert proc.returncode != 0
    assert "Could not find 'strategy/nope'" in proc.stderr
    for choice in ("finetune", "popular", "scratch"):
        assert choice in proc.stderr


def test_ui_serves_the_same_store(tmp_path: Path):
    out = run_cli(["ui", "--print-command", "--outputs", str(tmp_path)], {}).stdout
    assert f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in out and "--host 127.0.0.1" in out
