#!/usr/bin/env python
"""Benchmark featx extract against the bare network, its decode ceiling and a naive loop.

Prints every figure it reports and each ratio with both sides measured in the same run,
interleaved (A, B, A, B, ...), medians over ``--repeats``.  Uses ../shared/datasets/ants_bees when
it exists, else generated JPEGs of realistic size.

Sections:
  - bare networks on pre-decoded batches: Keras, LiteRT float32 and LiteRT int8 (the ceilings)
  - decode only (file -> network input, no network) against the number of decode threads:
    the decode ceiling of this machine, GPU machines included
  - featx extract end to end (files -> HDF5 rows) per engine, with the engine already loaded,
    and its ratio to that engine's bare network; LiteRT (float32 and int8) with the default decode
    pool and with each fixed count of ``--decode-threads`` (default 1, 2, 3): the default must not be
    slower than any of them; int8 against float32, bare and end to end (issue 29's goals: >= 1.6x
    bare, >= 1.4x end to end); codes of each engine against Keras (int8: cosine to float32)
  - the study's naive loop (decode one, predict one)
  - ``--ray``: ``extract(..., engine=RayEngine())`` on a local Ray cluster (start-up included, as a user
    sees it) against the LiteRT end-to-end rate of the same run
  - memory: peak RSS of whole extract processes over N and 8N tiny images with a stub engine
    (the pipeline, journal and cache alone: the network's own memory is constant), so growth in
    the number of images is visible

    python scripts/bench_extract.py [--data DIR] [--backbone mobilenet_v2] [--repeats 3]
        [--engines keras,litert,int8] [--decode-threads 1,2,3]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featx.config import ExtractorConfig  # noqa: E402
from featx.datasets import discover  # noqa: E402
from featx.engines import KerasEngine, litert_available, make_engine  # noqa: E402
from featx.engines.calibration import choose as choose_calibration  # noqa: E402
from featx.extract import extract, image_keys, load_features  # noqa: E402
from featx.images import load_image  # noqa: E402
from featx.preprocess import available_cores, decode_workers, load_for_network  # noqa: E402


def photo_folder(n: int, folder: Path, seed: int = 0, size=(500, 375)) -> Path:
    """Photo-like JPEGs (default about 500x375) when no real data is present."""
    import cv2

    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = cv2.resize(small, size, interpolation=cv2.INTER_CUBIC)
        img = cv2.add(img, rng.integers(0, 20, img.shape, dtype=np.uint8))
        cls = folder / f"class{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(cls / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


MEMORY_CHILD = """
import json, sys
import numpy as np
import featx.cache
from featx.config import ExtractorConfig
from featx.extract import extract

def hwm_kb():
    # VmHWM: this process's own peak (ru_maxrss can carry the forking parent's size across exec)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))

before_commit = []
commit = featx.cache.FeatureCache.commit
def watched(self, *args, **kwargs):
    before_commit.append(hwm_kb())  # the last one: the pipeline has run, the final fold has not
    return commit(self, *args, **kwargs)
featx.cache.FeatureCache.commit = watched

class Stub:
    '''Codes of the right shape without a network: the pipeline, journal and cache alone.'''
    name = "stub"
    threads = 1
    def run(self, batch):
        return {"pre_logits": np.full((len(batch), 1280), float(batch.mean()), np.float32)}

report = extract(sys.argv[1], ExtractorConfig("mobilenet_v2"), cache_dir=sys.argv[2], engine=Stub(),
                 progress=False)
