"""Run a backbone once over a dataset and cache its codes; read them back.

The pipeline: hash every file (the cache key) -> look up what the cache
lacks -> decode and resize those images in a small thread pool while the
network runs on the previous batch -> write finished rows to the cache's
journal every few hundred images -> fold them into the HDF5 file at the end.
Nothing is held in memory beyond a few batches, so memory stays flat in the
number of images; bad images are reported, never fatal.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx import _tf

from featx import __version__
from featx.backbones.registry import DEFAULT_BACKBONE, POOLINGS, get_backbone
from featx.cache import DTYPES, FeatureCache, TapRows, cache_path, content_key, default_cache_dir
from featx.datasets import Dataset, discover, from_paths
from featx.errors import FeatxError
from featx.images import ImageError, decode, read_bytes
from featx.inference import make_engine

MIN_IMAGE_SIDE = 8  # smaller images carry no usable signal after resizing
LARGE_FLAT_DIM = 100_000  # warn when pooling='none' stores more numbers than this per image


@dataclass
class ExtractReport:
    cache_file: Path
    dataset: Dataset
    keys: list  # content key per dataset image, None where the file could not be read
    computed: int = 0
    cached: int = 0
    failures: list = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    computed_views: int = 0
    engine: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = (f"{len(self.dataset)} images: {self.computed} extracted, {self.cached} already cached, "
                f"{len(self.failures)} skipped; {self.seconds:.1f}s")
        if self.computed:
            text += f" ({self.images_per_second:.1f} img/s, {self.engine})"
        if self.computed_views:
            text += f"; {self.computed_views} augmented views extracted"
        return text + f"\ncache: {self.cache_file}"


@dataclass
class Features:
    """Codes of a dataset, rows in the dataset's order (images that failed are left out)."""

    codes: dict  # tap -> (n, d) float32
    paths: list
    keys: list
    labels: np.ndarray | None
    class_names: list
    splits: np.ndarray | None
    cache_file: Path
    config: dict
    failures: list
    views: dict | None = None  # tap -> (n, K, d): codes of K augmented views per image
    flipped: dict | None = None  # tap -> (n, d): codes of each image mirrored left-right (flip=True)

    def X(self, taps=None) -> np.ndarray:
        taps = list(taps or self.codes)
        return np.concatenate([self.codes[t] for t in taps], axis=1) if len(taps) > 1 else self.codes[taps[0]]

    def X_views(self, taps=None) -> np.ndarray:
        """(n, K, d) codes of the augmented views (extract with views=K first)."""
        if not self.views:
            raise FeatxError("no augmented views were loaded; extract with --views K")
        taps = list(taps or self.views)
        return np.concatenate([self.views[t] for t in taps], axis=2)

    def X_flip(self, taps=None) -> np.ndarray:
        """(n, d) codes of the mirrored images, in the order of :meth:`X` (extract with flip=True first)."""
        if not self.flipped:
            raise FeatxError("no flipped view was loaded; extract with flip=True (--tta flip)")
        taps = list(taps or self.flipped)
        return np.concatenate([self.flipped[t] for t in taps], axis=1) if len(taps) > 1 else self.flipped[taps[0]]


AUGMENTATION_ID = "study-v1"  # rotation 20, shift 0.2, shear 0.2, zoom 0.2, h-flip, nearest fill


def view_key(key: str, view: int) -> str:
    """Cache key of augmented view ``view`` (1..K) of the image with content key ``key``."""
    return hashlib.blake2b(f"{key}:view{view}".encode(), digest_size=16).hexdigest()


def view_seed(key: str, view: int) -> int:
    return int(view_key(key, view)[:7], 16)


def views_config(config: dict) -> dict:
    """The configuration of a cache holding augmented views: its own file."""
    return {**config, "views": AUGMENTATION_ID}


FLIP = "flip"  # the seed value that asks _load_for_network for the mirrored image


def flip_config(config: dict) -> dict:
    """The configuration of a cache holding the left-right mirrored view: its own file, same keys."""
    return {**config, "views": FLIP}


def extractor_config(backbone: str, pooling: str = "avg", dtype: str = "float32", weights="imagenet",
                     mixed_precision: bool = False) -> dict:
    """Everything that changes the numbers in a cache row (the cache file's key)."""
    spec = get_backbone(backbone)
    if pooling not in POOLINGS:
        raise FeatxError(f"expected one of {', '.join(POOLINGS)}, got {pooling!r}", param="pooling")
    if dtype not in DTYPES:
        raise FeatxError(f"expected one of {', '.join(DTYPES)}, got {dtype!r}", param="dtype")
    return {
        "backbone": spec.name,
        "weights": spec.weights_id(weights),
        "input_size": spec.input_size,
        "crop_fraction": round(spec.crop_fraction, 6),
        "preprocessing": spec.normalizer.__name__,
        "pooling": pooling,
        "dtype": dtype,
        "mixed_precision": bool(mixed_precision),
        "views": 0,
    }


