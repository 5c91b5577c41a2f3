"""The runs log (one CSV row per trained model) and the plots featx writes."""

from __future__ import annotations

import csv
import fcntl
import time
from pathlib import Path

import numpy as np

RUN_COLUMNS = [
    "time", "dataset", "route", "backbone", "taps", "head", "split_id", "n_train", "n_val", "n_test",
    "train_acc", "val_acc", "test_acc", "extract_s", "fit_s", "output",
]


def runs_log_path(cache_dir) -> Path:
    return Path(cache_dir) / "runs.csv"


def append_run(path: str | Path, row: dict) -> None:
    """Append one row; the header is written with the first row.  Locked, so
    parallel runs never interleave half-lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), **row}
    unknown = set(row) - set(RUN_COLUMNS)
    if unknown:
        raise ValueError(f"unknown runs-log columns: {sorted(unknown)}")
    with open(path, "a+", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0, 2)
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS)
        if f.tell() == 0:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k)) for k in RUN_COLUMNS})


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return v


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(y_true, y_pred, class_names, path, title: str) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.6 * n + 2), max(4.5, 0.6 * n + 1.5)))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=class_names, ax=ax, colorbar=False,
                                            xticks_rotation=45 if n > 4 else "horizontal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_sweep(table, path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = np.arange(len(table))
    for column, label in (("val_acc", "validation"), ("test_acc", "test")):
        if column in table and table[column].notna().any():
            ax.plot(x, table[column], marker="o", label=label)
    ax.set_xticks(x, [f"{t}\n(/{s})" for t, s in zip(table["tap"], table["stride"])])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
