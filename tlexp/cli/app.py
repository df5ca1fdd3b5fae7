"""The ``tlexp`` command. Subcommands import their heavy dependencies lazily, so ``--help`` is fast."""

from __future__ import annotations

import argparse
import atexit
import os
import re
import subprocess
import sys
import threading

HELP = """\
tlexp — transfer-learning experiments for recommender systems

usage: tlexp <command> [args]

commands:
  run [overrides]   run one experiment (Hydra overrides, e.g. strategy=scratch data=ecommerce seed=1;
                    -m for a sweep: tlexp run -m strategy=scratch,finetune seed=0,1,2;
                    --help for the config groups and their choices;
                    shell completion: eval "$(tlexp run -sc install=bash)")
  data list         the data presets and domains
  data describe     dataset statistics of a scenario (e.g. tlexp data describe data=social)
  ui [--port P]     the MLflow UI on 127.0.0.1 over the same store as tlexp run
  compare [opts]    table of logged runs: mean ± std over seeds per group, paired gains over the best
                    non-transfer baseline with 95 % intervals; refuses to pool unlike runs (--experiment,
                    --sweep ID|latest, --metric, --by, --pool, --csv, --markdown, --plot out.png)
  recommend run=<run_id> users=<ids or file> [k=10] [out=recs.csv]
                    top-K unseen items (with titles) per user from a finished run's model
  explain run=<run_id> users=<ids> [items=<ids>] [k=5] [top=3] [quantize=int8]
                    which history items (source and target domain) each recommendation's score comes from
  runs [--reap]     the logged runs, newest first (run ids for recommend and resume=)
"""

SUBCOMMANDS = ("run", "data", "ui", "compare", "recommend", "explain", "runs")


def _is_run_argument(arg: str) -> bool:
    """Arguments that only make sense to ``tlexp run``: Hydra overrides (``key=value``, ``+key=v``,
    ``~key``) and Hydra's flags. ``tlexp <overrides>`` is how Lightning's ``ddp`` relaunches a run
    and how Hydra's completion asks for candidates, so it means ``tlexp run <overrides>``."""
    return "=" in arg or arg.startswith(("+", "~", "-m", "--multirun", "-sc", "--shell-completion", "-c", "--cfg",
                                         "-p", "--package", "--info", "--resolve", "--hydra-help", "-cd", "-cp",
                                         "--config"))


def _strip_run_from_completion_line() -> None:
    """Hydra's bash completion sends the whole command line (``tlexp run stra``) in ``COMP_LINE`` and
    strips only the program name; the ``run`` word would be read as an override."""
    line = os.environ.get("COMP_LINE")
    if line is None:
        return
    stripped = re.sub(r"^(\s*\S+)\s+run(\s|$)", r"\1\2", line, count=1)
    if stripped != line:
        os.environ["COMP_LINE"] = stripped
        point = os.environ.get("COMP_POINT")
        if point is not None and point.isdigit():
            os.environ["COMP_POINT"] = str(max(0, int(point) - (len(line) - len(stripped))))


ML_VIEW = "workflowType=machine_learning"  # MLflow 3's UI opens on its GenAI views without it


def experiment_links(uri: str, base: str, limit: int = 5) -> list[str]:
    """Links that open the most recent experiments on the training-runs table (not the traces view).

    MLflow 3.17's UI picks GenAI or "Model training" views from the ``workflowType`` URL parameter,
    else from what the browser last chose (GenAI by default); the experiment's own kind tag is not
    enough. Clicking "Model training" once in the sidebar also makes the browser remember it.
    """
    try:
        from mlflow.tracking import MlflowClient

        experiments = MlflowClient(uri).search_experiments(order_by=["last_update_time DESC"], max_results=limit + 1)
    except Exception:  # noqa: BLE001 - links are a convenience; the UI starts anyway
        return []
    lines = [f"  {e.name}: {base}/#/experiments/{e.experiment_id}/runs?{ML_VIEW}"
             for e in experiments if e.name != "Default"][:limit]
    return (["experiments (open on the runs table):"] + lines) if lines else []


