"""Benchmark the segmented cache against the single-file cache it replaces (synthetic rows, no network).

For each size (default 10k, 200k and 1M rows of float16 1280-d codes, like MobileNetV2's
pre-logits) a child process builds the cache in 10,000-row commits, then measures, with the page
cache warm (everything was just written):

- commit of 32 new rows (median of 3; each adds a segment),
- ``keys()`` of the whole tap (median of 3),
- ``read()`` of 1,000 random rows (median of 5, new random keys each time),

once as built and once after ``compact()``, stating the segment count at each measurement, and
reports its peak RSS (``ru_maxrss``).  The baseline is the previous ``featx/cache.py`` (taken from
git, ``--baseline-ref``, default ``15e9c14``, the last commit where it was one module) on a single-file cache of the same rows, for the sizes in
``--baseline-sizes`` (default 10k and 200k: at 1M each of its commits rewrites 2.6 GB).

``--extract-images N`` also times ``featx extract`` re-run over an unchanged folder of N generated
images with both versions (interleaved repeats, medians; each a fresh process, timing the
``extract()`` call, not the interpreter start and imports, which dominate and vary most on a
shared machine), the cache built once by the baseline and migrated by the new version first.

Run: ``PYTHONPATH=$PWD python scripts/bench_cache.py`` (about 5 minutes; ~6 GB of disk in --workdir).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"backbone": "synthetic", "pooling": "avg", "dtype": "float16"}
TAP = "pre_logits"
STEP = 10_000


def key_of(i: int) -> str:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).hexdigest()


def rows_block(start: int, n: int, dim: int, rng) -> tuple[np.ndarray, np.ndarray]:
    keys = np.asarray([key_of(i) for i in range(start, start + n)], dtype="S32")
    return keys, rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)


def timed(fn, repeats: int) -> float:
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        fn(r)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(cache, TapRows, n_rows: int, next_key: list, dim: int, rng) -> dict:
    os.sync()  # the build's dirty pages reach the disk first: a commit's fsync should not pay for them
    out = {"segments": cache.info().get("segments", 1)}

    def commit(_):
        keys, codes = rows_block(next_key[0], 32, dim, rng)
        next_key[0] += 32
        cache.append({TAP: TapRows(keys, codes)})
        cache.commit()

    def read(_):
        idx = rng.choice(n_rows, 1000, replace=False)
        got = cache.read(TAP, [key_of(int(i)) for i in idx])
        assert got.shape == (1000, dim)

    out["keys_s"] = timed(lambda _: len(cache.keys(TAP)), 3)
    out["read_1000_s"] = timed(read, 5)
    segments = sys.modules.get("featx.cache.segments")
    if segments is not None and hasattr(segments, "CHECK_READS"):  # what checking costs, same run
        def first_read(_):  # a new process's first read: every segment mapped and its index checked
            segments._MAPS.clear()
            read(_)

        out["first_read_1000_s"] = timed(first_read, 3)
        segments.CHECK_READS = False
        try:
            out["read_1000_unchecked_s"] = timed(read, 5)
            out["first_read_1000_unchecked_s"] = timed(first_read, 3)
        finally:
            segments.CHECK_READS = True
        out["read_1000_s"] = timed(read, 5)  # again, interleaved with the unchecked ones
    out["commit_32_s"] = timed(commit, 3)
    out["file_mb"] = sum(p.stat().st_size for p in Path(cache.path).rglob("*.h5") if p.is_file()) / 1e6 \
        if Path(cache.path).is_dir() else Path(cache.path).stat().st_size / 1e6
    return out


def child_new(n_rows: int, workdir: Path, dim: int) -> dict:
    from featx.cache import FeatureCache, TapRows, cache_path

    rng = np.random.default_rng(0)
    cache = FeatureCache(cache_path(workdir, CONFIG), CONFIG)
    result = {"impl": "segments", "rows": n_rows}
    t = time.perf_counter()
    with cache:
        for start in range(0, n_rows, STEP):
            cache.append({TAP: TapRows(*rows_block(start, min(STEP, n_rows - start), dim, rng))})
            cache.commit()
        result["build_s"] = time.perf_counter() - t
        result["build_rss_mb"] = peak_rss_mb()
        next_key = [10**12]
        result["built"] = measure(cache, TapRows, n_rows, next_key, dim, rng)
        t = time.perf_counter()
        cache.compact()
        result["compact_s"] = time.perf_counter() - t
        result["compacted"] = measure(cache, TapRows, n_rows, next_key, dim, rng)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def load_baseline(ref: str, workdir: Path):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:featx/cache.py"], capture_output=True, text=True,
                         check=True).stdout
    path = workdir / "baseline_cache.py"
    path.write_text(src)
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline_cache", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child_old(n_rows: int, workdir: Path, dim: int, ref: str) -> dict:
    import h5py

    old = load_baseline(ref, workdir)
    rng = np.random.default_rng(0)
    path = workdir / "baseline.h5"
    t = time.perf_counter()
    with h5py.File(path, "w") as f:  # the single file the baseline's commits would have produced
        f.attrs["format"] = 1
        f.attrs["config"] = json.dumps(CONFIG, sort_keys=True)
        f.attrs["provenance"] = "{}"
        f.create_dataset("failures", data="[]")
        g = f.create_group(f"taps/{TAP}")
        chunk_rows = max(1, min(1024, (1 << 20) // (dim * 2)))
        keys = g.create_dataset("keys", shape=(n_rows,), maxshape=(None,), dtype="S32", chunks=(4096,))
        codes = g.create_dataset("codes", shape=(n_rows, dim), maxshape=(None, dim), dtype="float16",
                                 chunks=(chunk_rows, dim))
        for start in range(0, n_rows, STEP):
            k, c = rows_block(start, min(STEP, n_rows - start), dim, rng)
            keys[start : start + k.size] = k
            codes[start : start + k.size] = c
    result = {"impl": f"single file ({ref})", "rows": n_rows, "build_s": time.perf_counter() - t}
    cache = old.FeatureCache(path, CONFIG)
    with cache:
        result["built"] = measure(cache, old.TapRows, n_rows, [10**12], dim, rng)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def run_child(args, kind: str, n: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench_cache_{kind}_{n}_", dir=args.workdir))
    try:
        cmd = [sys.executable, __file__, "--child", kind, str(n), "--workdir", str(work), "--dim", str(args.dim),
               "--baseline-ref", args.baseline_ref]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if out.returncode:
            raise SystemExit(f"child {kind} {n} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_extract_rerun(args) -> dict:
    """featx extract over an unchanged folder: baseline code vs this tree, interleaved."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_photo  # tiny smooth pictures, as in the tests
    import cv2

    work = Path(tempfile.mkdtemp(prefix="bench_cache_extract_", dir=args.workdir))
    try:
        data = work / "data"
        for i in range(args.extract_images):
            d = data / f"class{i % 4}"
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"img{i:05d}.jpg"), make_photo(10_000 + i))
        base_src = work / "baseline_src"
        base_src.mkdir()
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_ref, "featx"], capture_output=True,
                             check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base_src)], input=tar, check=True)
        code = ("import sys, time; from featx.extract import extract; t = time.perf_counter(); "  # the call, not
                "r = extract(sys.argv[1], cache_dir=sys.argv[2], progress=False); "  # interpreter start and imports
                "print(time.perf_counter() - t, r.computed, r.cached)")

        def run(src, cache):
            env = {**os.environ, "PYTHONPATH": str(src), "FEATX_ENGINE": os.environ.get("FEATX_ENGINE", "keras")}
            out = subprocess.run([sys.executable, "-c", code, str(data), str(cache)], capture_output=True, text=True,
                                 env=env, cwd=work)
            if out.returncode:
                raise SystemExit(f"extract failed:\n{out.stderr[-3000:]}")
            seconds, computed, cached = out.stdout.split()
            return float(seconds), int(computed), int(cached)

        t0 = time.perf_counter()
        first = run(base_src, work / "c_old")
        build_s = time.perf_counter() - t0
        shutil.copytree(work / "c_old", work / "c_new")
        migrate = run(ROOT, work / "c_new")  # the first write migrates the single file into a segment
        old_t, new_t = [], []
        for _ in range(args.extract_repeats):
            old_t.append(run(base_src, work / "c_old"))
            new_t.append(run(ROOT, work / "c_new"))
        assert all(r[1] == 0 for r in old_t + new_t)
        return {"images": args.extract_images, "first_extract_s": build_s, "first_computed": first[1],
                "migrating_rerun_s": migrate[0], "baseline_s": statistics.median(r[0] for r in old_t),
                "segments_s": statistics.median(r[0] for r in new_t),
                "baseline_all": [round(r[0], 3) for r in old_t], "segments_all": [round(r[0], 3) for r in new_t]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,200000,1000000",
                    help="rows, comma-separated; empty for none (default 10000,200000,1000000)")
    ap.add_argument("--baseline-sizes", default="10000,200000", help="rows for the baseline (default 10000,200000)")
    ap.add_argument("--baseline-ref", default="15e9c14",
                    help="git ref of the baseline cache.py (default 15e9c14, the last commit with the cache in one "
                         "module; featx/cache is a package since)")
    ap.add_argument("--dim", type=int, default=1280, help="code width (default 1280)")
    ap.add_argument("--extract-images", type=int, default=1000, help="0 skips the extract re-run (default 1000)")
    ap.add_argument("--extract-repeats", type=int, default=5, help="interleaved re-runs each (default 5)")
    ap.add_argument("--workdir", default=None, help="scratch folder (default the system temp folder)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "ROWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, n = args.child[0], int(args.child[1])
        res = child_new(n, Path(args.workdir), args.dim) if kind == "new" else \
            child_old(n, Path(args.workdir), args.dim, args.baseline_ref)
        print(json.dumps(res))
        return
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared: absolute figures are "
          "noisy; ratios are measured in the same run)", flush=True)
    results = []
    base = {int(n) for n in args.baseline_sizes.split(",") if n}
    for n in [int(n) for n in args.sizes.split(",") if n]:
        if n in base:
            results.append(run_child(args, "old", n))
            print(json.dumps(results[-1]), flush=True)
        results.append(run_child(args, "new", n))
        print(json.dumps(results[-1]), flush=True)
    rerun = bench_extract_rerun(args) if args.extract_images else None
    if rerun:
        print(json.dumps(rerun), flush=True)

    print("\n| rows | cache | segments | size | commit of 32 rows | keys() | read 1,000 random | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    old = {r["rows"]: r["built"] for r in results if r["impl"] != "segments"}
    for r in results:
        states = [("built", r["built"])] + ([("compacted", r["compacted"])] if "compacted" in r else [])
        for state, m in states:
            ratio = ""
            if r["impl"] == "segments" and r["rows"] in old:
                o = old[r["rows"]]
                ratio = f" ({o['commit_32_s'] / m['commit_32_s']:.0f}x faster)"
            label = r["impl"] if r["impl"] != "segments" else f"segments, {state}"
            read_ratio = (f" ({old[r['rows']]['read_1000_s'] / m['read_1000_s']:.0f}x)"
                          if r["impl"] == "segments" and r["rows"] in old else "")
            print(f"| {r['rows']:,} | {label} | {m['segments']} | {m['file_mb']:.0f} MB | {m['commit_32_s']:.3f} s{ratio} "
                  f"| {m['keys_s']:.3f} s | {m['read_1000_s']:.3f} s{read_ratio} | {r['peak_rss_mb']:.0f} MB |")
            if "read_1000_unchecked_s" in m:
                print(f"|   | checksums: read of 1,000 checked {m['read_1000_s']:.4f} s vs unchecked "
                      f"{m['read_1000_unchecked_s']:.4f} s (x{m['read_1000_s'] / m['read_1000_unchecked_s']:.2f}); "
                      f"first read in a process (maps + index checks) {m['first_read_1000_s']:.3f} s vs "
                      f"{m['first_read_1000_unchecked_s']:.3f} s "
                      f"(x{m['first_read_1000_s'] / m['first_read_1000_unchecked_s']:.2f}) | | | | | | |")
    for r in results:
        if r["impl"] == "segments":
            print(f"{r['rows']:,} rows: built in {r['build_s']:.1f} s ({r['rows'] // STEP or 1} commits, peak RSS "
                  f"while building {r['build_rss_mb']:.0f} MB), compacted in {r['compact_s']:.1f} s")
    if rerun:
        print(f"\nfeatx extract re-run over {rerun['images']} unchanged images (median of {args.extract_repeats}, "
              f"interleaved): baseline {rerun['baseline_s']:.2f} s, segments {rerun['segments_s']:.2f} s "
              f"(ratio {rerun['segments_s'] / rerun['baseline_s']:.2f}); first extraction {rerun['first_extract_s']:.0f} s, "
              f"migrating re-run {rerun['migrating_rerun_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "extract_rerun": rerun}, indent=2))


if __name__ == "__main__":
    main()