print(json.dumps({"computed": report.computed, "rss_kb": hwm_kb(), "pipeline_kb": before_commit[-1]}))
"""


def memory_child(folder: Path, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(folder), str(cache)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_section(small_n: int, tmp: Path) -> None:
    """Memory in the number of images: the pipeline, journal and cache alone (stub engine)."""
    folder = photo_folder(8 * small_n, tmp / "tiny", seed=1, size=(40, 30))
    few_folder = tmp / "tiny-n"
    for p in sorted(folder.rglob("*.jpg"))[:small_n]:
        (few_folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, few_folder / p.parent.name / p.name)
    a = memory_child(few_folder, tmp / "mem-n")
    b = memory_child(folder, tmp / "mem-8n")
    held = 7 * small_n * 1280 * 4 / 1e6
    print(f"\nmemory (stub engine, 1280 float32 per image), whole process: peak RSS {a['rss_kb'] / 1024:.0f} MB "
          f"for {a['computed']} images, {b['rss_kb'] / 1024:.0f} MB for {b['computed']}; growth "
          f"{(b['rss_kb'] - a['rss_kb']) / 1024:.1f} MB for {7 * small_n} more images "
          f"(holding their codes would add {held:.0f} MB)")
    print(f"  of which the pipeline (peak before the final cache commit): {a['pipeline_kb'] / 1024:.0f} MB vs "
          f"{b['pipeline_kb'] / 1024:.0f} MB, growth {(b['pipeline_kb'] - a['pipeline_kb']) / 1024:.1f} MB; "
          f"the rest is the commit folding the journal into the cache file")


def rate(fn, images: int, repeats: int) -> float:
    """Median images per second of ``fn()`` (which handles ``images`` images)."""
    values = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        values.append(images / (time.perf_counter() - t0))
    return statistics.median(values)


def ray_section(data, config, n, bs, repeats, tmp, litert_e2e) -> None:
    """Whole ``extract`` calls on a local Ray cluster, each into an empty cache, cluster start-up included."""
    import ray

    from featx.engines.ray import RayEngine

    rates, starts = [], []
    for r in range(repeats):
        cache = tmp / f"cache-ray{r}"
        t0 = time.perf_counter()
        report = extract(data, config, cache_dir=cache, batch_size=bs, progress=False, engine=RayEngine())
        seconds = time.perf_counter() - t0
        assert report.computed == n - len(report.failures), report.summary()
        rates.append(n / seconds)
        ray.shutdown()  # the next call starts its own cluster, as a new process would
        t0 = time.perf_counter()
        ray.init(num_cpus=available_cores(), include_dashboard=False, log_to_driver=False)
        starts.append(time.perf_counter() - t0)
        ray.shutdown()
    ray_rate = statistics.median(rates)
    print(f"\nfeatx extract --engine ray, local cluster, 1 worker, whole call into an empty cache (median of "
          f"{repeats}): {ray_rate:.1f} img/s"
          + (f", {ray_rate / litert_e2e:.2f}x the LiteRT engine's end-to-end {litert_e2e:.1f} img/s (same run)"
             if litert_e2e else "")
          + f"; starting a local Ray cluster alone: median {statistics.median(starts):.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-images", type=int, default=48)
    ap.add_argument("--memory-images", type=int, default=500, help="N for the N vs 8N memory check")
    ap.add_argument("--cache", default=None,
                    help="a cache folder whose engines/ holds the converted model "
                         "(default: convert in a temporary one)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the memory section (no network is built)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--ray", action="store_true",
                    help="also time featx extract on a local Ray cluster (extra featx[ray]), whole call")
    ap.add_argument("--engines", default="keras,litert,int8",
                    help="comma-separated engines to time (int8: LiteRT with --precision int8)")
    ap.add_argument("--decode-threads", default="1,2,3",
                    help="fixed decode thread counts timed end to end against the default pool (LiteRT engines)")
    ap.add_argument("--workers", default=None,
                    help="comma-separated decode thread counts for the decode-only table "
                         "(default 1, 2, 4, ... up to twice the cores)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="featx-bench-"))
    shared = ROOT.parent / "shared" / "datasets" / "ants_bees"
    data = Path(args.data) if args.data else (shared if shared.exists() else photo_folder(400, tmp / "photos"))
    paths = discover(data).paths
    n = len(paths)
    bs = args.batch_size
    engines = [e for e in args.engines.split(",") if e not in ("litert", "int8") or litert_available()]
    config = ExtractorConfig(args.backbone)
    spec = config.spec
    cores = available_cores()
    print(f"data: {data} ({n} images), backbone {spec.name}, batch {bs}, repeats {args.repeats}, "
          f"{cores} cores available (machine shared with other jobs: compare ratios, not absolute figures)")

    if args.memory_only:
        memory_section(args.memory_images, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        return

    # -- the engines, loaded once (the converted model is made here if it is missing) -----------
    t0 = time.perf_counter()
    keras = KerasEngine(config)
    print(f"Keras feature model built in {time.perf_counter() - t0:.1f}s")
    loaded = {"keras": keras}
    if "litert" in engines:
        t0 = time.perf_counter()
        loaded["litert"] = make_engine(config, bs, "litert", args.cache or tmp / "engines-home", gpu=False,
                                       model=keras.model)
        print(f"LiteRT engine ready in {time.perf_counter() - t0:.1f}s (includes the one-time conversion), "
              f"{loaded['litert'].name}, {getattr(loaded['litert'], 'threads', '?')} interpreter threads")
    configs = {e: config for e in engines}
    if "int8" in engines:
        import featx.config

        featx.config.INT8_REFUSED.clear()  # a measurement: also of a backbone int8 is turned off for
        dataset, keys = image_keys(data)
        calibration = choose_calibration(dataset.paths, keys, dataset.splits)
        configs["int8"] = ExtractorConfig(args.backbone, precision="int8", calibration=calibration.id)
        t0 = time.perf_counter()
        loaded["int8"] = make_engine(configs["int8"], bs, "litert", args.cache or tmp / "engines-home", gpu=False,
                                     model=keras.model, calibration=calibration)
        print(f"int8 LiteRT engine ready in {time.perf_counter() - t0:.1f}s (includes the one-time conversion, "
              f"calibrated on {len(calibration.keys)} images)")
    batch = np.stack([load_for_network(spec, p) for p in paths[:bs]])
    reps = max(1, n // bs)

    # -- ceilings and pipeline, interleaved per repeat -------------------------------------------------
    auto_workers = decode_workers(None, engine_threads=getattr(loaded.get("litert"), "threads", 1))
    fixed = [int(w) for w in args.decode_threads.split(",") if w]
    runs = {f"bare {e}": [] for e in engines}
    runs.update({f"e2e {e}": [] for e in engines})
    for e in engines:
        if e in ("litert", "int8"):
            runs.update({f"e2e {e}, {w} decode threads": [] for w in fixed})
    cpu_ms = {k: [] for k in runs}  # process CPU time per image: what a loaded machine cannot inflate
    for e in engines:
        loaded[e].run(batch)  # warm
    variants = [("", None)] + [(f", {w} decode threads", w) for w in fixed]
    for _ in range(args.repeats):  # interleaved: every bare network, then each pool with each engine in turn
        for e in engines:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(reps):
                loaded[e].run(batch)
            runs[f"bare {e}"].append(reps * bs / (time.perf_counter() - t0))
            cpu_ms[f"bare {e}"].append((time.process_time() - c0) * 1000 / (reps * bs))
        for suffix, workers in variants:
            for e in engines:
                if workers is not None and e not in ("litert", "int8"):
                    continue
                cache = tmp / f"cache-{e}{workers or ''}"
                shutil.rmtree(cache, ignore_errors=True)
                c0 = time.process_time()
                report = extract(data, configs[e], cache_dir=cache, batch_size=bs, progress=False, engine=loaded[e],
                                 workers=workers)
                assert report.computed == n - len(report.failures), report.summary()
                runs[f"e2e {e}{suffix}"].append(report.images_per_second)
                cpu_ms[f"e2e {e}{suffix}"].append((time.process_time() - c0) * 1000 / report.computed)
    med = {k: statistics.median(v) for k, v in runs.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_ms.items()}
    keras_workers = decode_workers(None, engine_threads=keras.threads)
    print()
    print(f"| what (median of {args.repeats}) | img/s (wall) | ratio (wall) | CPU ms per image | "
          f"ratio (CPU: bare / this) |")
    print("|---|---|---|---|---|")
    base = "keras" if "keras" in engines else engines[0]
    for e in engines:
        print(f"| bare {e} network, pre-decoded batches | {med[f'bare {e}']:.1f} | "
              f"{med[f'bare {e}'] / med[f'bare {base}']:.2f}x bare {base} | {cpu[f'bare {e}']:.2f} | |")
    for e in engines:
        w = auto_workers if e in ("litert", "int8") else keras_workers
        print(f"| featx extract, {e} engine, files to HDF5 ({w} decode threads) | {med[f'e2e {e}']:.1f} | "
              f"{med[f'e2e {e}'] / med[f'bare {e}']:.2f}x bare {e} | {cpu[f'e2e {e}']:.2f} | "
              f"{cpu[f'bare {e}'] / cpu[f'e2e {e}']:.2f} |")
    for e in ("litert", "int8"):
        for w in fixed if e in engines else ():
            key = f"e2e {e}, {w} decode threads"
            print(f"| featx extract, {e} engine, {w} decode threads (fixed) | {med[key]:.1f} | "
                  f"{med[key] / med[f'bare {e}']:.2f}x bare {e}; default pool {med[f'e2e {e}'] / med[key]:.2f}x "
                  f"this | {cpu[key]:.2f} | {cpu[f'bare {e}'] / cpu[key]:.2f} |")
    if "int8" in engines and "litert" in engines:
        print(f"| int8 vs float32 (LiteRT), bare network | | {med['bare int8'] / med['bare litert']:.2f}x "
              f"(goal >= 1.6) | | {cpu['bare litert'] / cpu['bare int8']:.2f}x |")
        print(f"| int8 vs float32 (LiteRT), featx extract end to end, default pools | | "
              f"{med['e2e int8'] / med['e2e litert']:.2f}x (goal >= 1.4) | | {cpu['e2e litert'] / cpu['e2e int8']:.2f}x |")
    if "litert" in engines:
        if "keras" in engines:
            print(f"| featx extract: litert vs keras, both end to end | | "
                  f"{med['e2e litert'] / med['e2e keras']:.2f}x | "
                  f"| {cpu['e2e keras'] / cpu['e2e litert']:.2f}x |")
    print("(issue 13's goal for LiteRT end to end vs bare: >= 0.85. The CPU column bounds it: on a machine whose "
          "cores are all busy, wall ratio ~ CPU ratio; decode's own CPU cost is in the table below.)")
    print("raw img/s: " + json.dumps({k: [round(v, 1) for v in vals] for k, vals in runs.items()}))
    print("raw CPU ms/img: " + json.dumps({k: [round(v, 2) for v in vals] for k, vals in cpu_ms.items()}))

    if "keras" in engines:
        ref = load_features(data, config, cache_dir=tmp / "cache-keras", extract_missing=False).codes["pre_logits"]
        for e in engines:
            if e != "keras":
                got = load_features(data, configs[e], cache_dir=tmp / f"cache-{e}", extract_missing=False)
                if e == "int8":
                    a, b = got.codes["pre_logits"], ref
                    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
                    print(f"codes int8 vs keras float32: cosine per image min {cos.min():.3f}, mean {cos.mean():.3f} "
                          f"(parity bound: min >= 0.9 on the probe images)")
                    continue
                print(f"codes {e} vs keras: max abs difference {np.abs(got.codes['pre_logits'] - ref).max():.2e} "
                      f"(parity bound 1e-4)")

    # -- decode ceiling: file -> network input, no network --------------------------------------------
    counts = [int(w) for w in args.workers.split(",")] if args.workers else \
        sorted({1, 2, 4, *range(8, 2 * cores + 1, 8), 2 * cores} - {0})
    sub = paths[: min(n, 400)]
    print()
    print(f"| decode threads | decode-only img/s ({len(sub)} files, median of {args.repeats}) | ratio to 1 thread | "
          f"CPU ms per image |")
    print("|---|---|---|---|")
    base = None
    for w in counts:
        with cf.ThreadPoolExecutor(w) as pool:
            c0 = time.process_time()
            ips = rate(lambda: list(pool.map(lambda p: load_for_network(spec, p), sub)), len(sub), args.repeats)
            cpu_decode = (time.process_time() - c0) * 1000 / (len(sub) * args.repeats)
        base = base or ips
        print(f"| {w} | {ips:.1f} | {ips / base:.2f}x | {cpu_decode:.2f} |")

    # -- naive loop: decode one, predict one (the study's way) ----------------------------------------
    if not args.skip_naive:
        few = paths[: args.naive_images]
        model = keras.model
        model.predict(spec.preprocess([load_image(few[0])]), verbose=0)
        naive = rate(lambda: [model.predict(spec.preprocess([load_image(p)]), verbose=0) for p in few], len(few),
                     args.repeats)
        best = max(med[f"e2e {e}"] for e in engines)
        print(f"\nnaive loop (decode one, predict one, Keras, {len(few)} images): {naive:.1f} img/s; featx "
              f"(fastest engine, {best:.1f} img/s) {best / naive:.1f}x")

    if args.ray:
        ray_section(data, config, n, bs, args.repeats, tmp, med.get("e2e litert"))

    if not args.skip_memory:
        memory_section(args.memory_images, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
