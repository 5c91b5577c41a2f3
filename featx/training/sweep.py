"""``sweep``: a linear head on every tap of one backbone, same split -- accuracy by depth.

Why: which layer's codes transfer best depends on how far the data is from ImageNet (CS231n's four cases);
one extraction pass gives every tap, and a logistic head per tap costs seconds.
"""

from __future__ import annotations

import time

import numpy as np

from featx.cells import write_csv
from featx.atomic import whole
from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone
from featx.datasets import SplitSpec
from featx.selection import make_head  # every --head choice, auto included
from featx.outputs import RunOutputs
from featx.runs import plot_sweep
from featx.stats import accuracy_summary, small_test_warning
from featx.training.codes import labelled_codes
from featx.vocabulary import SPLITS


def held_out(model, X, y, split: str) -> dict:
    """``<split>_acc``, ``<split>_low``, ``<split>_high``: the accuracy and its 95% Wilson interval
    (:func:`featx.stats.accuracy_summary`, as fit-head gives it); None when the split is empty."""
    s = accuracy_summary(y, model.predict(X), kind=split) if len(y) else None
    low, high = s["interval95"] if s else (None, None)
    return {f"{split}_acc": s["accuracy"] if s else None, f"{split}_low": low, f"{split}_high": high}


def sweep_rows(codes, spec, taps, head: str, seed: int) -> list[dict]:
    """One row per tap: stride, code width, validation and test accuracy with their intervals, fit seconds."""
    rows = []
    for tap in taps:
        model = make_head(head, random_state=seed)
        (Xtr, ytr), (Xv, yv), (Xte, yte) = (codes.part(s, [tap]) for s in SPLITS)
        start = time.perf_counter()
        model.fit(Xtr, ytr, validation_data=(Xv, yv) if len(yv) else None)
        seconds = time.perf_counter() - start
        rows.append({"tap": tap, "stride": spec.tap(tap).stride, "dim": Xtr.shape[1],
                     **held_out(model, Xv, yv, "val"), **held_out(model, Xte, yte, "test"), "fit_s": seconds})
    return rows


def sweep_text(table) -> str:
    """The console table: each accuracy with its 95% interval and n (as fit-head prints them), then the
    small-sample warning when the test split is too small to rank taps by."""
    a = table.attrs
    shown = table[["tap", "stride", "dim"]].copy()
    for split in ("val", "test"):
        n = a[f"n_{split}"]
        shown[f"{split} [95% interval] (n={n})"] = [
            "-" if acc != acc or acc is None else f"{acc:.3f} [{lo:.3f}, {hi:.3f}]"
            for acc, lo, hi in zip(table[f"{split}_acc"], table[f"{split}_low"], table[f"{split}_high"])]
    shown["fit_s"] = table["fit_s"].map(lambda v: f"{v:.3f}")
    lines = [shown.to_string(index=False)]
    if a.get("warning"):
        lines.append(a["warning"].replace("should not rank models", "should not rank taps"))
    return "\n".join(lines)


def sweep(data, backbone=DEFAULT_BACKBONE, taps=None, head="logistic", *, pooling="avg", dtype="float32",
          weights="imagenet", cache_dir=None, out_dir=None, split=None, **options):
    """A ``head`` on every tap (one extraction pass), same split: accuracy by depth.

    Parameters
    ----------
    data : str, Path or Dataset
        A labelled dataset.
    taps : list of str, optional
        Default: every tap of ``backbone``.
    split : SplitSpec, optional
        Or ``val_fraction``/``test_fraction``/``seed`` as keywords; other keywords are extraction options.

    Returns
    -------
    pandas.DataFrame
        Columns ``tap``, ``stride``, ``dim``, ``val_acc``, ``val_low``, ``val_high``, ``test_acc``,
        ``test_low``, ``test_high`` (accuracies with their 95% Wilson intervals), ``fit_s``; also written to
        ``sweep.csv`` and plotted in ``sweep.png``; ``attrs`` holds ``out_dir``, ``split_id``, ``dataset``,
        ``n_val``, ``n_test`` and ``warning`` (the small-test warning, or None).
    """
    import pandas as pd

    spec = get_backbone(backbone)
    taps = list(taps or spec.tap_names)
    split = SplitSpec.resolve(split, options)
    codes = labelled_codes(data, backbone, taps, pooling, dtype, weights, cache_dir, split=split, **options)
    table = pd.DataFrame(sweep_rows(codes, spec, taps, head, split.seed))
    folder = RunOutputs(codes.name, "cached", f"{backbone}-sweep", out_dir).prepare()
    with whole(folder / "sweep.csv") as tmp:  # each output whole or absent (featx.atomic), cells spreadsheet-safe
        write_csv(table, tmp, index=False, float_format="%.4f")
    with whole(folder / "sweep.png") as tmp:
        plot_sweep(table, tmp, f"{codes.name}: {head} head on each tap of {backbone}")
    n_test = int((codes.split == "test").sum())
    smallest = int(np.unique(codes.y[codes.split == "test"], return_counts=True)[1].min()) if n_test else 0
    table.attrs.update(out_dir=folder, split_id=codes.split_id, dataset=codes.name,
                       n_val=int((codes.split == "val").sum()), n_test=n_test,
                       warning=small_test_warning(n_test, smallest) if n_test else None)
    return table