def _as_dataset(data) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return discover(data)
    return from_paths(data)


def _hash_files(paths, workers: int = 4):
    def one(path):
        try:
            return content_key(read_bytes(path)), None
        except ImageError as exc:
            return None, str(exc)

    with cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, paths))


def _check_taps(spec, taps) -> list[str]:
    taps = [taps] if isinstance(taps, str) else list(taps)
    if not taps:
        raise FeatxError("give at least one tap", param="taps")
    for t in taps:
        spec.tap(t)
    return list(dict.fromkeys(taps))


def extract(data, backbone: str = DEFAULT_BACKBONE, taps=("pre_logits",), pooling: str = "avg",
            batch_size: int = 32, cache_dir=None, dtype: str = "float32", weights="imagenet",
            workers: int = 2, mixed_precision: bool = False, progress: bool | None = None,
            flush_rows: int = 256, views: int = 0, engine: str | None = None, ray_address=None,
            num_workers: int = 1, gpus_per_worker: float = 0, flip: bool = False,
            _ray_crash_marker=None) -> ExtractReport:
    """Compute and cache the codes that ``cache_dir`` lacks for ``data``.

    ``data``: a dataset folder, a list of image paths, or a :class:`Dataset`.
    ``engine``: keras, litert or auto (see :mod:`featx.inference`); default ``$FEATX_ENGINE`` or auto;
    ``ray`` runs the same pipeline on Ray Data (:mod:`featx.engines.ray`; ``ray_address``,
    ``num_workers`` actors, ``gpus_per_worker``).
    ``views``: also cache that many augmented views of every image (the
    study's augmentation, seeded per image and view) in a cache of their own.
    ``flip``: also cache the codes of each image mirrored left-right (flip
    test-time augmentation; one more view, in a cache of its own).
    Returns a report; read the codes with :func:`load_features`.
    """
    if batch_size < 1:
        raise FeatxError(f"expected a positive number, got {batch_size}", param="batch_size")
    if views < 0:
        raise FeatxError(f"expected 0 or more, got {views}", param="views")
    spec = get_backbone(backbone)
    taps = _check_taps(spec, taps)
    config = extractor_config(backbone, pooling, dtype, weights, mixed_precision)
    dataset = _as_dataset(data)
    cache = FeatureCache(cache_path(cache_dir or default_cache_dir(), config), config)
    start = time.perf_counter()
    hashed = _hash_files(dataset.paths)
    report = ExtractReport(cache.path, dataset, [k for k, _ in hashed])
    report.failures = [(p, err) for p, (k, err) in zip(dataset.paths, hashed) if k is None]

    runner = None
    engine = engine or os.environ.get("FEATX_ENGINE", "auto")
    if (views or flip) and engine == "ray":
        raise FeatxError("--views: augmented views run on the local engine; extract them without --engine ray")

    def get_runner():
        nonlocal runner
        if runner is None:
            runner = make_engine(spec, taps, lambda: _feature_model(spec, taps, pooling, weights, mixed_precision),
                                 config, batch_size, "keras" if mixed_precision else engine, cache.path.parent)
        return runner

    with cache:
        cache.commit()  # fold in rows a killed run left in the journal
        present = {t: cache.keys(t) for t in taps}
        todo: dict[str, tuple] = {}
        for path, key in zip(dataset.paths, report.keys):
            if key is not None and key not in todo and any(key not in present[t] for t in taps):
                todo[key] = (path, None)
        report.cached = sum(1 for k in report.keys if k is not None and k not in todo)
        if todo:
            if pooling == "none":
                _warn_if_large(spec, taps)
            if engine == "ray":
                from featx.engines.ray import extract_ray

                failures = extract_ray(dataset, spec, taps, pooling, dtype, weights, cache,
                                       [(k, p) for k, (p, _) in todo.items()], batch_size, ray_address, num_workers,
                                       gpus_per_worker, crash_marker=_ray_crash_marker)
                runner = _RayName()
            else:
                if progress_enabled(progress):  # building the network takes seconds before the bar moves
                    print(f"featx: extracting {len(todo)} images with {spec.name}; loading the network",
                          file=sys.stderr, flush=True)
                failures = _run(spec, get_runner(), taps, list(todo.items()), cache, batch_size, workers,
                                progress, flush_rows, dtype)
            bad = {str(p) for p, _ in failures}
            report.failures += failures
            report.computed = len(todo) - len(failures)
            report.keys = [None if str(p) in bad else k for p, k in zip(dataset.paths, report.keys)]
            provenance = {"featx": __version__, "engine": runner.name, **_versions()}
            cache.commit(provenance=provenance, failures=[[str(p), r] for p, r in report.failures])
    if views:
        vcache = FeatureCache(cache_path(cache.path.parent, views_config(config)), views_config(config))
        with vcache:
            vcache.commit()
            present = {t: vcache.keys(t) for t in taps}
            todo = {}
            for path, key in zip(dataset.paths, report.keys):
                for v in range(1, views + 1) if key is not None else ():
                    vk = view_key(key, v)
                    if vk not in todo and any(vk not in present[t] for t in taps):
                        todo[vk] = (path, view_seed(key, v))
            if todo:
                _run(spec, get_runner(), taps, list(todo.items()), vcache, batch_size, workers, progress,
                     flush_rows, dtype)
                report.computed_views = len(todo)
                vcache.commit(provenance={"featx": __version__, "engine": runner.name, **_versions()})
    if flip:
        fcache = FeatureCache(cache_path(cache.path.parent, flip_config(config)), flip_config(config))
        with fcache:
            fcache.commit()
            present = {t: fcache.keys(t) for t in taps}
            todo = {k: (p, FLIP) for p, k in zip(dataset.paths, report.keys)
                    if k is not None and any(k not in present[t] for t in taps)}
            if todo:
                _run(spec, get_runner(), taps, list(todo.items()), fcache, batch_size, workers, progress,
                     flush_rows, dtype)
                report.computed_views += len(todo)
                fcache.commit(provenance={"featx": __version__, "engine": runner.name, **_versions()})
    report.seconds = time.perf_counter() - start
    report.engine = runner.name if runner is not None else None
    return report


