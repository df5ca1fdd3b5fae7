"""tlexp side by side with RecBole 1.2.1 on identical MovieLens-100K data: BPR and SASRec (issue #13).

What it does, in order:

1. **RecBole in its own venv** (bench-only, never a tlexp dependency): creates ``--recbole-venv`` (default
   /work/recbole-venv) with Python 3.11 unless it already imports RecBole, installing ``RECBOLE_PACKAGES``
   (torch pinned first, so pip keeps the local CPU wheel; ``numpy<2``; ``pandas<2.2``; ``setuptools<81``
   because RecBole 1.2.1 pulls ray 2.6.3, which imports ``pkg_resources``). ``--recbole-python PATH`` uses an
   existing one.
2. **One copy of the data, written once, read by both tools** (RecBole *benchmark files*,
   ``benchmark_filename: [train, valid, test]``; tlexp ``split=given`` on the same files):
   - ``ml-100k-rs811``: all 100,000 ratings as implicit interactions, split per user at random 8:1:1 with
     RecBole's own arithmetic (RS ``[0.8, 0.1, 0.1]``, order RO): the user's rows in a seeded random order,
     ``floor(0.1 n)`` to valid, ``floor(0.1 n)`` to test, the rest to train. For BPR vs ``two_tower`` + BPR.
   - ``ml-100k-loo``: leave-one-out by time (ties in the timestamp kept in file order): the last item to test,
     the second last to valid, the rest to train; plain rows, what tlexp reads for ``sasrec``.
   - ``ml-100k-loo-seq``: the same leave-one-out data as RecBole's sequential benchmark format (one row per
     training target with the up-to-50 items before it as ``item_id_list``; valid: the train history -> the
     valid item; test: train + valid history -> the test item). These are exactly the rows RecBole's own
     ``LS: valid_and_test`` split with ``order: TO`` builds from the time-ordered data (checked by
     ``--check-recbole-split``); written out so that nothing about the order is left to either tool.
   Before any training the script reads the files back through tlexp's own loader and split code and checks
   that tlexp sees exactly the written split (and, for LOO, exactly the written item order).
3. **Runs** each tool as its own process, niced like its parent, measured the same way: wall time from launch,
   the end time of every epoch's validation (RecBole: its ``callback_fn``; tlexp: the MLflow timestamps of
   ``val/ndcg_at_10``), the peak RSS of the whole process tree (psutil, polled every 0.5 s; the kernel's
   ``ru_maxrss`` of the largest single process as a cross-check) and the load average (``uptime``) at start
   and end. Both select the epoch with the best validation NDCG@10 (full ranking, first epoch reaching the
   maximum), stop after 10 epochs without improvement, and report test metrics of that epoch, full ranking.
4. **Writes** ``results.json`` and ``results.md`` (the side-by-side table with tlexp/RecBole ratios) under
   ``--out`` and prints the table.

    python scripts/bench_peer.py --out /work/peer-out/bench [--models bpr sasrec] [--max-epochs 200]

Run it niced on a shared machine (``nice -n 19 python scripts/bench_peer.py ...``). The data are read from
``$TLEXP_DATA_DIR/movielens-100k`` (default ``../shared/data`` beside the repository), never copied into it.
Protocol, settings and measured numbers: docs/performance.md.

Top-level imports are the standard library only: the same file runs inside RecBole's venv
(``--recbole-worker``), where tlexp is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VENV = Path("/work/recbole-venv")
# What was installed and works together (Python 3.11, 2 CPU cores, no GPU), in this order.
# numpy<2 and pandas<2.2: RecBole 1.2.1 (2023) predates both (pandas 3 breaks its remapping of token_seq
# fields: "Length of values (1) does not match length of index"); setuptools<81: ray 2.6.3 imports pkg_resources.
RECBOLE_PACKAGES = [["torch==2.13.0"], ["recbole==1.2.1", "numpy<2", "pandas<2.2", "setuptools<81"]]
# Resolved with the above on 2026-12: numpy 1.26.4, pandas 2.1.4, scipy 1.17.1, ray 2.6.3, tensorboard 2.21.0,
# thop 0.1.1.post2209072238, colorlog 4.7.2, colorama 0.4.4, texttable 1.7.2, plotly 7.1.0, setuptools 80.10.2.

ML100K = "movielens-100k"
MAX_LEN = 50  # SASRec: MAX_ITEM_LIST_LENGTH (RecBole) / backbone.max_seq_len (tlexp)
RATIOS = (0.8, 0.1, 0.1)
MODELS = ("bpr", "sasrec")
METRICS = ("ndcg_at_10", "recall_at_10", "mrr_at_10")
# One learning rate per model, the same in both tools (Adam, no weight decay). SASRec: 1e-3, both tools' default.
# BPR: 5e-3 (tlexp's default); RecBole's own BPR default, 1e-3, needs well over 100 epochs here (see
# docs/performance.md), more than this benchmark can spend on a shared 2-core machine.
LR = {"bpr": 0.005, "sasrec": 0.001}


# ----------------------------------------------------------------------------------------------------------
# data: one split, written once as RecBole benchmark files
# ----------------------------------------------------------------------------------------------------------
def data_root() -> Path:
    """``$TLEXP_DATA_DIR`` or ``../shared/data`` beside the repository (tlexp's own fallback, conf/paths)."""
    return Path(os.environ.get("TLEXP_DATA_DIR") or REPO.parent / "shared" / "data")


def read_ml100k(folder: Path):
    """``ml-100k.inter`` as a frame: user, item (the tokens, as strings), rating, timestamp, row (file order)."""
    import pandas as pd

    path = folder / "ml-100k.inter"
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [c.partition(":")[0] for c in frame.columns]
    return pd.DataFrame({"user": frame["user_id"], "item": frame["item_id"], "rating": frame["rating"],
                         "timestamp": frame["timestamp"], "row": range(len(frame))})


def recbole_split_counts(n: int, ratios=RATIOS) -> list[int]:
    """RecBole 1.2.1's ``Dataset._calcu_split_ids`` as counts: int(r * n) for valid and test, the rest train
    (a part below one row gets one, taken from train)."""
    tot = sum(ratios)
    ratios = [r / tot for r in ratios]
    cnt = [int(ratios[i] * n) for i in range(len(ratios))]
    cnt[0] = n - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


def ratio_split(frame, seed: int, ratios=RATIOS) -> dict:
    """Per user, a seeded random order, then RecBole's RS counts: train / valid / test frames (RS + RO)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shuffled = frame.iloc[rng.permutation(len(frame))]
    shuffled = shuffled.sort_values("user", kind="stable")  # per user: the random order
    pos = shuffled.groupby("user", sort=False).cumcount().to_numpy()
    size = shuffled.groupby("user", sort=False)["item"].transform("size").to_numpy()
    counts = {n: recbole_split_counts(int(n), ratios) for n in np.unique(size)}
    n_train = np.array([counts[n][0] for n in size])
    n_valid = np.array([counts[n][1] for n in size])
    part = np.where(pos < n_train, "train", np.where(pos < n_train + n_valid, "valid", "test"))
    return {p: shuffled[part == p].reset_index(drop=True) for p in ("train", "valid", "test")}


def loo_split(frame) -> dict:
    """Per user in time order (ties in file order): last -> test, second last -> valid, the rest -> train."""
    ordered = frame.assign(ts=frame["timestamp"].astype(float)).sort_values(["user", "ts", "row"], kind="stable")
    from_end = ordered.groupby("user", sort=False).cumcount(ascending=False).to_numpy()
    parts = {"test": from_end == 0, "valid": from_end == 1, "train": from_end >= 2}
    return {p: ordered[m].drop(columns="ts").reset_index(drop=True) for p, m in parts.items()}


def write_atomic(path: Path, header: list[str], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(r) + "\n")


def write_plain(parts: dict, folder: Path, name: str) -> list[Path]:
    """``<name>.{train,valid,test}.inter``: user_id, item_id, rating, timestamp (each user's rows in order)."""
    paths = []
    for p in ("train", "valid", "test"):
        f = parts[p]
        path = folder / name / f"{name}.{p}.inter"
        write_atomic(path, ["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
                     zip(f["user"], f["item"], f["rating"], f["timestamp"], strict=True))
        paths.append(path)
    return paths


def sequences(loo: dict) -> dict[str, list[str]]:
    """Each user's items in the leave-one-out order: train..., valid, test."""
    import pandas as pd

    frame = pd.concat([loo["train"], loo["valid"], loo["test"]], ignore_index=True)
    order = frame.assign(ts=frame["timestamp"].astype(float)).sort_values(["user", "ts", "row"], kind="stable")
    return {u: list(g) for u, g in order.groupby("user", sort=False)["item"]}


def sequence_rows(loo: dict, max_len: int = MAX_LEN) -> dict[str, list[tuple[str, str, str]]]:
    """RecBole's sequential rows (user, space-separated history of at most ``max_len`` items, target) per part:
    every training item after the first as a target of the items before it; valid: the whole train history ->
    the valid item; test: train + valid -> the test item. What RecBole's data augmentation + LS builds."""
    out: dict[str, list[tuple[str, str, str]]] = {"train": [], "valid": [], "test": []}
    for user, seq in sequences(loo).items():
        for i in range(1, len(seq)):
            part = "test" if i == len(seq) - 1 else "valid" if i == len(seq) - 2 else "train"
            out[part].append((user, " ".join(seq[max(0, i - max_len): i]), seq[i]))
    return out


def write_sequences(loo: dict, folder: Path, name: str, max_len: int = MAX_LEN) -> list[Path]:
    paths = []
    for p, rows in sequence_rows(loo, max_len).items():
        path = folder / name / f"{name}.{p}.inter"
        write_atomic(path, ["user_id:token", "item_id_list:token_seq", "item_id:token"], rows)
        paths.append(path)
    return paths


def write_data(source: Path, folder: Path, seed: int) -> dict:
    """Write every benchmark file set; return what was written (names, sizes, the parts themselves)."""
    frame = read_ml100k(source)
    rs, loo = ratio_split(frame, seed), loo_split(frame)
    write_plain(rs, folder, "ml-100k-rs811")
    write_plain(loo, folder, "ml-100k-loo")
    write_sequences(loo, folder, "ml-100k-loo-seq")
    return {"rs": rs, "loo": loo, "n": len(frame), "users": frame["user"].nunique(), "items": frame["item"].nunique()}


def tlexp_reads(folder: Path, name: str):
    """The split tlexp builds from ``<name>.{train,valid,test}.inter`` (its RecBole loader, ``split=given``)."""
    from tlexp.data.loaders.recbole import RecBoleLoader
    from tlexp.data.scenario import split_domain

    loader = RecBoleLoader(name=name, dataset=name, data_dir=folder, folder=name,
                           benchmark=["train", "valid", "test"])
    return split_domain(loader.load(), {"protocol": "given", "cold_user_share": 0.0})


def check_identical(folder: Path, written: dict) -> dict:
    """tlexp's view of the files == the written split: the same (user, item) pairs in each part, and for the
    leave-one-out data each user's training history in the same order. Raises on any difference."""
    from tlexp.data.datamodule import user_sequences

    report = {}
    for key, name in (("rs", "ml-100k-rs811"), ("loo", "ml-100k-loo")):
        dd = tlexp_reads(folder, name)
        users, items = dd.users, dd.items
        for p in ("train", "valid", "test"):
            got = {(users[u], items[i]) for u, i in zip(getattr(dd, p)["user"],
                                                           getattr(dd, p)["item"], strict=True)}
            want = set(zip(written[key][p]["user"], written[key][p]["item"], strict=True))
            if got != want:
                raise SystemExit(f"tlexp reads {name}.{p} differently: {len(got ^ want)} pairs differ")
        report[name] = {p: len(getattr(dd, p)) for p in ("train", "valid", "test")}
        report[name].update(users=int(dd.n_users), items=int(dd.n_items))
    seqs = sequences(written["loo"])
    got = user_sequences([dd.train, dd.valid, dd.test], dd.n_users)
    for u, s in enumerate(got):
        if [dd.items[i] for i in s] != seqs[dd.users[u]]:
            raise SystemExit(f"tlexp orders user {dd.users[u]}'s leave-one-out history differently")
    report["ml-100k-loo"]["order"] = "identical"
    return report


# ----------------------------------------------------------------------------------------------------------
# RecBole: the venv, its configuration, and the worker that runs inside it
# ----------------------------------------------------------------------------------------------------------
def ensure_recbole(venv: Path, log: Path) -> Path:
    """The venv's python, creating the venv and installing RECBOLE_PACKAGES when RecBole does not import."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-W", "ignore", "-c", "import recbole.data, recbole.trainer"],
                                      capture_output=True).returncode == 0:
        return py
    base = shutil.which("python3.11") or sys.executable
    print(f"recbole: building {venv} (log: {log}); several minutes", flush=True)
    with open(log, "a") as f:
        if not py.exists():
            subprocess.run([base, "-m", "venv", str(venv)], check=True, stdout=f, stderr=subprocess.STDOUT)
        for group in RECBOLE_PACKAGES:
            subprocess.run([str(py), "-m", "pip", "install", *group], check=True, stdout=f, stderr=subprocess.STDOUT)
    return py


def recbole_config(model: str, data_folder: Path, work: Path, seed: int, max_epochs: int,
                   lr: float) -> tuple[str, dict]:
    """(dataset name, config dict) for RecBole. Everything a default could change is written out."""
    common = {
        "data_path": str(data_folder), "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)", "val_interval": None,
        "rm_dup_inter": None, "filter_inter_by_user_or_item": False,
        "seed": seed, "reproducibility": True, "use_gpu": False, "device": "cpu", "worker": 0,
        "epochs": max_epochs, "learner": "adam", "learning_rate": lr, "weight_decay": 0.0,
        "train_batch_size": 2048, "eval_batch_size": 4096, "eval_step": 1, "stopping_step": 10,
        "metrics": ["Recall", "MRR", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", "metric_decimal_place": 6,
        # with benchmark files RecBole ignores eval_args' split and order (still checked: TO for sequential models)
        "eval_args": {"group_by": "user", "order": "RO", "split": {"RS": [0.8, 0.1, 0.1]}, "mode": "full"},
        "checkpoint_dir": str(work / "saved"), "show_progress": False, "log_wandb": False, "save_dataset": False,
        "save_dataloaders": False, "state": "INFO",
    }
    if model == "bpr":
        return "ml-100k-rs811", {**common, "model": "BPR", "embedding_size": 64,
                                 "load_col": {"inter": ["user_id", "item_id"]},
                                 "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1,
                                                           "alpha": 1.0, "dynamic": False, "candidate_num": 0}}
    return "ml-100k-loo-seq", {**common, "model": "SASRec", "load_col": {"inter": ["user_id", "item_id_list",
                                                                                     "item_id"]},
                               "alias_of_item_id": ["item_id_list"], "MAX_ITEM_LIST_LENGTH": MAX_LEN,
                               "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
                               "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
                               "layer_norm_eps": 1e-12, "initializer_range": 0.02, "loss_type": "CE",
                               "train_neg_sample_args": None,
                               "eval_args": {"group_by": "user", "order": "TO", "split": {"LS": "valid_and_test"},
                                             "mode": "full"}}


def recbole_worker(spec_path: str) -> None:
    """Runs inside RecBole's venv: train with early stopping on validation NDCG@10, then test the best epoch."""
    spec = json.loads(Path(spec_path).read_text())
    os.chdir(spec["work"])  # RecBole writes ./log and ./log_tensorboard
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    t_import = time.time()
    config = Config(model=spec["config"]["model"], dataset=spec["dataset"], config_dict=spec["config"])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logging.getLogger().setLevel(logging.INFO)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epochs: list[dict] = []
    t_fit = time.time()
    trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                callback_fn=lambda e, score: epochs.append({"epoch": int(e), "t": time.time(), "val": float(score)}))
    t_fit_end = time.time()
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    names = {"ndcg@10": "ndcg_at_10", "recall@10": "recall_at_10", "mrr@10": "mrr_at_10"}
    out = {"epochs": epochs, "t_import": t_import, "t_fit": t_fit, "t_fit_end": t_fit_end, "t_end": time.time(),
           "test": {names[k]: float(v) for k, v in test.items() if k in names},
           "best_valid": float(trainer.best_valid_score),
           "data": {"users": int(dataset.user_num - 1), "items": int(dataset.item_num - 1),
                    "train": len(train_data._dataset), "valid": len(valid_data._dataset),
                    "test": len(test_data._dataset)}}
    Path(spec["result"]).write_text(json.dumps(out, indent=1))


def check_recbole_split(py: Path, written_loo: dict, folder: Path, work: Path) -> str:
    """RecBole's own LS + TO split (augmentation on a time-ordered .inter) against the written sequential rows."""
    import pandas as pd

    frame = pd.concat([written_loo[p] for p in ("train", "valid", "test")], ignore_index=True)
    # rows in the leave-one-out order: RecBole's stable sort then keeps it wherever timestamps tie (RecBole holds
    # float fields as float32, 64 s steps at ml-100k's ~8.8e8, so more of them tie there than in the file)
    frame = frame.assign(ts=frame["timestamp"].astype(float)).sort_values(["user", "ts", "row"], kind="stable")
    name = "ml-100k-ls-to"
    write_atomic(folder / name / f"{name}.inter", ["user_id:token", "item_id:token", "timestamp:float"],
                 zip(frame["user"], frame["item"], frame["timestamp"], strict=True))
    rows = sequence_rows(written_loo)
    expected = folder / name / "expected.json"
    expected.write_text(json.dumps({p: [list(r) for r in v] for p, v in rows.items()}))
    code = f"""
import json, warnings; warnings.filterwarnings('ignore')
from recbole.config import Config
from recbole.data import create_dataset
cfg = Config(model='SASRec', dataset='{name}', config_dict={{'data_path': {str(folder)!r}, 'USER_ID_FIELD': 'user_id',
  'ITEM_ID_FIELD': 'item_id', 'TIME_FIELD': 'timestamp', 'load_col': {{'inter': ['user_id', 'item_id', 'timestamp']}},
  'MAX_ITEM_LIST_LENGTH': {MAX_LEN}, 'train_neg_sample_args': None, 'use_gpu': False, 'device': 'cpu', 'state': 'ERROR',
  'user_inter_num_interval': '[0,inf)', 'item_inter_num_interval': '[0,inf)',
  'eval_args': {{'split': {{'LS': 'valid_and_test'}}, 'order': 'TO', 'group_by': 'user', 'mode': 'full'}}}})
ds = create_dataset(cfg)
parts = ds.build()
want = json.load(open({str(expected)!r}))
for p, d in zip(['train', 'valid', 'test'], parts):
    u = ds.id2token('user_id', d.inter_feat['user_id'].numpy())
    t = ds.id2token('item_id', d.inter_feat['item_id'].numpy())
    lists, lens = d.inter_feat['item_id_list'].numpy(), d.inter_feat['item_length'].numpy()
    got = sorted((a, ' '.join(ds.id2token('item_id', l[:n])), b) for a, b, l, n in zip(u, t, lists, lens))
    assert got == sorted(tuple(r) for r in want[p]), p
print('identical')
"""
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=work)
    return res.stdout.strip().splitlines()[-1] if res.returncode == 0 else "DIFFERENT: " + res.stderr[-2000:]


# ----------------------------------------------------------------------------------------------------------
# measuring a process tree
# ----------------------------------------------------------------------------------------------------------
def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def measured(cmd: list[str], env: dict, cwd: Path, log: Path, poll_s: float = 0.5) -> dict:
    """Run ``cmd``; wall time, peak RSS of the whole process tree (polled), ru_maxrss, load averages."""
    import psutil

    start = {"uptime": uptime(), "loadavg": os.getloadavg()}
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        peak = [0]
        stop = threading.Event()

        def watch() -> None:
            try:
                root = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not stop.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    break
                total = 0
                for p in tree:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total)
                stop.wait(poll_s)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        thread.join()
    return {"t_launch": t0, "wall_s": wall, "returncode": proc.returncode, "peak_rss_mb": peak[0] / 2 ** 20,
            "ru_maxrss_mb": usage.ru_maxrss / 1024, "load_start": start, "load_end": {"uptime": uptime(),
                                                                                      "loadavg": os.getloadavg()}}


