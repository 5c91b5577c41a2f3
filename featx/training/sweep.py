"""``sweep``: a linear head on every tap of one backbone, same split -- accuracy by depth.

Why: which layer's codes transfer best depends on how far the data is from ImageNet (CS231n's four cases);
one extraction pass gives every tap, and a logistic head per tap costs seconds.
"""

from __future__ import annotations

import time

from featx.atomic import whole
from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone
from featx.datasets import SplitSpec
from featx.selection import make_head  # every --head choice, auto included
from featx.outputs import RunOutputs
from featx.runs import plot_sweep
from featx.training.codes import accuracy_of, labelled_codes
from featx.vocabulary import SPLITS


def sweep_rows(codes, spec, taps, head: str, seed: int) -> list[dict]:
    """One row per tap: stride, code width, validation and test accuracy, fit seconds."""
    rows = []
    for tap in taps:
        model = make_head(head, random_state=seed)
        (Xtr, ytr), (Xv, yv), (Xte, yte) = (codes.part(s, [tap]) for s in SPLITS)
        start = time.perf_counter()
        model.fit(Xtr, ytr, validation_data=(Xv, yv) if len(yv) else None)
        rows.append({"tap": tap, "stride": spec.tap(tap).stride, "dim": Xtr.shape[1],
                     "val_acc": accuracy_of(model, Xv, yv), "test_acc": accuracy_of(model, Xte, yte),
                     "fit_s": time.perf_counter() - start})
    return rows


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
        Columns ``tap``, ``stride``, ``dim``, ``val_acc``, ``test_acc``, ``fit_s``; also written to
        ``sweep.csv`` and plotted in ``sweep.png``; ``attrs`` holds ``out_dir``, ``split_id``, ``dataset``.
    """
    import pandas as pd

    spec = get_backbone(backbone)
    taps = list(taps or spec.tap_names)
    split = SplitSpec.resolve(split, options)
    codes = labelled_codes(data, backbone, taps, pooling, dtype, weights, cache_dir, split=split, **options)
    table = pd.DataFrame(sweep_rows(codes, spec, taps, head, split.seed))
    folder = RunOutputs(codes.name, "cached", f"{backbone}-sweep", out_dir).prepare()
    with whole(folder / "sweep.csv") as tmp:  # each output whole or absent (featx.atomic)
        table.to_csv(tmp, index=False, float_format="%.4f")
    with whole(folder / "sweep.png") as tmp:
        plot_sweep(table, tmp, f"{codes.name}: {head} head on each tap of {backbone}")
    table.attrs.update(out_dir=folder, split_id=codes.split_id, dataset=codes.name)
    return table
