"""Benchmark: two backbones + flip TTA (``--head auto``) against single-backbone heads, over several splits.

One split's test set moves a head by a point or more by chance (n=862: the 95% interval is about
±2.8 points), and "the best single head" picked by *test* accuracy is biased upwards.  So for each
split seed this prints:

* every single head (logistic, linear_svm, rbf_svm, knn) on each backbone's ``pre_logits``, chosen on
  train, refit on train+val, scored once on test (as ``fit-head`` does);
* the single head a user could have picked without the test set: best *validation* accuracy;
* ``fit_head(..., backbone="a,b", head="auto", tta="flip")`` on the same split;

then the mean and sd over seeds of fused − best single head (by test, and by validation).

    PYTHONPATH=. python scripts/bench_fusion.py --cache C --split-seeds 3 ../shared/datasets/flowers5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HEADS = ("logistic", "linear_svm", "rbf_svm", "knn")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--backbones", default="mobilenet_v2,efficientnet_lite2")
    ap.add_argument("--split-seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=120.0)
    args = ap.parse_args()

    from featx.training import fit_head, labelled_codes
    from featx.heads import Head
    from featx.stats import format_accuracy

    backbones = args.backbones.split(",")
    name = Path(args.data).name
    gaps_test, gaps_val = [], []
    for seed in range(args.split_seeds):
        singles = []  # (label, val acc, test acc)
        for b in backbones:
            c = labelled_codes(args.data, b, ["pre_logits"], cache_dir=args.cache, seed=seed, progress=False)
            X, y, split = c.features.codes["pre_logits"], c.y, c.split
            train, val, test = split == "train", split == "val", split == "test"
            for kind in HEADS:
                h = Head(kind).fit(X[train], y[train])
                val_acc = h.score(X[val], y[val])
                test_acc = h.frozen().fit(X[train | val], y[train | val]).score(X[test], y[test])
                singles.append((f"{b} {kind}", val_acc, test_acc))
                print(f"{name} seed {seed}  {b + ' ' + kind:32s} val {val_acc:.3f}  test {test_acc:.3f}", flush=True)
        n_test = int(test.sum())
        t0 = time.perf_counter()
        res = fit_head(args.data, ",".join(backbones), ["pre_logits"], head="auto", tta="flip", seed=seed,
                       cache_dir=args.cache, out_dir=f"featx-out/bench/{name}-fusion-seed{seed}", budget=args.budget,
                       progress=False)
        fused = res.metrics["accuracy"]["test"]
        by_test = max(singles, key=lambda s: s[2])
        by_val = max(singles, key=lambda s: s[1])
        gaps_test.append(fused - by_test[2])
        gaps_val.append(fused - by_val[2])
        print(f"{name} seed {seed}  fused auto+flip {format_accuracy(round(fused * n_test), n_test)} "
              f"({time.perf_counter() - t0:.0f} s; {res.metrics['chosen']['candidate']})")
        print(f"{name} seed {seed}  best single by test: {by_test[0]} {by_test[2]:.3f} (fused {gaps_test[-1]:+.3f}); "
              f"by val: {by_val[0]} {by_val[2]:.3f} (fused {gaps_val[-1]:+.3f})", flush=True)
    print(f"\n{name}: fused − best single head, over {args.split_seeds} split seeds (points): "
          f"by test {100 * np.mean(gaps_test):+.1f} ± {100 * np.std(gaps_test):.1f} "
          f"(per seed {', '.join(f'{100 * g:+.1f}' for g in gaps_test)}); "
          f"by validation {100 * np.mean(gaps_val):+.1f} ± {100 * np.std(gaps_val):.1f} "
          f"(per seed {', '.join(f'{100 * g:+.1f}' for g in gaps_val)})")


if __name__ == "__main__":
    main()