def epoch_summary(t_launch: float, ends: list[float], vals: list[float]) -> dict:
    """Best epoch (first maximum of validation NDCG@10, counted from 1), time to it, seconds per epoch."""
    best = max(range(len(vals)), key=lambda i: (vals[i], -i))
    per_epoch = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else ends[0] - t_launch
    return {"epochs": len(vals), "best_epoch": best + 1, "val_ndcg_at_10": vals[best],
            "to_best_s": ends[best] - t_launch, "s_per_epoch": per_epoch, "first_epoch_end_s": ends[0] - t_launch}


# ----------------------------------------------------------------------------------------------------------
# the two tools
# ----------------------------------------------------------------------------------------------------------
def run_recbole(py: Path, model: str, folder: Path, out: Path, seed: int, max_epochs: int, lr: float) -> dict:
    work = out / f"recbole-{model}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    dataset, config = recbole_config(model, folder, work, seed, max_epochs, lr)
    spec = {"dataset": dataset, "config": config, "work": str(work), "result": str(work / "result.json")}
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [str(py), str(Path(__file__).resolve()), "--recbole-worker", str(work / "spec.json")]
    m = measured(cmd, env, work, work / "stdout.log")
    if m["returncode"] != 0:
        raise SystemExit(f"RecBole {model} failed (exit {m['returncode']}); see {work / 'stdout.log'}")
    res = json.loads((work / "result.json").read_text())
    ep = epoch_summary(m["t_launch"], [e["t"] for e in res["epochs"]], [e["val"] for e in res["epochs"]])
    return {"tool": "RecBole 1.2.1", "model": config["model"], "command": " ".join(cmd), "config": config,
            "test": res["test"], "data": res["data"], **ep, **m,
            "fit_s": res["t_fit_end"] - res["t_fit"], "startup_s": res["t_fit"] - m["t_launch"]}


