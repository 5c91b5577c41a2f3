#!/usr/bin/env python
"""Do cached augmented views help the cheap route?  Test accuracy with and without them.

A dataset with a few images per class gives a test split of a handful of images, where one
image moves accuracy by several points; so this repeats the comparison over several seeded
splits and prints each, the mean and the paired difference.  Prints figures, asserts nothing.

    python scripts/bench_views.py [--data ../shared/datasets/birds10] [--views 4] [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featx.fit import labelled_codes  # noqa: E402
from featx.heads import make_head  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "birds10"))
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--heads", default="logistic,linear_svm")
    ap.add_argument("--cache", default=None, help="reuse a cache folder (default: a temporary one)")
    args = ap.parse_args()
    cache = args.cache or tempfile.mkdtemp(prefix="featx-views-")
    print(f"data {args.data}, {args.backbone}, {args.views} views, {args.seeds} seeded splits")
    for head in args.heads.split(","):
        plain, viewed = [], []
        for seed in range(args.seeds):
            codes = labelled_codes(args.data, args.backbone, cache_dir=cache, seed=seed, views=args.views,
                                   progress=False)
            Xte, yte = codes.part("test")
            for with_views, out in ((False, plain), (True, viewed)):
                Xtr, ytr = codes.part("train", with_views=with_views)
                out.append(make_head(head, random_state=seed).fit(Xtr, ytr).score(Xte, yte))
            print(f"  {head:<11} seed {seed}: test {plain[-1]:.3f} without views, {viewed[-1]:.3f} with "
                  f"({len(yte)} test images)")
        diff = [v - p for p, v in zip(plain, viewed)]
        print(f"{head}: mean test accuracy {statistics.mean(plain):.3f} without, {statistics.mean(viewed):.3f} "
              f"with {args.views} views; paired difference {statistics.mean(diff):+.3f} "
              f"(median {statistics.median(diff):+.3f}, {sum(d > 0 for d in diff)} better / "
              f"{sum(d < 0 for d in diff)} worse of {len(diff)})")


if __name__ == "__main__":
    main()