def progress_enabled(progress: bool | None) -> bool:
    """Whether to show progress: ``progress`` when given, else only when stderr is a terminal."""
    if progress is not None:
        return bool(progress)
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class _RayName:
    name = "ray"


def _versions() -> dict:
    keras = _tf.keras()
    import tensorflow as tf

    return {"keras": keras.__version__, "tensorflow": tf.__version__, "device": "GPU" if _tf.gpu_available() else "CPU"}


def _warn_if_large(spec, taps):
    for t in taps:
        tap = spec.tap(t)
        side = -(-spec.input_size // tap.stride)
        if tap.name not in ("pre_logits", "logits") and side * side * tap.channels > LARGE_FLAT_DIM:
            print(f"featx: warning: pooling 'none' stores {side * side * tap.channels:,} numbers per image "
                  f"for tap {t}; consider --pooling avg", file=sys.stderr)


def _feature_model(spec, taps, pooling, weights, mixed_precision):
    keras = _tf.keras()

    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return spec.feature_model(taps, pooling, weights)
    finally:
        if mixed_precision:
            keras.mixed_precision.set_global_policy("float32")


def _load_for_network(spec, path: Path, seed: int | None = None, augment_layers=None) -> np.ndarray:
    """Decoded and resized to the network input; an augmented view when ``seed`` is given."""
    image = decode(read_bytes(path), str(path), min_side=spec.input_size)
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise ImageError(f"{path}: {image.shape[1]}x{image.shape[0]} pixels is too small to classify")
    image = spec.resize(image)
    if isinstance(seed, str) and seed == FLIP:
        return np.ascontiguousarray(image[:, ::-1])
    if seed is not None:
        from featx.augment import augment_view

        image = augment_view(image, seed, augment_layers)
    return image


def load_network_inputs(spec, paths, workers: int = 2) -> np.ndarray:
    """Decode and resize ``paths`` (uint8, N x size x size x 3), in a thread pool."""
    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        return np.stack(list(pool.map(lambda p: _load_for_network(spec, p), paths)))


def _run(spec, runner, taps, items, cache, batch_size, workers, progress, flush_rows, dtype):
    """Decode in threads, infer in fixed-shape batches, journal rows as they finish."""
    from tqdm import tqdm

    failures = []
    pending = {t: ([], []) for t in taps}
    pending_rows = 0
    last_flush = time.monotonic()
    size = spec.input_size
    batch = np.zeros((batch_size, size, size, 3), dtype=np.uint8)
    batch_keys: list[str] = []

    def flush():
        nonlocal pending_rows, last_flush
        if pending_rows:
            cache.append({t: TapRows(np.asarray(k, dtype="S32"), np.concatenate(c).astype(dtype))
                          for t, (k, c) in pending.items()})
            for k, c in pending.values():
                k.clear()
                c.clear()
            pending_rows = 0
        last_flush = time.monotonic()

    def infer():
        nonlocal pending_rows
        n = len(batch_keys)
        out = runner.run(spec.normalize(batch))  # always full batches: one shape, one trace
        for t in taps:
            pending[t][0].extend(batch_keys)
            pending[t][1].append(np.asarray(out[t][:n], dtype=np.float32))
        pending_rows += n
        batch_keys.clear()
        if pending_rows >= flush_rows or time.monotonic() - last_flush > 30:
            flush()

    augment_layers = None
    if any(seed is not None and not isinstance(seed, str) for _, (_, seed) in items):
        from featx.augment import augmentation_layers

        augment_layers = augmentation_layers()
    bar = tqdm(total=len(items), unit="img", disable=None if progress is None else not progress,
               file=sys.stderr, dynamic_ncols=True)
    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        window = collections.deque()
        it = iter(items)

        def submit_next():
            item = next(it, None)
            if item is not None:
                key, (path, seed) = item
                window.append(((key, path), pool.submit(_load_for_network, spec, path, seed, augment_layers)))

        for _ in range(2 * batch_size):
            submit_next()
        while window:
            (key, path), fut = window.popleft()
            submit_next()
            try:
                batch[len(batch_keys)] = fut.result()
                batch_keys.append(key)
            except ImageError as exc:
                failures.append((path, str(exc).removeprefix(f"{path}: ")))
            except Exception as exc:  # noqa: BLE001 - one odd file must not stop a long run
                failures.append((path, f"{type(exc).__name__}: {exc}"))
            bar.update(1)
            if len(batch_keys) == batch_size:
                infer()
        if batch_keys:
            batch[len(batch_keys):] = 0
            infer()
    flush()
    bar.close()
    return failures


def load_features(data, backbone: str = DEFAULT_BACKBONE, taps=("pre_logits",), pooling: str = "avg",
                  cache_dir=None, dtype: str = "float32", weights="imagenet", extract_missing: bool = True,
                  views: int = 0, flip: bool = False, **extract_options) -> Features:
    """The cached codes of ``data`` (extracting what is missing first, by default)."""
    spec = get_backbone(backbone)
    taps = _check_taps(spec, taps)
    dataset = _as_dataset(data)
    if extract_missing:
        report = extract(dataset, backbone, taps, pooling, cache_dir=cache_dir, dtype=dtype, weights=weights,
                         views=views, flip=flip, **extract_options)
        keys, failures, path = report.keys, report.failures, report.cache_file
        config = extractor_config(backbone, pooling, dtype, weights, extract_options.get("mixed_precision", False))
    else:
        config = extractor_config(backbone, pooling, dtype, weights)
        path = cache_path(cache_dir or default_cache_dir(), config)
        hashed = _hash_files(dataset.paths)
        present = FeatureCache(path)
        have = set.intersection(*(present.keys(t) for t in taps))
        failures = [(p, e) for p, (k, e) in zip(dataset.paths, hashed) if k is None]
        failures += [(p, "no cached codes (not extracted yet, or unreadable when it was)")
                     for p, (k, _) in zip(dataset.paths, hashed) if k is not None and k not in have]
        keys = [k if k in have else None for k, _ in hashed]
    ok = [i for i, k in enumerate(keys) if k is not None]
    ok_keys = [keys[i] for i in ok]
    cache = FeatureCache(path, config)
    codes = {t: cache.read(t, ok_keys) for t in taps}
    view_codes = None
    if views:
        vcache = FeatureCache(cache_path(path.parent, views_config(config)))
        vkeys = [view_key(k, v) for k in ok_keys for v in range(1, views + 1)]
        view_codes = {t: vcache.read(t, vkeys).reshape(len(ok_keys), views, -1) for t in taps}
    flipped = None
    if flip:
        flipped = {t: FeatureCache(cache_path(path.parent, flip_config(config))).read(t, ok_keys) for t in taps}
    return Features(
        codes=codes,
        paths=[dataset.paths[i] for i in ok],
        keys=ok_keys,
        labels=dataset.labels[ok] if dataset.labels is not None else None,
        class_names=list(dataset.class_names),
        splits=dataset.splits[ok] if dataset.splits is not None else None,
        cache_file=path,
        config=config,
        failures=failures,
        views=view_codes,
        flipped=flipped,
    )