def tlexp_overrides(model: str, folder: Path, seed: int, max_epochs: int, lr: float) -> list[str]:
    """The tlexp run matching RecBole's: target-only, the written files via split=given, same sizes and lr."""
    name = "ml-100k-rs811" if model == "bpr" else "ml-100k-loo"
    common = ["source=none", "target=ml100k", "strategy=scratch", "split=given", "split.cold_user_share=0",
              f"target.data_dir={folder}", f"target.folder={name}", f"target.dataset={name}",
              "+target.benchmark=[train,valid,test]", f"seed={seed}", f"trainer.max_epochs={max_epochs}",
              "callbacks.early_stopping.patience=10", f"optimizer.lr={lr}", "optimizer.weight_decay=0.0",
              "eval.ks=[10]", "trainer.enable_progress_bar=false"]
    if model == "bpr":
        return [*common, "backbone=two_tower", "loss=bpr", "backbone.dim=64", "batch_size=2048"]
    return [*common, "backbone=sasrec", "loss=ce", "backbone.dim=64", "backbone.n_layers=2", "backbone.n_heads=2",
            f"backbone.max_seq_len={MAX_LEN}", "eval.mask_history=false"]


def run_tlexp(model: str, folder: Path, out: Path, seed: int, max_epochs: int, lr: float, extra: list[str],
              tag: str = "") -> dict:
    import re

    work = out / f"tlexp-{model}{tag}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    overrides = tlexp_overrides(model, folder, seed, max_epochs, lr) + list(extra)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(TLEXP_OUTPUTS=str(work / "outputs"), PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "tlexp.cli", "run", *overrides]
    m = measured(cmd, env, work, work / "stdout.log")
    text = (work / "stdout.log").read_text(errors="replace")
    found = re.search(r"MLflow run ([0-9a-f]{32})", text)
    if m["returncode"] != 0 or not found:
        raise SystemExit(f"tlexp {model} failed (exit {m['returncode']}); see {work / 'stdout.log'}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'outputs' / 'mlflow.db'}")
    run = client.get_run(found.group(1))
    hist = sorted(client.get_metric_history(run.info.run_id, "val/ndcg_at_10"), key=lambda h: (h.step, h.timestamp))
    hist = hist[:-1]  # the last entry is the selected model's value, logged again after the fit
    ep = epoch_summary(m["t_launch"], [h.timestamp / 1000 for h in hist], [h.value for h in hist])
    if str(ep["best_epoch"]) != run.data.tags.get("best_epoch"):
        raise SystemExit(f"tlexp {model}: best epoch {ep['best_epoch']} from the history, "
                         f"{run.data.tags.get('best_epoch')} tagged")
    mt = run.data.metrics
    return {"tool": "tlexp", "model": "two_tower + BPR" if model == "bpr" else "sasrec + CE",
            "command": "tlexp run " + " ".join(overrides), "run_id": run.info.run_id,
            "test": {k: mt[f"test/{k}"] for k in METRICS}, "data": {k: run.data.params.get(f"data.{k}") for k in
                                                                    ("target_users", "target_items")},
            **ep, **m, "fit_s": mt.get("time/fit_s"), "startup_s": None}


