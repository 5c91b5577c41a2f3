"""The prepared GPU measurement (run by scripts/gpu_check.sh; docs/backends.md).

Subcommands
-----------
reference   (here, TensorFlow on a CPU) writes scripts/gpu_check_reference.npz: 16 small images and the float32
            codes of mobilenet_v2 and efficientnet_lite2 for them, and prints mixed precision's difference on
            this CPU.
parity      (on the GPU, one Keras backend: KERAS_BACKEND) codes of those images, float32 and mixed precision,
            against the stored CPU codes; prints one JSON line.
throughput  (on the GPU, one backend) for each network, batch size and precision: the bare network on
            pre-decoded batches, ``featx.extract.extract`` end to end over generated JPEGs, and the decode-only
            ceiling against the number of threads; prints one JSON line per measurement.
table       reads the JSON lines (stdin) and prints the one table, with each extract's ratio to the slower of
            (bare network, decode ceiling): the goal is >= 0.8.

Every figure is a median of repeated timed runs after a warm-up, measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "gpu_check_reference.npz"
PARITY_NETWORKS = ("mobilenet_v2", "efficientnet_lite2")
#: (network, weights) the throughput rows run, most important first (a deadline may cut the tail)
NETWORKS = (("mobilenet_v2", "imagenet"), ("efficientnet_lite2", "imagenet"), ("vgg16", None))
BATCHES = (32, 128, 256)


def reference_images(n: int = 16, size: int = 96) -> np.ndarray:
    """Smooth colour fields with edges, seeded: photo-like enough for a CNN, tiny to store."""
    rng = np.random.default_rng(2026)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        a, b, c = rng.uniform(0.5, 6.0, 3)
        channels = [np.sin(a * xx + b * yy + rng.uniform(0, 6)) * np.cos(c * yy) for _ in range(3)]
        img = (np.stack(channels, -1) * 0.5 + 0.5) * 255
        img[rng.integers(0, size // 2):, rng.integers(0, size // 2):] *= rng.uniform(0.3, 1.0)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(images)


def write_pngs(images: np.ndarray, folder: Path) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"ref{i:02d}.png"  # lossless: every machine decodes the same pixels
        cv2.imwrite(str(path), img[:, :, ::-1])
        paths.append(path)
    return paths


def codes_of(paths, backbone: str, mixed: bool) -> np.ndarray:
    """``pre_logits`` codes of ``paths`` with the Keras engine on the active backend, in path order."""
    from featx.config import ExtractorConfig
    from featx.engines import KerasEngine
    from featx.preprocess import load_network_inputs

    config = ExtractorConfig(backbone, mixed_precision=mixed)
    engine = KerasEngine(config)
    return np.asarray(engine.run(load_network_inputs(config.spec, paths))["pre_logits"], dtype=np.float32)


def make_reference(_args) -> None:
    from featx import _tf

    assert _tf.backend() == "tensorflow", "the reference is TensorFlow's codes on a CPU"
    images = reference_images()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_pngs(images, Path(tmp))
        stored = {"images": images}
        for net in PARITY_NETWORKS:
            stored[net] = codes_of(paths, net, mixed=False)
            mixed = codes_of(paths, net, mixed=True)
            print(f"{net}: CPU mixed_float16 vs float32 max |difference| {np.abs(mixed - stored[net]).max():.2e} "
                  f"(max |code| {np.abs(stored[net]).max():.2f})")
    np.savez_compressed(REFERENCE, **stored, versions=json.dumps(_tf.versions("CPU")))
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size / 1e3:.0f} kB)")


def parity(_args) -> None:
    from featx import _tf
    from featx.engines import PARITY_ATOL

    ref = np.load(REFERENCE)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_pngs(ref["images"], Path(tmp))
        for net in PARITY_NETWORKS:
            for mixed in (False, True):
                diff = float(np.abs(codes_of(paths, net, mixed) - ref[net]).max())
                print(json.dumps({"kind": "parity", "backend": _tf.backend(), "network": net,
                                  "precision": "mixed_float16" if mixed else "float32", "max_abs_diff": diff,
                                  "within_parity_atol": diff <= PARITY_ATOL, "devices": _tf.devices()}), flush=True)


def photo_jpegs(folder: Path, n: int, workers: int) -> list[Path]:
    """``n`` 500x375 JPEGs (a typical photo's size), quality 90, written in parallel."""
    import concurrent.futures as cf

    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    base = reference_images(8, 128)

    def one(i):
        img = cv2.resize(np.roll(base[i % 8], i, axis=1), (500, 375), interpolation=cv2.INTER_CUBIC)
        path = folder / f"img{i:05d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        return path

    with cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(n)))


