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


def plot_curves(history: dict, path, title: str) -> Path:
    """Accuracy and loss per epoch, training against validation."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(epochs, history[metric], marker="o", label="training")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ---- the study's summary table ---------------------------------------------------------------

ROUTE_ORDER = {"cached": 0, "finetune": 1, "baseline": 2}


def summary_table(runs):
    """Rows per dataset (and split), columns per backbone x route; each cell the run with the best
    validation accuracy (model selection never looks at test), showing its test accuracy and time.

    Runs of one dataset on different splits get separate rows, labelled with the split id, so they
    are never compared side by side silently.
    """
    import pandas as pd

    runs = runs.copy()
    runs["seconds"] = runs["extract_s"].fillna(0) + runs["fit_s"].fillna(0)
    splits_per_dataset = runs.groupby("dataset")["split_id"].nunique()
    runs["row"] = [d if splits_per_dataset[d] == 1 else f"{d} [split {s}]" for d, s in zip(runs["dataset"], runs["split_id"])]
    runs["column"] = [f"{b} {r}" for b, r in zip(runs["backbone"], runs["route"])]
    runs["_order"] = runs["route"].map(ROUTE_ORDER).fillna(9)
    runs["_val"] = runs["val_acc"].fillna(-1)
    best = (runs.reset_index().sort_values(["_val", "index"]).groupby(["row", "column"]).tail(1))
    columns = (best.sort_values(["_order", "backbone"])["column"].drop_duplicates().tolist())
    acc = best.pivot(index="row", columns="column", values="test_acc").reindex(columns=columns)
    secs = best.pivot(index="row", columns="column", values="seconds").reindex(columns=columns)
    heads = best.pivot(index="row", columns="column", values="head").reindex(columns=columns)
    split_ids = best.groupby("row")["split_id"].first()
    return acc, secs, heads, split_ids, pd


def write_report(runs_csv, out_dir) -> dict:
    import pandas as pd

    runs_csv, out_dir = Path(runs_csv), Path(out_dir)
    if not runs_csv.exists():
        raise FileNotFoundError(runs_csv)
    runs = pd.read_csv(runs_csv)
    if runs.empty:
        raise ValueError(f"{runs_csv} has no runs")
    acc, secs, heads, split_ids, _ = summary_table(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = acc.copy().astype(object)
    for r in acc.index:
        for c in acc.columns:
            a, s, h = acc.loc[r, c], secs.loc[r, c], heads.loc[r, c]
            cells.loc[r, c] = "" if pd.isna(a) else f"{a:.3f} ({_duration(s)}, {h})"
    cells.insert(0, "split", [split_ids[r] for r in cells.index])
    cells.index.name = "dataset"
    lines = ["| " + " | ".join(["dataset", *cells.columns]) + " |", "|" + "---|" * (len(cells.columns) + 1)]
    for r, row in cells.iterrows():
        lines.append("| " + " | ".join([str(r), *map(str, row.tolist())]) + " |")
    note = ("Cells: test accuracy (training time incl. any extraction done by that run, head). "
            "Each cell is the run with the best validation accuracy.")
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n\n" + note + "\n")
    table = pd.concat({"test_acc": acc, "seconds": secs, "head": heads}, axis=1)
    table.to_csv(out_dir / "summary.csv")
    chart = _plot_summary(acc, out_dir / "summary.png")
    curves = []
    for _, run in runs.iterrows():
        history = Path(str(run["output"])).parent / "history.csv" if isinstance(run["output"], str) else None
        if history is not None and history.exists() and history.stat().st_size:
            frame = pd.read_csv(history)
            if len(frame):
                name = f"curves-{run['dataset']}-{run['backbone']}-{run['route']}.png"
                plot_curves({c: frame[c].tolist() for c in frame.columns if c != "epoch"}, out_dir / name,
                            f"{run['dataset']}: {run['backbone']} {run['route']}")
                curves.append(out_dir / name)
    return {"markdown": out_dir / "summary.md", "csv": out_dir / "summary.csv", "chart": chart,
            "curves": sorted(set(curves)), "table": cells}


def _duration(seconds) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _plot_summary(acc, path) -> Path:
    plt = _pyplot()
    rows, cols = list(acc.index), list(acc.columns)
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows) * max(1, len(cols)) + 4), 4))
    width = 0.8 / max(1, len(cols))
    x = np.arange(len(rows))
    for j, c in enumerate(cols):
        values = acc[c].astype(float).to_numpy()
        bars = ax.bar(x + j * width - 0.4 + width / 2, np.nan_to_num(values), width, label=c)
        ax.bar_label(bars, labels=["" if v != v else f"{v:.2f}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(x, rows)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.1)
    ax.set_title("test accuracy by dataset, backbone and route")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
