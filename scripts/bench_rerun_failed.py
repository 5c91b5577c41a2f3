"""What a re-run of an unchanged folder with two bad files costs, relative to the first run.

Before featx remembered decode failures, every re-run of such a folder loaded the network again to
retry the bad files (about a quarter of a first run on a small folder); now a re-run costs the
file hashing.  The baseline in the same run is ``--retry-failed``, which is what every re-run used
to do.  Repeats are interleaved and medians printed (the machine may be shared).

    python scripts/bench_rerun_failed.py [DATA] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from featx.extract import extract

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "leaves3"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backbone", default="mobilenet_v2")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(args.data, data)
        first_class = sorted(p for p in data.iterdir() if p.is_dir())[0]
        (first_class / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (first_class / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
        cache = Path(tmp) / "cache"
        start = time.perf_counter()
        first = extract(data, backbone=args.backbone, cache_dir=cache, engine="keras")
        first_s = time.perf_counter() - start
        print(f"first run: {first.computed} extracted, {len(first.failures)} skipped in {first_s:.2f}s")
        remembered, retried = [], []
        for _ in range(args.repeats):  # interleaved A/B
            for retry, out in ((False, remembered), (True, retried)):
                start = time.perf_counter()
                report = extract(data, backbone=args.backbone, cache_dir=cache, engine="keras", retry_failed=retry)
                out.append(time.perf_counter() - start)
                assert report.computed == 0 and len(report.failures) == 2
        r, b = statistics.median(remembered), statistics.median(retried)
        print(f"re-run, failures remembered: {r:.2f}s = {r / first_s:.1%} of the first run")
        print(f"re-run, --retry-failed (every re-run before): {b:.2f}s = {b / first_s:.1%} of the first run")
        print(f"ratio remembered / retried: {r / b:.3f} ({b / r:.1f}x faster); median of {args.repeats}")


if __name__ == "__main__":
    main()
