"""Figures: a run's learning curves, and the comparison bar chart of ``tlexp compare --plot``.

matplotlib with the Agg backend (files only, no display), imported inside the functions so that
importing tlexp stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

# (label, metric prefix) of the test segments a comparison shows side by side
SEGMENTS = (("all", "test"), ("warm", "test_warm"), ("cold", "test_cold"))
SEGMENT_COLORS = {"all": "#4C72B0", "warm": "#DD8452", "cold": "#55A868"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def learning_curves(train_loss: Sequence[float], val_metric: Sequence[float], path: str | Path,
                    title: str = "", val_name: str = "val/ndcg_at_10", best_epoch: int | None = None) -> Path:
    """Two panels over epochs: training loss, and the validation metric early stopping watched.

    Why both: a falling loss with a flat validation ndcg is overfitting (or a wrong transfer); a
    validation curve still rising at the last epoch says ``max_epochs`` was too small.
    """
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    ep_loss = list(range(1, len(train_loss) + 1))
    ep_val = list(range(1, len(val_metric) + 1))
    ax1.plot(ep_loss, train_loss, marker="o", color="#C44E52")
    ax1.set(xlabel="epoch", ylabel="train/loss", title="training loss")
    ax2.plot(ep_val, val_metric, marker="o", color="#4C72B0")
    if best_epoch is not None and 1 <= best_epoch <= len(val_metric):  # epochs count from 1
        ax2.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label="selected")
        ax2.legend(loc="lower right", fontsize=8)
    ax2.set(xlabel="epoch", ylabel=val_name, title="validation")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if max(len(train_loss), len(val_metric)) <= 20:
            ax.set_xticks(range(1, max(len(train_loss), len(val_metric)) + 1))
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_bars(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Grouped bars: one group per row of a :func:`tlexp.analysis.compare.compare_table`, one bar per
    segment (all/warm/cold) of its metric, error bars = std over the group's runs."""
    plt = _pyplot()
    cols, by = table.attrs["columns"], table.attrs["by"]
    segs = {p: s for s, p in SEGMENTS}
    labels = [" · ".join(str(r[b]) for b in by) for _, r in table.iterrows()]
    n_groups, n_bars = len(table), len(cols)
    width = 0.8 / max(n_bars, 1)
    fig, ax = plt.subplots(figsize=(min(14.0, max(5.5, 1.1 * n_groups + 2)), 4.2), constrained_layout=True)
    for j, c in enumerate(cols):
        seg = segs.get(c.partition("/")[0], c)
        xs = [i + (j - (n_bars - 1) / 2) * width for i in range(n_groups)]
        means = table[f"{c} mean"].to_numpy(float)
        stds = table[f"{c} std"].fillna(0.0).to_numpy(float)
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=seg, color=SEGMENT_COLORS.get(seg))
    ax.set_xticks(range(n_groups))
    ax.set_xticklabels(labels, rotation=20 if n_groups > 4 else 0, ha="right" if n_groups > 4 else "center")
    ax.set_ylabel(cols[0].partition("/")[2] if cols else "")
    ax.set_xlabel(",".join(by))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="segment", fontsize=8)
    counts = sorted(set(int(n) for n in table["n"]))
    ns = f"n={counts[0]} runs per group" if len(counts) == 1 else \
        ", ".join(f"{lab}: n={n}" for lab, n in zip(labels, table["n"], strict=True))
    ax.set_title((title + "\n" if title else "") + f"mean ± std over runs ({ns})", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