def _ui(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tlexp ui", description="MLflow UI over tlexp's store, on 127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--outputs", default=os.environ.get("TLEXP_OUTPUTS", "outputs"),
                        help="tlexp's outputs folder (holds the embedded store)")
    parser.add_argument("--print-command", action="store_true", help="print the mlflow command and exit")
    args = parser.parse_args(argv)
    from tlexp.tracking.store import EMBEDDED_ARTIFACTS, resolve_tracking_uri

    uri = resolve_tracking_uri(None, args.outputs, create=False)
    if not uri.startswith("sqlite:"):
        print(f"the store is a tracking server: open {uri} in a browser (tlexp ui serves embedded stores only)")
        return 0
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port), "--workers", "1"]
    if uri.startswith("sqlite:"):
        from pathlib import Path

        cmd += ["--default-artifact-root", (Path(args.outputs).resolve() / EMBEDDED_ARTIFACTS).as_uri()]
    if args.print_command:
        print(" ".join(cmd))
        return 0
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port}  (Ctrl-C to stop)")
    for line in experiment_links(uri, f"http://{args.host}:{args.port}"):
        print(line)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    child = subprocess.Popen(cmd, env=env, start_new_session=True)  # its own group: stopped as a whole
    try:
        return child.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the server goes with us
        return 0
    finally:
        from tlexp.core.signals import stop_group

        stop_group(child, timeout=10)


def entry() -> None:
    """The ``tlexp`` command (and ``python -m tlexp.cli``): :func:`main`, then a fast exit.

    Tearing the interpreter down after a run (torch, Lightning, MLflow and transformers: thousands of
    modules) takes ~4 s on 2 cores, longer than a small run's training, and every ``tlexp`` process
    pays it. Nothing is left to do by then: files are closed by the code that wrote them, and the
    atexit handlers (logging, MLflow's asynchronous queue, temporary folders, multiprocessing) run
    here first. So the process ends with ``os._exit`` and main's exit code once stdout and stderr are
    flushed. An unexpected exception still ends the normal way, with its traceback. (Running only
    the atexit handlers once left a joblib sweep waiting 5 minutes for its idle workers.)
    """
    try:
        code = main()
    except SystemExit as stop:
        code = stop.code
    if isinstance(code, str):  # sys.exit("message"): printed, exit 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    # what the interpreter does at exit, in its order: threading's exit hooks and the join of
    # non-daemon threads first (a joblib/loky pool is told to stop there), then the atexit handlers
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(0 if code is None else int(code))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP)
        return 0
    from tlexp.core.signals import Interrupted, install

    install()  # Ctrl-C and SIGTERM raise Interrupted in every command: one line, exit 130 / 143
    try:
        return _dispatch(argv)
    except KeyboardInterrupt as stop:
        code = stop.exit_code if isinstance(stop, Interrupted) else 130
        print(f"tlexp: {stop or 'stopped by SIGINT'}", file=sys.stderr)
        return code


def _dispatch(argv: list[str]) -> int:
    cmd, rest = argv[0], argv[1:]
    if cmd == "run" or _is_run_argument(cmd):
        from tlexp.cli.run import main as run_main

        _strip_run_from_completion_line()
        return run_main(rest if cmd == "run" else argv)
    if cmd == "ui":
        return _ui(rest)
    if cmd == "compare":
        from tlexp.cli.compare import main as compare_main

        return compare_main(rest)
    if cmd == "recommend":
        from tlexp.cli.recommend import main as recommend_main

        return recommend_main(rest)
    if cmd == "explain":
        from tlexp.cli.explain import main as explain_main

        return explain_main(rest)
    if cmd == "data":
        from tlexp.cli.data import main as data_main

        return data_main(rest)
    if cmd == "runs":
        from tlexp.cli.runs import main as runs_main

        return runs_main(rest)
    print(f"tlexp: unknown command '{cmd}'\n\n{HELP}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
