"""The runs log (one CSV row per trained model) and the plots featx writes."""

from __future__ import annotations

import csv
import fcntl
import time
from pathlib import Path

import numpy as np

from featx.cells import safe_cell
from featx.names import shown

RUN_COLUMNS = [
    "time", "dataset", "route", "backbone", "taps", "head", "split_id", "n_train", "n_val", "n_test",
    "train_acc", "val_acc", "test_acc", "extract_s", "fit_s", "output", "val_kind", "val_n",
]
# val_kind: what val_acc is ('val': held-out validation, n_val images; 'cv': cross-validated on train+val,
# val_n images; featx.stats.KINDS), val_n: its n.  Last, so that a log written before them stays readable.


def runs_log_path(cache_dir) -> Path:
    """The runs log of a cache folder: ``cache_dir/runs.csv``."""
    return Path(cache_dir) / "runs.csv"


def append_run(path: str | Path, row: dict) -> None:
    """Append one row to the runs log; the header is written with the first row.

    Locked (``flock``), so parallel runs never interleave half-lines.

    Parameters
    ----------
    path : str or Path
        The runs log (created with its folder).
    row : dict
        Values for :data:`RUN_COLUMNS` (``time`` is filled in); floats are written with 4 decimals.

    Raises
    ------
    ValueError
        A key that is not one of :data:`RUN_COLUMNS`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), **row}
    unknown = set(row) - set(RUN_COLUMNS)
    if unknown:
        raise ValueError(f"unknown runs-log columns: {sorted(unknown)}")
    with open(path, "a+", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        header = next(csv.reader([f.readline()]), None)
        f.seek(0, 2)
        # a log begun before the newest columns keeps its header: rows stay aligned with it
        columns = [c for c in header if c in RUN_COLUMNS] if header and f.tell() else RUN_COLUMNS
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if f.tell() == 0:
            writer.writeheader()
        writer.writerow({k: safe_cell(shown(_fmt(row.get(k)))) for k in columns})  # any name as text (featx.names), spreadsheet-safe (featx.cells)


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return v


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_text(text) -> str:
    """``text`` drawn as it is: matplotlib reads ``$...$`` as mathematics, and a name holding one
    ``$`` (or a malformed pair) would fail the whole figure."""
    return str(text).replace("$", r"\$")


#: Largest side of a figure featx draws, inches (at 110 dpi: 3,300 pixels), however many classes or runs.
MAX_FIGURE_INCHES = 30.0


def plot_confusion(y_true, y_pred, class_names, path, title: str) -> Path:
    """The confusion matrix of ``y_pred`` against ``y_true`` as a PNG at ``path`` (returned)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    y_true, y_pred = [shown(c) for c in y_true], [shown(c) for c in y_pred]  # any folder name as text
    class_names = [shown(c) for c in class_names]
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(min(MAX_FIGURE_INCHES, max(5.5, 0.6 * n + 2)),
                                    min(MAX_FIGURE_INCHES, max(4.5, 0.6 * n + 1.5))))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=class_names, ax=ax, colorbar=False,
                                            display_labels=[plain_text(c) for c in class_names],
                                            xticks_rotation=45 if n > 4 else "horizontal")
    ax.set_title(plain_text(shown(title)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_sweep(table, path, title: str) -> Path:
    """Validation and test accuracy by tap (a ``sweep`` table) as a PNG at ``path`` (returned)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = np.arange(len(table))
    for column, label in (("val_acc", "validation"), ("test_acc", "test")):
        if column in table and table[column].notna().any():
            ax.plot(x, table[column], marker="o", label=label)
    ax.set_xticks(x, [f"{t}\n(/{s})" for t, s in zip(table["tap"], table["stride"])])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(plain_text(shown(title)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def history_logger(path):
    """A Keras callback that streams ``history.csv`` with epochs counted from 1, as the plots count them.

    Parameters
    ----------
    path : str or Path
        The CSV file (overwritten).

    Returns
    -------
    keras.callbacks.CSVLogger
    """
    from featx import _tf

    keras = _tf.keras()

    class _FromOne(keras.callbacks.CSVLogger):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch + 1, logs)

    return _FromOne(str(path))


def epoch_ticks(n_epochs: int, most: int = 10) -> list[int]:
    """Whole-epoch tick positions (epochs count from 1): every epoch up to ``most``, else about ``most``
    evenly spaced ones, always including the first and the last."""
    if n_epochs <= most:
        return list(range(1, n_epochs + 1))
    return sorted({int(round(v)) for v in np.linspace(1, n_epochs, most)})


def plot_curves(history: dict, path, title: str) -> Path:
    """Accuracy and loss per epoch (x axis: whole epochs from 1), training against validation.

    Parameters
    ----------
    history : dict
        ``{"loss": [...], "accuracy": [...], "val_loss": [...], "val_accuracy": [...]}`` (Keras
        ``History.history``); the ``val_`` entries are optional.
    path : str or Path
        The PNG file to write.
    title : str

    Returns
    -------
    Path
        ``path``.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(epochs, history[metric], marker="o", label="training")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_xticks(epoch_ticks(len(epochs)))
        ax.set_xlim(0.5, len(epochs) + 0.5)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(plain_text(title), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


