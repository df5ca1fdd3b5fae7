"""A sweep through a real Ray cluster, for real, on one machine: ``ray start --head`` on loopback, then
``tlexp run -m hydra/launcher=ray_cluster hydra.launcher.ray.init.address=auto ...``, then ``ray stop``.

Ray is not a tlexp dependency: run this with a Python that has ``hydra-ray-launcher`` (it brings
``ray``) and can import tlexp, e.g. a side venv layered over tlexp's::

    python -m venv /work/ray-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /work/ray-venv/lib/python3.11/site-packages/tlexp.pth
    /work/ray-venv/bin/pip install hydra-ray-launcher==1.2.2
    PYTHONPATH=$PWD /work/ray-venv/bin/python scripts/ray_check.py

Checks that the sweep exits 0 and that the store holds one parent run and one child per job (tagged
``mlflow.parentRunId``), every one of them FINISHED — i.e. the jobs ran as Ray tasks in worker
processes and still logged under the sweep's parent in the sweep's store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", default=None, help="outputs folder (default: a fresh temporary one)")
    parser.add_argument("--num-cpus", type=int, default=1, help="CPUs the Ray head offers (= jobs at once)")
    parser.add_argument("--port", type=int, default=6390)
    parser.add_argument("--timeout", type=int, default=1500)
    parser.add_argument("overrides", nargs="*",
                        default=["strategy=popular,scratch,finetune", "seed=0", "trainer.max_epochs=2",
                                 "pretrain.max_epochs=2"])
    args = parser.parse_args()
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray is None:
        raise SystemExit("ray is not installed for this Python: pip install hydra-ray-launcher==1.2.2")
    outputs = Path(args.outputs or tempfile.mkdtemp(prefix="tlexp-ray-")).resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TLEXP_OUTPUTS": str(outputs), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={args.port}",
                    f"--num-cpus={args.num_cpus}", "--include-dashboard=false", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True)
    t0 = time.time()
    try:
        with open(outputs / "sweep.log", "w") as log:
            code = subprocess.run([sys.executable, "-m", "tlexp.cli", "run", "-m", "hydra/launcher=ray_cluster",
                                   "hydra.launcher.ray.init.address=auto", "hydra.launcher.ray.remote.num_cpus=1",
                                   "logger.experiment_name=ray-sweep", *args.overrides],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=args.timeout).returncode
    finally:
        subprocess.run([ray, "stop"], env=env, capture_output=True)
    wall = time.time() - t0
    from tlexp.tracking.queries import search_runs

    runs = search_runs(f"sqlite:///{outputs / 'mlflow.db'}")
    parent_col = "tags.mlflow.parentRunId"
    children = runs[runs[parent_col].notna()] if parent_col in runs else runs.iloc[:0]
    parents = runs[~runs["run_id"].isin(children["run_id"])]
    print(f"sweep exit {code}, {wall:.0f} s wall; store {outputs / 'mlflow.db'}")
    for _, r in runs.iterrows():
        name = r.get("params.strategy.name")
        print(f"  {r['run_id']}  {r['status']:9s} {name if isinstance(name, str) else 'parent (the sweep)'}  "
              f"test/ndcg_at_10={r.get('metrics.test/ndcg_at_10', float('nan')):.4f}")
    ok = (code == 0 and len(parents) == 1 and len(children) >= 1
          and set(children[parent_col]) == {parents["run_id"].iloc[0]} and set(runs["status"]) == {"FINISHED"})
    print("OK: one parent, every job under it, all FINISHED" if ok else "FAILED: see above and sweep.log")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