# ----------------------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------------------
COLUMNS = [("NDCG@10", lambda r: r["test"]["ndcg_at_10"], "{:.4f}"),
           ("Recall@10", lambda r: r["test"]["recall_at_10"], "{:.4f}"),
           ("MRR@10", lambda r: r["test"]["mrr_at_10"], "{:.4f}"),
           ("val NDCG@10", lambda r: r["val_ndcg_at_10"], "{:.4f}"),
           ("best / run epochs", None, None),
           ("s / epoch", lambda r: r["s_per_epoch"], "{:.2f}"),
           ("to best epoch (s)", lambda r: r["to_best_s"], "{:.1f}"),
           ("total wall (s)", lambda r: r["wall_s"], "{:.1f}"),
           ("peak RSS (MB)", lambda r: max(r["peak_rss_mb"], r["ru_maxrss_mb"]), "{:.0f}")]


def table(results: dict) -> str:
    lines = ["| model | tool | " + " | ".join(c[0] for c in COLUMNS) + " | load avg start → end |",
             "|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for model, pair in results.items():
        for key in ("recbole", "tlexp", *sorted(k for k in pair if k.startswith("tlexp_"))):
            r = pair[key]
            cells = [f"{r['best_epoch']} / {r['epochs']}" if f is None else fmt.format(f(r)) for _, f, fmt in COLUMNS]
            la = lambda x: "/".join(f"{v:.2f}" for v in x["loadavg"])  # noqa: E731
            note = f", up to {r['max_epochs']} epochs" if key != "tlexp" and key != "recbole" else ""
            lines.append(f"| {model} | {r['tool']} ({r['model']}{note}) | " + " | ".join(cells)
                         + f" | {la(r['load_start'])} → {la(r['load_end'])} |")
        for key in ("tlexp", *sorted(k for k in pair if k.startswith("tlexp_"))):
            ratio = [("—" if f is None else f"{f(pair[key]) / f(pair['recbole']):.2f}×") for _, f, _ in COLUMNS]
            what = "" if key == "tlexp" else f" (tlexp up to {pair[key]['max_epochs']} epochs)"
            lines.append(f"| {model} | **tlexp / RecBole**{what} | " + " | ".join(ratio) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Writes one seeded split of ml-100k as "
                                 "RecBole benchmark files, runs RecBole BPR / SASRec and tlexp two_tower+BPR / sasrec "
                                 "on them, and writes results.md / results.json (NDCG@10, Recall@10, MRR@10, s/epoch, "
                                 "wall time to the best epoch, total wall, peak RSS, tlexp/RecBole ratios).",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/work/peer-out/bench"), help="output folder (data, runs, "
                    "results.md, results.json); default %(default)s")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="which pairs to run")
    ap.add_argument("--max-epochs", type=int, default=200, help="epoch cap for both tools (early stopping: 10 "
                    "epochs without improvement of validation NDCG@10); default %(default)s")
    ap.add_argument("--sasrec-max-epochs", type=int, help="epoch cap of both SASRec runs (default: --max-epochs); "
                    "RecBole's SASRec re-encodes every prefix of every history each epoch, minutes an epoch on CPU")
    ap.add_argument("--tlexp-also", type=int, nargs="*", default=[], metavar="EPOCHS", help="extra tlexp runs of "
                    "each model with these epoch caps (e.g. uncapped beside a capped RecBole), reported as extra rows")
    ap.add_argument("--seed", type=int, default=0, help="model seed of both tools; default %(default)s")
    ap.add_argument("--split-seed", type=int, default=2024, help="seed of the 8:1:1 random split")
    ap.add_argument("--recbole-venv", type=Path, default=DEFAULT_VENV, help="RecBole's venv, built if missing")
    ap.add_argument("--recbole-python", type=Path, help="an existing python with RecBole 1.2.1 (skips the venv)")
    ap.add_argument("--tools", nargs="+", choices=("recbole", "tlexp"), default=["recbole", "tlexp"],
                    help="run only one side (the other is read from an earlier results.json in --out)")
    ap.add_argument("--check-recbole-split", action="store_true", help="also check that RecBole's own LS/TO "
                    "split of the time-ordered data builds exactly the written sequential rows")
    ap.add_argument("--tlexp-extra", nargs="*", default=[], help="extra tlexp overrides for every tlexp run")
    ap.add_argument("--report-only", action="store_true", help="rebuild results.md from --out's results.json")
    ap.add_argument("--recbole-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.recbole_worker:
        recbole_worker(args.recbole_worker)
        return

    out = args.out.resolve()
    if args.report_only:
        results = json.loads((out / "results.json").read_text())["results"]
        md = table({m: p for m, p in results.items() if "recbole" in p and "tlexp" in p})
        (out / "results.md").write_text(md + "\n")
        print(md)
        return
    folder = out / "data"
    source = data_root() / ML100K
    if not (source / "ml-100k.inter").is_file():
        raise SystemExit(f"ml-100k not found at {source}: set TLEXP_DATA_DIR to the folder holding {ML100K}/")
    out.mkdir(parents=True, exist_ok=True)
    written = write_data(source, folder, args.split_seed)
    identity = check_identical(folder, written)
    print(f"data: {written['n']} interactions, {written['users']} users, {written['items']} items -> {folder}; "
          f"tlexp reads exactly the written split: {json.dumps(identity)}", flush=True)
    py = args.recbole_python or ensure_recbole(args.recbole_venv, out / "recbole-install.log")
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    results = dict(previous.get("results", {}))
    meta = {**previous.get("meta", {}), "python": sys.executable, "recbole_python": str(py),
            "split_seed": args.split_seed, "seed": args.seed,
            "max_epochs": args.max_epochs, "data": identity, "data_source": str(source), "cores": os.cpu_count(),
            "nice": os.nice(0), "argv": sys.argv, "lr": LR}
    if args.check_recbole_split:
        meta["recbole_ls_to_split"] = check_recbole_split(py, written["loo"], folder, out)
        print(f"RecBole's own LS/TO split vs the written sequential rows: {meta['recbole_ls_to_split']}", flush=True)
    def save() -> None:
        (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))

    for model in args.models:  # tlexp first: the cheap side is done when a long RecBole run has to be cut short
        pair = results.setdefault(model, {})
        cap = args.sasrec_max_epochs if model == "sasrec" and args.sasrec_max_epochs else args.max_epochs
        if "tlexp" in args.tools:
            print(f"{model}: tlexp, up to {cap} epochs ... ({uptime()})", flush=True)
            pair["tlexp"] = {**run_tlexp(model, folder, out, args.seed, cap, LR[model], args.tlexp_extra),
                             "max_epochs": cap}
            save()
            for extra_cap in args.tlexp_also:
                print(f"{model}: tlexp, up to {extra_cap} epochs ... ({uptime()})", flush=True)
                pair[f"tlexp_{extra_cap}"] = {**run_tlexp(model, folder, out, args.seed, extra_cap, LR[model],
                                                          args.tlexp_extra, tag=f"-{extra_cap}"),
                                              "max_epochs": extra_cap}
                save()
        if "recbole" in args.tools:
            print(f"{model}: RecBole, up to {cap} epochs ... ({uptime()})", flush=True)
            pair["recbole"] = {**run_recbole(py, model, folder, out, args.seed, cap, LR[model]), "max_epochs": cap}
            save()
    done = {m: p for m, p in results.items() if "recbole" in p and "tlexp" in p}
    md = table(done)
    (out / "results.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
