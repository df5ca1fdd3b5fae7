"""Lightning multi-node DDP, for real, on one machine: 2 nodes x 1 process through ``torchrun`` on loopback.

Starts two ``torchrun --nnodes 2 --node-rank 0|1 --nproc-per-node 1 --master-addr 127.0.0.1`` processes
running ``tlexp run trainer=ddp trainer.num_nodes=2 trainer.devices=1 trainer.accelerator=cpu``, as two
machines sharing a file system would (one outputs folder: the store, the caches). Checks that both
exit 0 and that the store holds exactly one run, FINISHED, with ``trainer.num_nodes=2`` — every stage
(pretraining included) ran data-parallel over both nodes and only global rank 0 recorded.

    python scripts/multinode_check.py [--outputs DIR] [overrides...]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", default=None, help="outputs folder (default: a fresh temporary one)")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("overrides", nargs="*", default=["trainer.max_epochs=2"])
    args = parser.parse_args()
    outputs = Path(args.outputs or tempfile.mkdtemp(prefix="tlexp-2node-")).resolve()
    env = {**os.environ, "TLEXP_OUTPUTS": str(outputs)}
    env.pop("MLFLOW_TRACKING_URI", None)
    port = free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    cmd = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
           "-m", "tlexp.cli", "run", "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=1",
           "trainer.accelerator=cpu", *args.overrides]
    t0 = time.time()
    nodes = []
    for rank in (0, 1):
        log = open(outputs / f"node{rank}.log", "w")  # noqa: SIM115 - closed below
        nodes.append((subprocess.Popen([*torchrun, "--node-rank", str(rank), *cmd], env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    codes = []
    for proc, log in nodes:
        try:
            codes.append(proc.wait(timeout=max(1, args.timeout - (time.time() - t0))))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(-9)
        log.close()
    wall = time.time() - t0
    from tlexp.tracking.queries import search_runs

    runs = search_runs(f"sqlite:///{outputs / 'mlflow.db'}")
    print(f"2 nodes x 1 process on 127.0.0.1:{port}: exit codes {codes}, {wall:.0f} s wall; "
          f"logs {outputs}/node0.log, node1.log")
    print(runs[["run_id", "status", "params.trainer.num_nodes", "metrics.test/ndcg_at_10"]].to_string(index=False))
    ok = codes == [0, 0] and len(runs) == 1 and runs["status"].iloc[0] == "FINISHED" \
        and runs["params.trainer.num_nodes"].iloc[0] == "2"
    print("PASS: one FINISHED run recorded by global rank 0" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
