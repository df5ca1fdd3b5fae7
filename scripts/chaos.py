"""Fault injection for tlexp: every signal at every stage, kill -9 then resume, concurrent first runs on
a fresh store, a tracking server that dies, a diverging loss, crafted artifacts, bad values.

Each fault runs the real ``tlexp`` command in a subprocess on a small synthetic world (signals are
sent deterministically at named fault points, ``TLEXP_FAULTS``, tlexp/core/faults.py) and checks
the outcome against what the README promises: the exit code, the MLflow status, no run lost, no run
left RUNNING, no half-built cache entry. It prints one table and exits non-zero if any fault was not
survived. ``tests/integration/test_reliability.py`` runs a subset of the same catalogue.

    python scripts/chaos.py                  # everything (a few minutes on 2 cores)
    python scripts/chaos.py --only signals concurrency
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["world.n_users=400", "source.n_items=150", "target.n_items=150", "trainer=debug", "batch_size=256",
        "trainer.max_epochs=3", "pretrain.max_epochs=1", "callbacks.early_stopping.patience=10",
        "logger.predictions_sample=10"]
STAGES = ("data", "stage", "pretrain_epoch_end", "target_epoch_end", "evaluate", "artifacts")
EXIT = {"SIGINT": 130, "SIGTERM": 143}


@dataclass
class Outcome:
    fault: str
    survived: bool
    detail: str = ""
    runs_lost: int = 0
    left_running: int = 0
    exit_codes: list[int] = field(default_factory=list)


def tlexp(args: list[str], out: Path, env: dict[str, str] | None = None, timeout: int = 600,
          wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    full_env = {**os.environ, "TLEXP_OUTPUTS": str(out), "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("TLEXP_FAULTS", None) if "TLEXP_FAULTS" not in (env or {}) else None
    if "MLFLOW_TRACKING_URI" not in (env or {}):
        full_env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "tlexp.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def runs(uri: str):
    sys.path.insert(0, str(ROOT))
    from tlexp.tracking.queries import search_runs

    return search_runs(uri)


def store(out: Path) -> str:
    return f"sqlite:///{out.resolve() / 'mlflow.db'}"


def one_line(stderr: str) -> bool:
    """The command said what happened in one line (no traceback)."""
    return "Traceback" not in stderr


# ----------------------------------------------------------------------------- the catalogue
def signal_at(stage: str, sig: str, work: Path) -> Outcome:
    """``sig`` at ``stage``: the documented exit code, the run KILLED, no half-built cache entry."""
    out = work / f"sig-{stage}-{sig}"
    proc = tlexp(["run", *TINY], out, env={"TLEXP_FAULTS": f"{stage}={sig}"})
    df = runs(store(out)) if (out / "mlflow.db").exists() else None
    statuses = [] if df is None else df["status"].tolist()
    half_built = [p for p in (out / "cache").rglob(".*") if p.is_dir() and not p.name.startswith(".locks")] \
        if (out / "cache").exists() else []
    ok = proc.returncode == EXIT[sig] and statuses in ([], ["KILLED"]) and not half_built and one_line(proc.stderr)
    if stage != "data" and statuses != ["KILLED"]:
        ok = False
    return Outcome(f"{sig} at {stage}", ok, f"exit {proc.returncode}, status {statuses or '-'}, "
                   f"half-built cache entries {len(half_built)}", left_running=statuses.count("RUNNING"),
                   exit_codes=[proc.returncode])


def kill9_then_resume(work: Path) -> Outcome:
    """kill -9 after epoch 2 of target training, then ``resume=``: the same run id, finished, with the
    test metrics of a run that was never stopped."""
    out = work / "resume"
    full = tlexp(["run", *TINY, "trainer.max_epochs=4", "logger.experiment_name=full"], out)
    killed = tlexp(["run", *TINY, "trainer.max_epochs=4", "logger.experiment_name=killed"], out,
                   env={"TLEXP_FAULTS": "target_epoch_end:2=SIGKILL"})
    df = runs(store(out))
    victim = df[df["tags.mlflow.runName"].notna() & (df["status"] == "RUNNING")]
    if full.returncode != 0 or killed.returncode != -signal.SIGKILL or len(victim) != 1:
        return Outcome("kill -9 then resume", False, f"setup: exit {full.returncode}/{killed.returncode}, "
                       f"{len(victim)} RUNNING", exit_codes=[full.returncode, killed.returncode])
    run_id = victim["run_id"].iloc[0]
    reap = tlexp(["runs", "--reap"], out)
    reaped = runs(store(out)).set_index("run_id").loc[run_id, "status"]
    resumed = tlexp(["run", f"resume={run_id}"], out)
    df = runs(store(out)).set_index("run_id")
    a = df[df["tags.mlflow.runName"].notna() & (df["status"] == "FINISHED")]
    full_row = a[a.index != run_id].iloc[0]
    tests = [c for c in df.columns if c.startswith("metrics.test")]
    diffs = [c for c in tests if df.loc[run_id, c] != full_row[c]]
    ok = (resumed.returncode == 0 and reap.returncode == 0 and reaped == "KILLED"
          and df.loc[run_id, "status"] == "FINISHED" and not diffs)
    return Outcome("kill -9 then resume", ok, f"reaped as {reaped}; resumed exit {resumed.returncode}; "
                   f"{len(tests) - len(diffs)}/{len(tests)} test metrics identical to the uninterrupted run",
                   left_running=int((df["status"] == "RUNNING").sum()), exit_codes=[resumed.returncode])


def concurrent_first_runs(work: Path, n: int = 8) -> Outcome:
    """``n`` runs started together on a fresh embedded store: all FINISHED, the store still usable,
    each in its own run folder."""
    out = work / f"concurrent-{n}"
    procs = [tlexp(["run", *TINY, f"seed={s}", "trainer.max_epochs=1", "pretrain.max_epochs=1"], out, wait=False)
             for s in range(n)]
    codes = [p.wait(timeout=900) for p in procs]
    df = runs(store(out))
    finished = int((df["status"] == "FINISHED").sum())
    folders = len(set(df["tags.run_dir"])) if "tags.run_dir" in df.columns else 0
    ok = codes == [0] * n and finished == n and folders == n
    return Outcome(f"{n} concurrent first runs", ok, f"{finished}/{n} FINISHED, {folders} run folders, exits {codes}",
                   runs_lost=n - finished, left_running=int((df["status"] == "RUNNING").sum()), exit_codes=codes)


def diverging_loss(work: Path) -> Outcome:
    """optimizer.lr=1e30: FAILED with the reason, one line, exit 2, nothing cached from it."""
    out = work / "nan"
    proc = tlexp(["run", *TINY, "optimizer.lr=1e30"], out)
    df = runs(store(out))
    cached = list((out / "cache" / "pretrain").glob("*/.complete")) if (out / "cache" / "pretrain").exists() else []
    ok = (proc.returncode == 2 and df["status"].tolist() == ["FAILED"] and "diverged" in df["tags.error"].iloc[0]
          and not cached and one_line(proc.stderr))
    return Outcome("diverging loss (lr=1e30)", ok, f"exit {proc.returncode}, {df['status'].tolist()}, "
                   f"{len(cached)} cache entries", exit_codes=[proc.returncode])


def bad_values(work: Path) -> Outcome:
    """Values that cannot work are refused before any work, one line each, exit 2."""
    values = ["trainer.max_epochs=abc", "batch_size=-1", "optimizer.lr=-1", "eval.ks=[0]", "seed=abc",
              "split.min_user_interactions=100000", "eval.monitor=test/ndcg_at_10", "strategy.fusion.mode=x"]
    bad = []
    codes = []
    for v in values:
        args = ["run", *TINY, v] + (["strategy=fusion"] if v.startswith("strategy.fusion") else [])
        proc = tlexp(args, work / "bad")
        codes.append(proc.returncode)
        if proc.returncode != 2 or not one_line(proc.stderr) or "error:" not in proc.stderr:
            bad.append(v)
    return Outcome(f"{len(values)} bad values", not bad, f"not one clear line: {bad or 'none'}", exit_codes=codes)


def crafted_artifacts(work: Path) -> Outcome:
    """A run whose config or checkpoint would run code is refused by ``tlexp recommend``; nothing runs."""
    sys.path.insert(0, str(ROOT))
    out = work / "crafted"
    marker = work / "pwned"
    uri = store(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = craft_runs(uri, marker)
    refused = []
    for run_id in ids:
        proc = tlexp(["recommend", f"run={run_id}", "users=u1"], out)
        refused.append(proc.returncode == 2 and "refusing" in proc.stderr and one_line(proc.stderr))
    ok = all(refused) and not marker.exists()
    return Outcome("crafted config / checkpoint", ok, f"refused {sum(refused)}/{len(ids)}, code ran: {marker.exists()}",
                   exit_codes=[])


def craft_runs(uri: str, marker: Path) -> list[str]:
    """Two FINISHED runs: one whose config.yaml instantiates os.system, one whose checkpoint unpickles
    into os.system; both would create ``marker``."""
    import pickle

    from mlflow.tracking import MlflowClient

    from tlexp.tracking.store import open_store

    client: MlflowClient = open_store(uri)
    exp = client.create_experiment(f"crafted-{time.time_ns()}")
    ids = []
    tmp = Path(tempfile.mkdtemp())
    evil_cfg = tmp / "config.yaml"
    evil_cfg.write_text(f"strategy:\n  _target_: os.system\n  command: touch {marker}\n")
    run = client.create_run(exp)
    client.log_artifact(run.info.run_id, str(evil_cfg))
    client.set_terminated(run.info.run_id)
    ids.append(run.info.run_id)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    good_cfg = ROOT / "conf" / "config.yaml"  # any config of tlexp's own classes; the checkpoint is the attack
    from tlexp.core.config import compose

    cfg = compose(["strategy=scratch", f"paths.output_dir={tmp / 'x'}", f"paths.output_root={tmp}"])
    from omegaconf import OmegaConf

    (tmp / "cfg").mkdir()
    (tmp / "cfg" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))
    ckpt = tmp / "best.ckpt"
    with ckpt.open("wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    run = client.create_run(exp)
    client.log_artifact(run.info.run_id, str(tmp / "cfg" / "config.yaml"))
    client.log_artifact(run.info.run_id, str(ckpt), "checkpoints")
    client.set_terminated(run.info.run_id)
    ids.append(run.info.run_id)
    del good_cfg
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    db = work / "server.db"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                             "--artifacts-destination", str(work / "server-artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, uri
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("mlflow server did not start")


def server_faults(work: Path, unreachable: bool = True) -> Outcome:
    """An unreachable store fails in seconds with one line; a server that dies mid-run makes the run
    fail fast with one line, its checkpoints on disk and a resume command. ``unreachable=False`` skips
    the first (the test suite checks it in process, in test_reliability.py)."""
    out = work / "server"
    t0 = time.time()
    dead = tlexp(["run", *TINY], out, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}) \
        if unreachable else subprocess.CompletedProcess([], 2, "", "skipped\n")
    unreachable_s = time.time() - t0
    server, uri = start_server(work)
    try:
        proc = tlexp(["run", *TINY, "trainer.max_epochs=4"], out, env={"MLFLOW_TRACKING_URI": uri}, wait=False)
        # wait for the first epoch's checkpoint, then take the server down
        deadline = time.time() + 300
        while time.time() < deadline and not list(out.glob("runs/*/*/checkpoints/last.ckpt")):
            time.sleep(0.5)
        os.killpg(server.pid, signal.SIGKILL)
        t1 = time.time()
        stdout, stderr = proc.communicate(timeout=300)
        died_s = time.time() - t1
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    ok = (dead.returncode == 2 and unreachable_s < 60 and one_line(dead.stderr) and proc.returncode == 3
          and "resume=" in stderr and one_line(stderr) and died_s < 120)
    return Outcome("tracking server down / dies mid-run", ok,
                   f"unreachable: exit {dead.returncode} after {unreachable_s:.0f} s; died mid-run: exit "
                   f"{proc.returncode} after {died_s:.0f} s, resume hint {'resume=' in stderr}",
                   exit_codes=[dead.returncode, proc.returncode])


CATALOGUE: dict[str, Callable[[Path], list[Outcome]]] = {
    "signals": lambda w: [signal_at(st, sig, w) for st in STAGES for sig in ("SIGINT", "SIGTERM")],
    "resume": lambda w: [kill9_then_resume(w)],
    "concurrency": lambda w: [concurrent_first_runs(w, 8)],
    "nan": lambda w: [diverging_loss(w)],
    "values": lambda w: [bad_values(w)],
    "artifacts": lambda w: [crafted_artifacts(w)],
    "server": lambda w: [server_faults(w)],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", choices=sorted(CATALOGUE), help="a subset of the catalogue")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tlexp-chaos-"))
    outcomes: list[Outcome] = []
    t0 = time.time()
    try:
        for name in args.only or CATALOGUE:
            for o in CATALOGUE[name](work):
                outcomes.append(o)
                print(f"{'ok  ' if o.survived else 'FAIL'} {o.fault:38s} {o.detail}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    survived = sum(o.survived for o in outcomes)
    print(f"\nfaults injected {len(outcomes)} · survived {survived} ({100 * survived / max(len(outcomes), 1):.0f} %) · "
          f"runs lost {sum(o.runs_lost for o in outcomes)} · runs left RUNNING {sum(o.left_running for o in outcomes)}"
          f" · {time.time() - t0:.0f} s")
    return 0 if survived == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
