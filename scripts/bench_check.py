"""How well ``featx check`` finds planted near-duplicates and flipped labels, and how long it takes.

Usage (the shared photos; codes cached in --cache, extracted on first use)::

    python scripts/bench_check.py --cache /tmp/check/cache --work /tmp/check/bench

Prints, for ``ants_bees`` and ``flowers5`` (or --datasets):

- near-duplicates: copies planted beside ``--per-transform`` seeded originals per transform (resized to half,
  JPEG quality 60, centre crop 90%, brightness +10%, mirrored); the cosine similarity of each planted pair
  (quantiles per transform) and of each original's nearest other original; then, per threshold, the recall of
  the planted pairs (both in one group) and the fraction of flagged pairs that are planted (both ends from one
  original). Flagged pairs between byte-identical originals already in the set are counted separately.
- label errors: 5% of the labels flipped to another class (seeded, ``--seeds`` seeds), confident learning's
  ranking (:func:`featx.quality.label_issues`): fraction of planted flips among the top-F and top-2F suspects.
- time: ``featx check`` on flowers5 with its codes cached, as a whole process (wall seconds, peak RSS).

Goals (issue 25): recall >= 0.95 with >= 0.9 of flagged pairs planted; >= half of the top-F are flips; <= 60 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featx.datasets import discover  # noqa: E402
from featx.extract import load_features  # noqa: E402
from featx.images import load_image  # noqa: E402
from featx.quality import NEAR_DUPLICATE_THRESHOLD, label_issues, near_duplicates, normalized  # noqa: E402

SHARED = Path("/work/shared/datasets")
TRANSFORMS = ("half", "jpeg60", "crop90", "bright10", "mirror")
THRESHOLDS = (0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.96)


def planted(img: np.ndarray, kind: str) -> tuple[np.ndarray, int]:
    """The planted copy of ``img`` (RGB uint8) and the JPEG quality it is saved with."""
    h, w = img.shape[:2]
    if kind == "half":
        return cv2.resize(img, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA), 95
    if kind == "jpeg60":
        return img, 60
    if kind == "crop90":
        dh, dw = int(round(h * 0.05)), int(round(w * 0.05))
        return img[dh:h - dh, dw:w - dw], 95
    if kind == "bright10":
        return np.clip(img.astype(np.float32) * 1.10, 0, 255).astype(np.uint8), 95
    if kind == "mirror":
        return img[:, ::-1], 95
    raise ValueError(kind)


def build_planted(name: str, work: Path, per_transform: int, seed: int):
    """A copy of the dataset with planted near-duplicates; returns (folder, {copy path: original path})."""
    src = SHARED / name
    dst = work / f"{name}-planted"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    originals = sorted(p for p in discover(dst).paths)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(originals), size=per_transform * len(TRANSFORMS), replace=False)
    planted_of = {}
    for t_i, kind in enumerate(TRANSFORMS):
        for idx in chosen[t_i * per_transform:(t_i + 1) * per_transform]:
            orig = Path(originals[idx])
            copy, quality = planted(load_image(orig), kind)
            out = orig.with_name(f"{orig.stem}__planted_{kind}.jpg")
            cv2.imwrite(str(out), np.ascontiguousarray(copy[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
            planted_of[str(out)] = (str(orig), kind)
    return dst, planted_of


def duplicates_bench(name: str, work: Path, cache: Path, per_transform: int, seed: int) -> dict:
    folder, planted_of = build_planted(name, work, per_transform, seed)
    feats = load_features(folder, "mobilenet_v2", cache_dir=cache, split=False, progress=False)
    paths = [str(p) for p in feats.paths]
    row = {p: i for i, p in enumerate(paths)}
    X = normalized(feats.X)
    source = np.array([planted_of.get(p, (p, None))[0] for p in paths])  # each row's original
    kinds = {p: k for p, (_, k) in planted_of.items()}
    pairs = [(row[o], row[c], kinds[c]) for c, (o, _) in planted_of.items() if c in row and o in row]
    sims = {k: np.array([float(X[a] @ X[b]) for a, b, kk in pairs if kk == k]) for k in TRANSFORMS}
    print(f"\n== {name}: {len(paths)} images, {len(pairs)} planted pairs "
          f"({per_transform} per transform), mobilenet_v2/pre_logits")
    print("planted-pair cosine similarity: transform  min  p05  median")
    for k, s in sims.items():
        print(f"  {k:9s} {s.min():.3f} {np.percentile(s, 5):.3f} {np.median(s):.3f}")
    orig_rows = np.array([i for i, p in enumerate(paths) if p not in planted_of])
    keys = np.array(feats.keys)
    S = X[orig_rows] @ X[orig_rows].T
    np.fill_diagonal(S, -1)
    same_bytes = keys[orig_rows][:, None] == keys[orig_rows][None, :]
    S[same_bytes] = -1  # byte-identical originals are duplicates, not distinct photos
    nearest = S.max(axis=1)
    print(f"nearest other original: p50 {np.median(nearest):.3f} p99 {np.percentile(nearest, 99):.3f} "
          f"p99.9 {np.percentile(nearest, 99.9):.3f} max {nearest.max():.3f}")
    print("threshold  recall  flagged  planted-share  touching-copy-share  (byte-identical originals, other)")
    results = {}
    for t in THRESHOLDS:
        dup = near_duplicates(X, t)
        found = sum(1 for a, b, _ in pairs if dup.group_of[a] >= 0 and dup.group_of[a] == dup.group_of[b])
        recall = found / len(pairs)
        flagged = len(dup.pairs)
        is_planted = sum(1 for a, b in dup.pairs if source[a] == source[b] and (paths[a] in planted_of
                                                                                or paths[b] in planted_of))
        identical = sum(1 for a, b in dup.pairs if keys[a] == keys[b])
        other = flagged - is_planted - identical
        share = is_planted / max(1, flagged - identical)
        touching = sum(1 for a, b in dup.pairs if paths[a] in planted_of or paths[b] in planted_of)
        touch_share = is_planted / max(1, touching)
        results[t] = (recall, share)
        mark = "  <- default" if abs(t - NEAR_DUPLICATE_THRESHOLD) < 1e-9 else ""
        print(f"  {t:.2f}     {recall:.3f}   {flagged:5d}   {share:.3f}         {touch_share:.3f}"
              f"               ({identical}, {other}){mark}")
    return {"folder": folder, "X": X, "feats": feats, "results": results}


def flips_bench(name: str, cache: Path, seeds: list[int]) -> None:
    feats = load_features(SHARED / name, "mobilenet_v2", cache_dir=cache, split=False, progress=False)
    X = feats.X
    y0 = np.asarray(feats.labels)  # class names
    n_classes = len(feats.class_names)
    print(f"\n== label errors, {name}: {len(y0)} images, 5% flipped")
    tops, tops2 = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        F = int(round(0.05 * len(y0)))
        flip = rng.choice(len(y0), size=F, replace=False)
        y = y0.copy()
        for i in flip:
            others = [c for c in feats.class_names if c != y0[i]]
            y[i] = others[rng.integers(len(others))] if n_classes > 2 else others[0]
        start = time.perf_counter()
        issues = label_issues(X, y, seed=seed)
        seconds = time.perf_counter() - start
        flipped = set(flip.tolist())
        top = len(flipped & set(issues.ranked[:F].tolist())) / F
        top2 = len(flipped & set(issues.ranked[:2 * F].tolist())) / F
        tops.append(top)
        tops2.append(top2)
        print(f"  seed {seed}: F={F}  planted in top-F {top:.3f}  planted flips found in top-2F {top2:.3f}  "
              f"flagged {int(issues.flagged.sum())}  ({seconds:.1f}s)")
    print(f"  median over {len(seeds)} seeds: top-F {np.median(tops):.3f}, top-2F {np.median(tops2):.3f}")


def time_check(cache: Path, work: Path) -> None:
    out = work / "check-flowers5"
    cmd = [sys.executable, "-m", "featx.cli", "check", str(SHARED / "flowers5"), "--cache", str(cache),
           "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\n== time: featx check flowers5, codes cached, whole process: {wall:.1f} s wall, peak RSS {peak:.0f} MB, "
          f"exit {proc.returncode}; check.html {(out / 'check.html').stat().st_size / 1e6:.2f} MB"
          if proc.returncode == 0 else f"\nfeatx check failed ({proc.returncode}): {proc.stderr[-2000:]}")
    print("   " + "\n   ".join(proc.stdout.strip().splitlines()[:6]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/check/cache"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/check/bench"))
    ap.add_argument("--datasets", default="ants_bees,flowers5")
    ap.add_argument("--per-transform", type=int, default=30)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: duplicates, flips, time")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip.split(","))
    print(f"featx check bench: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    for name in args.datasets.split(","):
        if "duplicates" not in skip:
            duplicates_bench(name, args.work, args.cache, args.per_transform, seed=0)
        if "flips" not in skip:
            flips_bench(name, args.cache, [int(s) for s in args.seeds.split(",")])
    if "time" not in skip:
        time_check(args.cache, args.work)


if __name__ == "__main__":
    main()
