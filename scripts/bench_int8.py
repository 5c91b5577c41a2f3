#!/usr/bin/env python
"""Do heads lose accuracy on int8 codes?  Heads on int8 codes against heads on float32 codes, same splits.

For each backbone and dataset: extract float32 and int8 codes (``precision="int8"``, calibrated by featx's
rule: the 100 training images with the smallest content keys), then for each split seed (a stratified
70/30 split of every image, the same rows for both precisions) and head (logistic, linear SVM: featx's
own heads, C chosen by cross-validation on the training part), fit on each precision's codes and score
the held-out part.  Prints each accuracy with its 95% Wilson interval (:func:`featx.stats.wilson_interval`),
the paired difference (int8 - float32, in points) per run and its mean per set, and how close the int8
codes are to float32's (cosine per image).  The issue's goal: mean difference within 0.5 points per set.

Results are appended to ``--json`` as they come, so a time-boxed run keeps what it finished.

    python scripts/bench_int8.py [--backbones mobilenet_v2,efficientnet_lite0]
        [--sets ants_bees,cifar10_3k,flowers5] [--seeds 0,1,2] [--cache DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featx.config import ExtractorConfig  # noqa: E402
from featx.engines.litert import INT8_MIN_COSINE as PARITY_BOUND, converted_path  # noqa: E402
from featx.extract import load_features  # noqa: E402
from featx.heads import make_head  # noqa: E402
from featx.stats import wilson_interval  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
GOAL_POINTS = 0.5


def aligned(float_feats, int8_feats):
    """Rows both precisions have, in the float32 run's order: (X float32, X int8, labels)."""
    index = {str(p): i for i, p in enumerate(int8_feats.paths)}
    rows = [(i, index[str(p)]) for i, p in enumerate(float_feats.paths) if str(p) in index]
    a = np.asarray([r[0] for r in rows])
    b = np.asarray([r[1] for r in rows])
    return float_feats.X[a], int8_feats.X[b], np.asarray(float_feats.labels)[a]


def i8_config(features) -> ExtractorConfig:
    """The int8 extractor of ``features`` (its cache key holds the calibration chosen)."""
    key = features.config
    return ExtractorConfig(key["backbone"], precision="int8", calibration=key["calibration"])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def score(head: str, X: np.ndarray, y: np.ndarray, train, test) -> tuple[int, int]:
    """(correct, n) of a featx head fitted on ``train`` rows, scored on ``test`` rows."""
    model = make_head(head).fit(X[train], y[train])
    return int((model.predict(X[test]) == y[test]).sum()), len(test)


def one_set(backbone: str, name: str, seeds, heads, cache: Path, out: list, json_path: Path) -> None:
    from sklearn.model_selection import train_test_split

    data = DATASETS / name
    t0 = time.perf_counter()
    f32 = load_features(data, ExtractorConfig(backbone), cache_dir=cache, split=False, progress=False)
    t1 = time.perf_counter()
    i8 = load_features(data, ExtractorConfig(backbone, precision="int8"), cache_dir=cache, split=False,
                       progress=False)
    t2 = time.perf_counter()
    Xf, Xq, y = aligned(f32, i8)
    cos = cosines(Xf, Xq)
    record = json.loads(converted_path(cache, i8_config(i8)).with_suffix(".json").read_text())
    probe = min(record["min_cosine"].values())
    print(f"  parity probe (4 held-out images): min cosine {probe:.3f}; featx's bound {PARITY_BOUND} "
          f"{'passes' if probe >= PARITY_BOUND else 'REFUSES this model'}", flush=True)
    print(f"\n{backbone} / {name}: {len(y)} images, {len(set(y.tolist()))} classes; codes float32 {t1 - t0:.0f} s, "
          f"int8 {t2 - t1:.0f} s (conversions included); int8 vs float32 cosine per image: min {cos.min():.3f}, "
          f"5th percentile {np.percentile(cos, 5):.3f}, mean {cos.mean():.3f}", flush=True)
    for seed in seeds:
        train, test = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=seed)
        for head in heads:
            cf, n = score(head, Xf, y, train, test)
            cq, _ = score(head, Xq, y, train, test)
            row = {"backbone": backbone, "set": name, "seed": seed, "head": head, "n_test": n,
                   "float32": cf / n, "int8": cq / n, "float32_ci": wilson_interval(cf, n),
                   "int8_ci": wilson_interval(cq, n), "diff_points": 100 * (cq - cf) / n,
                   "cos_min": float(cos.min()), "cos_mean": float(cos.mean()), "probe_min_cos": probe}
            out.append(row)
            json_path.write_text(json.dumps(out, indent=1))
            print(f"  seed {seed} {head:10s}: float32 {cf / n:.4f} [{row['float32_ci'][0]:.3f}, "
                  f"{row['float32_ci'][1]:.3f}]  int8 {cq / n:.4f} [{row['int8_ci'][0]:.3f}, {row['int8_ci'][1]:.3f}]"
                  f"  int8 - float32 {row['diff_points']:+.2f} points (n={n})", flush=True)


def summary(rows: list) -> None:
    print("\n| backbone | set | runs (heads x seeds) | float32 mean acc | int8 mean acc | mean int8 - float32 (points) "
          "| min, max (points) | goal: within 0.5 |")
    print("|---|---|---|---|---|---|---|---|")
    groups = {}
    for r in rows:
        groups.setdefault((r["backbone"], r["set"]), []).append(r)
    for (backbone, name), rs in groups.items():
        d = [r["diff_points"] for r in rs]
        mean = statistics.mean(d)
        print(f"| {backbone} | {name} | {len(rs)} | {statistics.mean(r['float32'] for r in rs):.4f} | "
              f"{statistics.mean(r['int8'] for r in rs):.4f} | {mean:+.2f} | {min(d):+.2f}, {max(d):+.2f} | "
              f"{'yes' if abs(mean) <= GOAL_POINTS else 'NO'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--sets", default="ants_bees,cifar10_3k,flowers5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--heads", default="logistic,linear_svm")
    ap.add_argument("--cache", default="/tmp/featx-bench-int8-cache", help="kept between runs: codes are reused")
    ap.add_argument("--json", default="/tmp/featx-bench-int8.json")
    args = ap.parse_args()
    import featx.config

    import featx.engines.litert

    featx.config.INT8_REFUSED.clear()  # a measurement: also of a backbone int8 is refused for
    featx.engines.litert.INT8_MIN_COSINE = -1.0  # ... and of a model the parity bound refuses (printed below)
    seeds = [int(s) for s in args.seeds.split(",")]
    heads = args.heads.split(",")
    rows: list = []
    json_path = Path(args.json)
    for backbone in args.backbones.split(","):
        for name in args.sets.split(","):
            one_set(backbone, name, seeds, heads, Path(args.cache), rows, json_path)
            summary(rows)
    print(f"\nresults: {json_path}")


if __name__ == "__main__":
    main()
