"""What journalling every finished batch costs, against the old 256-row journal, in the same run.

Extracts the same images into fresh caches with ``flush_rows=1`` (every batch: a killed run loses
at most one batch) and ``flush_rows=256`` (the old default), interleaved, and prints medians and
their ratio.  The machine may be shared: read the ratio, not the seconds.

    python scripts/bench_journal.py [DATA] [--images 192] [--batch-size 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from featx.extract import extract
from featx.images import is_image_path

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10_3k"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default=str(DEFAULT))
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    files = sorted(p for p in Path(args.data).rglob("*") if p.is_file() and is_image_path(p))[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        for i, p in enumerate(files):
            shutil.copy(p, data / f"{i:05d}{p.suffix}")
        extract(data, cache_dir=Path(tmp) / "warm", engine="keras", batch_size=args.batch_size, progress=False)
        times = {1: [], 256: []}
        for r in range(args.repeats):  # interleaved A/B, fresh caches (the model build is in both)
            for flush in (1, 256):
                cache = Path(tmp) / f"c{flush}-{r}"
                start = time.perf_counter()
                report = extract(data, cache_dir=cache, engine="keras", batch_size=args.batch_size,
                                 flush_rows=flush, progress=False)
                times[flush].append(time.perf_counter() - start)
                assert report.computed == len(files)
        every, old = statistics.median(times[1]), statistics.median(times[256])
        batches = -(-len(files) // args.batch_size)
        print(f"{len(files)} images, batch {args.batch_size} ({batches} journal parts vs "
              f"{-(-len(files) // 256)}); median of {args.repeats}")
        print(f"journal every batch: {every:.2f}s; every 256 rows (old): {old:.2f}s; ratio {every / old:.3f}")


if __name__ == "__main__":
    main()