def median_rate(run, images: int, repeats: int) -> float:
    """Images per second: the median over ``repeats`` timed calls of ``run`` (each handling ``images``)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return images / statistics.median(times)


def decode_rows(paths, cores: int, emit) -> None:
    from featx.backbones.registry import get_backbone
    from featx.preprocess import load_network_inputs

    spec = get_backbone("mobilenet_v2")
    threads = sorted({t for t in (1, 2, 4, 8, 16, 32) if t <= cores} | {cores})
    load_network_inputs(spec, paths[:64], workers=cores)  # warm the page cache and cv2
    for t in threads:
        emit({"kind": "decode", "threads": t, "img_s": median_rate(lambda: load_network_inputs(spec, paths, t),
                                                                  len(paths), 3)})


def network_rows(paths, net: str, weights, batch: int, mixed: bool, emit) -> None:
    """One (network, batch, precision): the bare network on pre-decoded batches, then featx extract."""
    from featx.config import ExtractorConfig
    from featx.engines import KerasEngine
    from featx.extract import extract
    from featx.preprocess import load_network_inputs

    config = ExtractorConfig(net, weights=weights, mixed_precision=mixed)
    engine = KerasEngine(config)
    decoded = load_network_inputs(config.spec, paths[: batch * 4])
    batches = [decoded[i: i + batch] for i in range(0, len(decoded), batch)]
    for b in batches[:2]:
        engine.run(b)  # warm-up: compile for this batch shape

    def bare():
        for b in batches:
            engine.run(b)

    row = {"network": net, "batch": batch, "precision": "mixed_float16" if mixed else "float32"}
    emit({"kind": "bare", **row, "img_s": median_rate(bare, len(decoded), 3)})
    rates = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            report = extract(paths, config, cache_dir=cache, batch_size=batch, engine=engine, progress=False)
            assert report.computed == len(paths), report.summary()
            rates.append(len(paths) / (time.perf_counter() - start))
    emit({"kind": "extract", **row, "img_s": statistics.median(rates), "n": len(paths)})


def throughput(args) -> None:
    from featx import _tf
    from featx.preprocess import available_cores

    deadline = time.monotonic() + args.budget
    cores = available_cores()

    def emit(row):
        print(json.dumps({**row, "backend": _tf.backend()}), flush=True)

    emit({"kind": "machine", "devices": _tf.devices(), "cores": cores, "versions": _tf.versions()})
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_jpegs(Path(tmp) / "photos", args.images, cores)
        decode_rows(paths, cores, emit)
        for net, weights in NETWORKS[: args.networks]:
            for mixed in (False, True):
                for batch in args.batches:
                    if time.monotonic() > deadline:
                        emit({"kind": "skipped", "network": net, "batch": batch,
                              "precision": "mixed_float16" if mixed else "float32", "why": "time budget"})
                        continue
                    network_rows(paths, net, weights, batch, mixed, emit)


def table(_args) -> None:
    rows = [json.loads(line) for line in sys.stdin if line.startswith("{")]
    for r in (r for r in rows if r["kind"] == "machine"):
        print(f"backend {r['backend']}; devices: {', '.join(r['devices'])}; {r['cores']} cores")
    for r in (r for r in rows if r["kind"] == "parity"):
        print(f"parity {r['backend']:<6} {r['network']:<19} {r['precision']:<14} max |diff| vs CPU "
              f"{r['max_abs_diff']:.2e}  {'OK' if r['within_parity_atol'] else 'OVER 1e-4'}")
    decode = {r["threads"]: r["img_s"] for r in rows if r["kind"] == "decode"}
    if decode:
        print("decode only (img/s by threads): " + ", ".join(f"{t}: {v:.0f}" for t, v in sorted(decode.items())))
    ceiling = max(decode.values()) if decode else float("nan")
    bare = {(r["network"], r["batch"], r["precision"]): r["img_s"] for r in rows if r["kind"] == "bare"}
    print(f"{'network':<19} {'batch':>5} {'precision':<14} {'bare img/s':>10} {'extract img/s':>13} "
          f"{'min(bare,decode)':>16} {'ratio':>6}")
    for r in rows:
        if r["kind"] == "skipped":
            print(f"{r['network']:<19} {r['batch']:>5} {r['precision']:<14} not run ({r['why']})")
        if r["kind"] != "extract":
            continue
        b = bare[(r["network"], r["batch"], r["precision"])]
        slower = min(b, ceiling)
        print(f"{r['network']:<19} {r['batch']:>5} {r['precision']:<14} {b:>10.0f} {r['img_s']:>13.0f} "
              f"{slower:>16.0f} {r['img_s'] / slower:>6.2f}{'' if r['img_s'] >= 0.8 * slower else '  < 0.8'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("reference").set_defaults(func=make_reference)
    sub.add_parser("parity").set_defaults(func=parity)
    p = sub.add_parser("throughput")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=list(BATCHES))
    p.add_argument("--networks", type=int, default=len(NETWORKS), help="the first N of " + str(NETWORKS))
    p.add_argument("--budget", type=float, default=330.0, help="seconds; later rows are reported as not run")
    p.set_defaults(func=throughput)
    sub.add_parser("table").set_defaults(func=table)
    args = parser.parse_args()
    os.environ.setdefault("FEATX_ENGINE", "keras")
    args.func(args)


if __name__ == "__main__":
    main()
