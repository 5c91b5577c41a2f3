#!/usr/bin/env python
"""Benchmark featx extract against the bare network and a naive per-image loop.

Prints figures; asserts nothing.  Uses ../shared/datasets/ants_bees when it
exists, else generated JPEGs of realistic size.  All in one process, same
machine, same batch size; medians over --repeats runs.

    python scripts/bench_extract.py [--data DIR] [--backbone mobilenet_v2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featx import _tf  # noqa: E402
from featx.backbones.registry import get_backbone  # noqa: E402
from featx.datasets import discover  # noqa: E402
from featx.extract import extract, load_features  # noqa: E402
from featx.images import load_image  # noqa: E402


def photo_folder(n: int, folder: Path, seed: int = 0) -> Path:
    """Realistic-size JPEGs (about 500x375, photo-like content) when no real data is present."""
    import cv2

    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
        img = cv2.add(img, rng.integers(0, 20, img.shape, dtype=np.uint8))
        cls = folder / f"class{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(cls / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def variants(paths, copies: int, folder: Path) -> Path:
    """Distinct images (flipped / re-encoded) so that content keys do not repeat."""
    import cv2

    for c in range(copies):
        for i, p in enumerate(paths):
            img = cv2.imread(str(p))
            if c % 2:
                img = cv2.flip(img, 1)
            img[0, 0] = (c, c, c)
            out = folder / f"class{i % 2}"
            out.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / f"{c}_{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92 - c])
    return folder


RSS_CHILD = """
import resource, sys, json
from featx.extract import extract
extract(sys.argv[1], backbone=sys.argv[2], cache_dir=sys.argv[3], batch_size=int(sys.argv[4]), progress=False,
        engine="keras")
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def peak_rss_mb(data, backbone, batch_size) -> float:
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(data), backbone, cache, str(batch_size)],
                             cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-images", type=int, default=48)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--engines", default="keras,litert", help="comma-separated engines to time")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="featx-bench-"))
    shared = ROOT.parent / "shared" / "datasets" / "ants_bees"
    data = Path(args.data) if args.data else (shared if shared.exists() else photo_folder(400, tmp / "photos"))
    paths = discover(data).paths
    n = len(paths)
    spec = get_backbone(args.backbone)
    print(f"data: {data} ({n} images), backbone {spec.name}, batch {args.batch_size}, repeats {args.repeats}")

    # -- ceiling: the bare network on pre-decoded tensors ---------------------------
    _tf.keras()
    t0 = time.perf_counter()
    model = spec.feature_model(["pre_logits"])
    build_s = time.perf_counter() - t0
    batch = spec.preprocess([load_image(p, spec.input_size) for p in paths[: args.batch_size]])
    model.predict_on_batch(batch)  # trace once
    ceiling = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        reps = max(1, n // args.batch_size)
        for _ in range(reps):
            model.predict_on_batch(batch)
        ceiling.append(reps * args.batch_size / (time.perf_counter() - t0))
    ceiling_ips = statistics.median(ceiling)
    print(f"ceiling (bare network, pre-decoded): {ceiling_ips:.1f} img/s  (model build {build_s:.1f}s)")
    if "litert" in args.engines.split(","):
        from featx.extract import extractor_config
        from featx.inference import make_engine

        lite = make_engine(spec, ["pre_logits"], lambda: model, extractor_config(spec.name), args.batch_size,
                           "litert", tmp / "bare", gpu=False)
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(max(1, n // args.batch_size)):
                lite.run(batch)
            rates.append(max(1, n // args.batch_size) * args.batch_size / (time.perf_counter() - t0))
        print(f"LiteRT bare network, pre-decoded: {statistics.median(rates):.1f} img/s, "
              f"{statistics.median(rates) / ceiling_ips:.2f}x the Keras ceiling")

    # -- featx end to end, per engine ---------------------------------------------------
    e2e = {}
    codes = {}
    for engine in args.engines.split(","):
        cache = tmp / f"cache-{spec.name}-{engine}"
        first = extract(data, backbone=spec.name, cache_dir=cache, batch_size=args.batch_size, progress=False,
                        engine=engine)
        runs, rerun_frac = [], []
        for r in range(args.repeats):
            for f in cache.glob("*.h5"):
                f.unlink()  # rows go, the converted model in cache/engines stays
            report = extract(data, backbone=spec.name, cache_dir=cache, batch_size=args.batch_size,
                             progress=False, engine=engine)
            runs.append(report)
            t0 = time.perf_counter()
            again = extract(data, backbone=spec.name, cache_dir=cache, batch_size=args.batch_size, progress=False,
                            engine=engine)
            assert again.computed == 0
            rerun_frac.append((time.perf_counter() - t0) / report.seconds)
        ips = statistics.median(r.images_per_second for r in runs)
        e2e[engine] = ips
        codes[engine] = load_features(data, spec.name, cache_dir=cache, extract_missing=False).codes["pre_logits"]
        print(f"featx extract --engine {engine} ({runs[0].engine}), files to HDF5: {ips:.1f} img/s "
              f"(median wall {statistics.median(r.seconds for r in runs):.1f}s incl. model load); "
              f"ratio to the Keras ceiling {ips / ceiling_ips:.2f}; first run {first.seconds:.1f}s "
              f"(includes any one-time conversion)")
        print(f"  re-run on the unchanged folder: {statistics.median(rerun_frac) * 100:.2f}% of a first run "
              f"(target < 2%)")
    if "keras" in codes:
        for engine, c in codes.items():
            if engine != "keras":
                print(f"  codes {engine} vs keras: max abs difference {np.abs(c - codes['keras']).max():.2e}")
    e2e_ips = max(e2e.values())

    # -- naive loop: decode one, predict one (the study's way) ---------------------------
    if args.skip_naive:
        return
    sub = paths[: args.naive_images]
    model.predict(spec.preprocess([load_image(sub[0])]), verbose=0)
    naive = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for p in sub:
            model.predict(spec.preprocess([load_image(p)]), verbose=0)
        naive.append(len(sub) / (time.perf_counter() - t0))
    naive_ips = statistics.median(naive)
    print(f"naive loop (decode one, predict one, {len(sub)} images): {naive_ips:.1f} img/s; "
          f"featx (fastest engine) speed-up {e2e_ips / naive_ips:.1f}x (target >= 3x)")


    # -- memory: N vs 4N distinct images, each in a fresh process ---------------------------
    if not args.skip_memory:
        small = variants(paths[:100], 1, tmp / "n")
        large = variants(paths[:100], 4, tmp / "4n")
        rss_n = peak_rss_mb(small, spec.name, args.batch_size)
        rss_4n = peak_rss_mb(large, spec.name, args.batch_size)
        print(f"peak RSS: {rss_n:.0f} MB for 100 images, {rss_4n:.0f} MB for 400; growth "
              f"{(rss_4n / rss_n - 1) * 100:.1f}% (target < 10%)")


if __name__ == "__main__":
    main()
