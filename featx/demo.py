"""The main job on data that ships inside scikit-learn: its handwritten digits.

Writes a sample of the 8x8 digit images as PNG files in class folders (and a
few more as "unseen" images), then runs what a user runs: extract, fit-head,
predict.  Offline, a few minutes on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featx.backbones.registry import DEFAULT_BACKBONE
from featx.extract import extract
from featx.prediction import predict
from featx.stats import format_accuracy
from featx.training import fit_head


def write_digits(folder: Path, per_class: int = 40, unseen: int = 20, seed: int = 0) -> tuple[Path, Path]:
    """PNG files under ``folder/digits/<digit>/`` and ``folder/unseen/``."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    data, new = folder / "digits", folder / "unseen"
    taken = {d: 0 for d in range(10)}
    n_unseen = 0
    for i in order:
        d = int(digits.target[i])
        big = cv2.resize(255 - images[i], (32, 32), interpolation=cv2.INTER_NEAREST)  # dark ink on white
        if taken[d] < per_class:
            target = data / str(d) / f"digit{i:04d}.png"
            taken[d] += 1
        elif n_unseen < unseen:
            target = new / f"digit{i:04d}_is_{d}.png"
            n_unseen += 1
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            cv2.imwrite(str(target), big)
    return data, new


def run_demo(out_dir="featx-out/demo", backbone: str = DEFAULT_BACKBONE, cache_dir=None, per_class: int = 40,
             head: str = "logistic", weights="imagenet", echo=print) -> dict:
    out_dir = Path(out_dir)
    data, unseen = write_digits(out_dir / "data", per_class=per_class)
    echo(f"data: {data} (scikit-learn digits, {per_class} per class) and {unseen} (unseen)")
    echo(f"$ featx extract {data} --backbone {backbone}")
    report = extract(data, backbone=backbone, cache_dir=cache_dir, weights=weights)
    echo(report.summary())
    echo(f"$ featx fit-head {data} --backbone {backbone} --head {head} --out {out_dir / f'digits-{backbone}-{head}'}")
    result = fit_head(data, backbone=backbone, head=head, cache_dir=cache_dir, weights=weights,
                      out_dir=out_dir / f"digits-{backbone}-{head}")
    echo(result.report)
    csv = out_dir / "predictions.csv"
    echo(f"$ featx predict {result.bundle} {unseen} --top 3 --out {csv}")
    table = predict(result.bundle, [unseen], out=csv, top=3, cache_dir=cache_dir, weights=weights)
    truth = table["id"].str.rsplit("_is_", n=1).str[1]
    right = int((truth == table["predicted"].astype(str)).sum())
    echo(f"unseen images: {right}/{len(table)} predicted correctly, {format_accuracy(right, len(table))}")
    echo("outputs:")
    for label, path in (("bundle", result.bundle), ("metrics", result.out_dir / "metrics.json"),
                        ("confusion matrix", result.out_dir / "confusion.png"), ("predictions", csv)):
        echo(f"  {label:<17} {path}")
    return {"fit": result, "predictions": table, "unseen_correct": right}
