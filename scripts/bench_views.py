#!/usr/bin/env python
"""Do cached augmented views or the mirrored view help the cheap route?  ``fit-head --tta none|flip|views``.

Runs featx's own ``fit_head`` (the stored split, refit on train+val, one test evaluation) with each
test-time-augmentation mode, interleaved per split seed so the three arms share every split and the
same machine state, and prints each run's test accuracy with its 95 % Wilson interval, then per mode
the mean over seeds and the paired difference to ``--tta none``.  ``views`` trains on K augmented
views of each image (Keras 1.2.2's ``ImageDataGenerator`` transform with the study's settings,
``featx.augment.STUDY``) and averages the image and its views at test; ``flip`` trains on and averages
the image and its mirror.  A small test set moves by several points per image, hence several seeds.
Prints figures, asserts nothing.

    python scripts/bench_views.py [--data ../shared/datasets/birds10] [--views 4] [--seeds 3]
                                  [--heads logistic,linear_svm] [--modes none,flip,views] [--cache DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featx.training import fit_head  # noqa: E402
from featx.stats import format_accuracy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "birds10"))
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3, help="split seeds 0..N-1 (default 3)")
    ap.add_argument("--heads", default="logistic,linear_svm")
    ap.add_argument("--modes", default="none,flip,views", help="comma-separated --tta modes (default all three)")
    ap.add_argument("--cache", default=None, help="reuse a cache folder (default: a temporary one)")
    args = ap.parse_args()
    cache = Path(args.cache or tempfile.mkdtemp(prefix="featx-views-"))
    out = Path(tempfile.mkdtemp(prefix="featx-views-out-"))
    modes = args.modes.split(",")
    print(f"data {args.data}, {args.backbone}, --tta {'|'.join(modes)} ({args.views} views), "
          f"{args.seeds} seeded splits, cache {cache}")
    for head in args.heads.split(","):
        acc = {m: [] for m in modes}
        for seed in range(args.seeds):
            for mode in modes:
                t0 = time.perf_counter()
                result = fit_head(args.data, args.backbone, head=head, cache_dir=cache, seed=seed, tta=mode,
                                  views=args.views if mode == "views" else 0, out_dir=out / f"{head}-{seed}-{mode}",
                                  progress=False)
                test = result.metrics["test"]
                acc[mode].append(test["accuracy"])
                print(f"  {head:<11} seed {seed} --tta {mode:<5}: test {format_accuracy(test['correct'], test['n'])}"
                      f"  ({time.perf_counter() - t0:.1f} s incl. any extraction)", flush=True)
        for mode in modes:
            line = f"{head}: --tta {mode:<5} mean test accuracy {statistics.mean(acc[mode]):.3f}"
            if mode != modes[0]:
                diff = [b - a for a, b in zip(acc[modes[0]], acc[mode])]
                line += (f"; paired difference to --tta {modes[0]} {statistics.mean(diff):+.3f} "
                         f"(median {statistics.median(diff):+.3f}, {sum(d > 0 for d in diff)} better / "
                         f"{sum(d < 0 for d in diff)} worse of {len(diff)})")
            print(line)


if __name__ == "__main__":
    main()
