"""Run a backbone once over a dataset and cache its codes; read them back.

The pipeline: hash every file (the cache key) -> look up what the cache
lacks -> decode and resize those images in a small thread pool while the
network runs on the previous batch -> write each finished batch to the cache's
journal (a killed run loses at most one batch) -> fold them into the HDF5
file at the end.  Nothing is held in memory beyond a few batches, so memory
stays flat in the number of images; bad images are reported, never fatal.

The key of a row is computed from exactly the bytes that were decoded for it:
the decode worker reads the file once and hashes what it read; a file whose
bytes differ from the pre-pass's is skipped as "changed during the run", never
stored under its old key.  A file whose exact bytes failed to decode is
remembered (:mod:`featx.failed`) and not retried unless asked (``retry_failed``).

What is extracted is one :class:`~featx.config.ExtractorConfig` value; how (engine, batch
size, decode threads) are the call's other arguments, and engine-specific options live on the
engine object (for instance :class:`featx.engines.ray.RayEngine`).  Files become network inputs
through :func:`featx.preprocess.load_for_network`, the one function every engine is fed by.
The image's own codes, its mirror and its augmented views are each a :class:`~featx.filling.RowKind`
of row, all cached by one step, :func:`featx.filling.fill`.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx.backbones.registry import DEFAULT_BACKBONE
from featx.cache import FeatureCache, cache_path, content_key, default_cache_dir
from featx.config import ExtractorConfig
from featx.datasets import SPLIT_KEYWORDS, Dataset, Split, SplitSpec, check_classes, discover, from_paths, make_split
from featx.engines.calibration import choose as choose_calibration
from featx.errors import FeatxError
from featx.failed import DecodeFailures
from featx.filling import (AUGMENTATION_ID, CLEAN, FLIPPED, Filled, LocalRows, RayRows, RowKind,
                           RunOptions, augmented, fill, flip_config, progress_enabled, view_key, view_seed,
                           views_config)
from featx.images import ImageError, read_bytes
from featx.preprocess import (CHANGED, MIN_IMAGE_SIDE, VANISHED, FileChangedError, decode_workers,
                              load_network_inputs)

__all__ = ["AUGMENTATION_ID", "CHANGED", "MIN_IMAGE_SIDE", "VANISHED", "ExtractReport",
           "ExtractorConfig", "Features", "FileChangedError", "extract", "extractor_config", "flip_config", "hash_files",
           "image_keys", "load_features", "load_network_inputs", "progress_enabled", "view_key", "view_seed",
           "views_config"]



@dataclass(repr=False)
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
    engine_seconds: float = 0.0  # making the engine: building the network, a one-time conversion, loading
    extractor: ExtractorConfig | None = None  # what was extracted (int8: with its calibration chosen)

    @property
    def images_per_second(self) -> float:
        """Images computed per second of extraction proper (without making the engine: a first run's
        conversion would otherwise read as a slow pipeline)."""
        work = self.seconds - self.engine_seconds
        return self.computed / work if work > 0 else 0.0

    def __repr__(self) -> str:
        return (f"ExtractReport({len(self.dataset)} images: {self.computed} extracted, {self.cached} cached, "
                f"{len(self.failures)} skipped, {self.seconds:.1f}s, cache={str(self.cache_file)!r})")

    def summary(self) -> str:
        text = (f"{len(self.dataset)} images: {self.computed} extracted, {self.cached} already cached, "
                f"{len(self.failures)} skipped; {self.seconds:.1f}s")
        if self.computed:
            text += f" ({self.images_per_second:.1f} img/s, {self.engine}"
            text += f"; engine ready in {self.engine_seconds:.1f}s)" if self.engine_seconds >= 0.05 else ")"
        if self.computed_views:
            text += f"; {self.computed_views} augmented views extracted"
        return text + f"\ncache: {self.cache_file}"


@dataclass(repr=False)
class Features:
    """The cached codes of a dataset, one row per image in the dataset's order.

    Made by :func:`load_features`; images that failed to decode are left out (listed in ``failures``).

    Attributes
    ----------
    X : ndarray of float32, shape (n_images, n_features)
        The codes of every loaded tap, concatenated in tap order (``n_features`` is the sum of the taps'
        code dimensions, e.g. 1280 for mobilenet_v2's ``pre_logits``).  A property: ``f.X``, not ``f.X()``;
        :meth:`matrix` gives the codes of a subset of taps.
    labels : ndarray of str, shape (n_images,), or None
        The class name (folder) of each image, as :func:`featx.sklearn_api.image_paths` returns them;
        None for a folder without class folders.
    y : ndarray of int, shape (n_images,), or None
        The same labels as indices into ``class_names``.
    class_names : list of str
        The classes, in featx's order (sorted folder names): the order of a model's probability columns.
    codes : dict of str to ndarray, shape (n_images, d_tap)
        The codes per tap.
    paths : list of Path, shape (n_images,)
    keys : list of str
        The content key (hash of the file's bytes) of each row.
    split : ndarray of str, shape (n_images,), or None
        'train' / 'val' / 'test' per row: ``featx fit-head``'s stored split (labelled data only).
    split_id : str or None
        The id of that split (every run on it names it).
    X_views : ndarray of float32, shape (n_images, n_views, n_features)
        Codes of the cached augmented views (load with ``views=K``); :meth:`views_matrix` for a subset of taps.
    flipped : dict of str to ndarray, shape (n_images, d_tap), or None
        Codes of each image mirrored left-right (load with ``flip=True``).
    """

    codes: dict  # tap -> (n, d) float32
    paths: list
    keys: list
    y: np.ndarray | None  # class index per row (into class_names)
    class_names: list
    split: np.ndarray | None  # 'train' / 'val' / 'test' per row: fit-head's stored split (labelled data)
    cache_file: Path
    config: dict
    failures: list
    views: dict | None = None  # tap -> (n, K, d): codes of K augmented views per image
    flipped: dict | None = None  # tap -> (n, d): codes of each image mirrored left-right (flip=True)
    split_id: str | None = None
    split_report: Split | None = None  # leakage and label conflicts found while splitting
    given_splits: np.ndarray | None = None  # the split FOLDER of each row, when the dataset has them

    @property
    def labels(self) -> np.ndarray | None:
        """Class name per row, ndarray of str, shape (n_images,); None when the data has no class folders."""
        if self.y is None:
            return None
        return np.asarray(self.class_names, dtype=object)[self.y].astype(str)

    @property
    def splits(self) -> np.ndarray | None:
        """Alias of :attr:`split` (the assigned split, not the folders: see :attr:`given_splits`)."""
        return self.split

    @property
    def X(self) -> np.ndarray:
        """Codes of every loaded tap, concatenated in tap order: ndarray of float32, shape (n_images, n_features)."""
        return self.matrix()

    def matrix(self, taps=None) -> np.ndarray:
        """Codes of ``taps`` (a name or a list; default every loaded tap), concatenated in that order.

        Returns
        -------
        ndarray of float32, shape (n_images, sum of the taps' code dimensions)
        """
        taps = [taps] if isinstance(taps, str) else list(taps or self.codes)
        return np.concatenate([self.codes[t] for t in taps], axis=1) if len(taps) > 1 else self.codes[taps[0]]

    @property
    def X_views(self) -> np.ndarray:
        """Codes of the cached augmented views: ndarray of float32, shape (n_images, n_views, n_features)."""
        return self.views_matrix()

    def views_matrix(self, taps=None) -> np.ndarray:
        """Codes of the augmented views of ``taps`` (default every loaded tap), concatenated on the last axis.

        Returns
        -------
        ndarray of float32, shape (n_images, n_views, sum of the taps' code dimensions)

        Raises
        ------
        FeatxError
            No views were loaded (``load_features(..., views=K)`` after ``featx extract --views K``).
        """
        if not self.views:
            raise FeatxError("no augmented views were loaded; extract with --views K and load with views=K")
        taps = [taps] if isinstance(taps, str) else list(taps or self.views)
        return np.concatenate([self.views[t] for t in taps], axis=2)

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        taps = ", ".join(f"{t}: {c.shape[1]}" for t, c in self.codes.items())
        extra = f", views={next(iter(self.views.values())).shape[1]}" if self.views else ""
        split = f", split_id={self.split_id!r}" if self.split_id else ""
        return (f"Features({len(self)} images, {self.config.get('backbone', '?')} {{{taps}}}, "
                f"{len(self.class_names)} classes{split}{extra}, {len(self.failures)} failed)")


def extractor_config(backbone: str, pooling: str = "avg", dtype: str = "float32", weights="imagenet",
                     mixed_precision: bool = False) -> dict:
    """Everything that changes the numbers in a cache row (the cache file's key), as a dict.

    Same as ``ExtractorConfig(backbone, pooling=..., ...).cache_key()``.
    """
    return ExtractorConfig(backbone, pooling=pooling, dtype=dtype, weights=weights,
                           mixed_precision=mixed_precision).cache_key()


def _as_dataset(data) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return discover(data)
    return from_paths(data)


def _as_config(config, fields: dict) -> ExtractorConfig:
    if isinstance(config, ExtractorConfig):
        if fields:
            raise TypeError(f"extract: give either an ExtractorConfig or its fields, not both ({', '.join(fields)})")
        return config
    if isinstance(config, str):
        fields = {"backbone": config, **fields}
    elif config is not None:
        raise TypeError(f"extract: config must be an ExtractorConfig or a backbone name, got {type(config).__name__}")
    unknown = set(fields) - {"backbone", "taps", "pooling", "dtype", "weights", "mixed_precision", "precision",
                             "calibration"}
    if unknown:
        raise TypeError(f"extract: unexpected arguments {', '.join(sorted(unknown))}")
    return ExtractorConfig(**fields)


def hash_files(paths, workers: int = 4):
    """(content key, None) or (None, reason) for each file, hashed in a thread pool."""
    def one(path):
        try:
            return content_key(read_bytes(path)), None
        except ImageError as exc:
            return None, str(exc)

    with cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, paths))


def image_keys(data) -> tuple[Dataset, list]:
    """The dataset of ``data`` and each image's cache key (None where the file cannot be read)."""
    dataset = _as_dataset(data)
    return dataset, [k for k, _ in hash_files(dataset.paths)]


def extract(data, config: ExtractorConfig | str | None = None, *, cache_dir=None, batch_size: int = 32,
            workers: int | None = None, views: int = 0, engine=None, progress: bool | None = None,
            flush_rows: int = 1, retry_failed: bool = False, flip: bool = False,
            **config_fields) -> ExtractReport:
    """Compute and cache the codes that ``cache_dir`` lacks for ``data``.

    Parameters
    ----------
    data : folder, list of image paths, or Dataset
    config : ExtractorConfig or str, optional
        What to extract; a string is a backbone name.  Instead of a config, its
        fields may be given as keywords (``backbone``, ``taps``, ``pooling``,
        ``dtype``, ``weights``, ``mixed_precision``, ``precision``, ``calibration``).
        ``precision="int8"`` without a calibration: the calibration images are chosen from ``data``
        (:func:`featx.engines.calibration.choose`); ``report.extractor`` holds the config with its id.
    cache_dir : path, optional
        Default ``$FEATX_CACHE`` or ``./cache``.
    batch_size : int
        Images per forward pass (>= 1); fewer new images than that run as one smaller batch.
    workers : int, optional
        Decode threads; default: the cores left beside the engine
        (:func:`featx.preprocess.decode_workers`).
    views : int
        Also cache that many augmented views of every image (the study's
        augmentation, seeded per image and view) in a cache of their own.
    engine : str or engine object, optional
        ``auto``, ``keras``, ``litert`` (:mod:`featx.engines`), ``ray`` or a
        :class:`featx.engines.ray.RayEngine` carrying Ray's options, or an
        already made local engine; default ``$FEATX_ENGINE`` or ``auto``.  With ``"ray"``,
        the former keywords ``ray_address``, ``num_workers``, ``gpus_per_worker`` still work.
    flush_rows : int
        Journal finished rows once at least this many are pending, checked after every
        batch; the default 1 journals every batch, so a killed run loses at most one batch.
    retry_failed : bool
        Also try files whose exact bytes failed to decode in an earlier run (by default
        they are reported as skipped again without loading the network).
    flip : bool
        Also cache the codes of each image mirrored left-right (flip test-time
        augmentation; one more view, in a cache of its own with the same keys).

    Returns
    -------
    ExtractReport
        Read the codes with :func:`load_features`.

    Raises
    ------
    FeatxError
        Bad configuration or option (one line, nothing written), or a class with no training image when the
        folders give the split (:func:`featx.datasets.check_classes`; checked before anything is extracted).
    """
    _check_options(batch_size, views, flush_rows, workers)
    ray_options = _ray_options(config_fields)
    config = _as_config(config, config_fields)
    dataset = _as_dataset(data)
    check_classes(dataset)  # val/Bees beside train/bees: refused before any work, as fit-head refuses it
    engine = _engine(engine, ray_options, views, flip, config.precision)
    folder = cache_dir or default_cache_dir()
    memory = DecodeFailures(folder)
    start = time.perf_counter()
    hashed = hash_files(dataset.paths)
    config, calibration = _calibrated(config, dataset, [k for k, _ in hashed], folder)
    config_key = config.cache_key()
    cache = FeatureCache(cache_path(folder, config_key), config_key)
    report = hashed_report(cache, dataset, hashed)
    report.extractor = config
    local = LocalRows(config, engine, cache.path.parent, RunOptions(batch_size, workers, progress, flush_rows),
                      calibration)
    fill_clean(report, cache, _clean_rows(engine, local, config, batch_size), memory, retry_failed)
    if views:
        fill_views(report, augmented(views), local)
    if flip:
        fill_views(report, FLIPPED, local)
    report.engine_seconds = local.seconds
    report.seconds = time.perf_counter() - start
    return report


def _check_options(batch_size: int, views: int, flush_rows: int, workers: int | None) -> None:
    """Refuse bad numbers before anything is read or written (FeatxError naming the keyword)."""
    if batch_size < 1:
        raise FeatxError(f"expected a positive number, got {batch_size}", param="batch_size")
    if views < 0:
        raise FeatxError(f"expected 0 or more, got {views}", param="views")
    if flush_rows < 1:
        raise FeatxError(f"expected a positive number, got {flush_rows}", param="flush_rows")
    if workers is not None:
        decode_workers(workers)  # validates


def _ray_options(config_fields: dict) -> dict:
    """Pop the former keyword spelling of Ray's options, for callers not yet moved to RayEngine(...)."""
    return {new: config_fields.pop(old) for old, new in (("ray_address", "address"),
                                                         ("num_workers", "num_workers"),
                                                         ("gpus_per_worker", "gpus_per_worker"),
                                                         ("_ray_crash_marker", "crash_marker"))
            if old in config_fields}


def _calibrated(config: ExtractorConfig, dataset: Dataset, keys: list, folder):
    """``config`` with its int8 calibration chosen from ``dataset`` (when int8 and not given) and that
    calibration (stored in ``folder/engines``); float32 or a given calibration: ``(config, None)``."""
    if config.precision != "int8" or config.calibration is not None:
        return config, None
    calibration = choose_calibration(dataset.paths, keys, dataset.splits)
    calibration.save(Path(folder) / "engines")
    return config.calibrated(calibration.id), calibration


def _engine(engine, ray_options: dict, views: int, flip: bool, precision: str = "float32"):
    """The engine asked for (default ``$FEATX_ENGINE`` or ``auto``; ``"ray"`` becomes a RayEngine); FeatxError
    when views or the mirrored view are asked of Ray (they run on the local engine), or int8 of Ray or Keras.
    int8 with ``$FEATX_ENGINE`` unset or ``keras``: ``auto`` (int8 runs on LiteRT, asked for explicitly)."""
    from featx.engines.ray import RayEngine

    if engine is None:
        engine = os.environ.get("FEATX_ENGINE", "auto")
        if precision == "int8" and engine == "keras":
            engine = "auto"
    if precision == "int8" and (engine == "ray" or isinstance(engine, RayEngine)):
        raise FeatxError("--precision int8 runs on the local LiteRT engine; extract without --engine ray")
    if precision == "int8" and engine == "keras":
        raise FeatxError("--precision int8 runs on the LiteRT engine only, not keras; use --engine litert",
                         param="engine")
    if engine == "ray":
        engine = RayEngine(**ray_options)
    if views and isinstance(engine, RayEngine):
        raise FeatxError("--views: augmented views run on the local engine; extract them without --engine ray")
    if flip and isinstance(engine, RayEngine):
        raise FeatxError("--tta flip: the mirrored view runs on the local engine; extract it without --engine ray")
    return engine


def _clean_rows(engine, local: LocalRows, config: ExtractorConfig, batch_size: int):
    """What runs the clean rows: the Ray cluster for a RayEngine, else the local engine."""
    from featx.engines.ray import RayEngine

    return RayRows(engine, config, batch_size) if isinstance(engine, RayEngine) else local


def hashed_report(cache: FeatureCache, dataset: Dataset, hashed: list | None = None) -> ExtractReport:
    """A report holding each image's content key (:func:`hash_files`, unless ``hashed`` gives its result);
    unreadable files are its first failures."""
    hashed = hash_files(dataset.paths) if hashed is None else hashed
    report = ExtractReport(cache.path, dataset, [k for k, _ in hashed])
    report.failures = [(p, err) for p, (k, err) in zip(dataset.paths, hashed) if k is None]
    return report


def fill_clean(report: ExtractReport, cache: FeatureCache, rows, memory: DecodeFailures,
               retry_failed: bool) -> None:
    """Fill ``cache`` with the clean rows; ``report`` gets the counts, the failures and the engine.  Files whose
    exact bytes failed before are skipped (unless ``retry_failed``); new decode failures go into ``memory``."""
    filled = fill(cache, CLEAN, report.dataset.paths, report.keys, rows,
                  skip=None if retry_failed else memory.remembered,
                  record=functools.partial(_record_clean, report, memory, retry_failed))
    report.engine = filled.engine


def _record_clean(report: ExtractReport, memory: DecodeFailures, retry_failed: bool, filled: Filled):
    """The clean fill's bookkeeping before its commit (counts, failures, keys, the decode-failure memory);
    returns the failures to commit ([path, reason] each), None when nothing ran."""
    report.cached = sum(1 for k in report.keys
                        if k is not None and k not in filled.todo and k not in filled.skipped)
    _drop_known_bad(report, filled.skipped)
    if not filled.todo:
        return None
    failed_keys = _drop_failed(report, filled)
    report.computed = len(filled.todo) - len(failed_keys)
    memory.update({k: r for _, r, k in filled.failures if k is not None},
                  succeeded=[k for k in filled.todo if k not in failed_keys] if retry_failed else ())
    return [[str(p), r] for p, r in report.failures]


def _drop_known_bad(report: ExtractReport, known_bad: dict) -> None:
    """Report every file whose bytes failed before (content key -> reason) as skipped; its key becomes None."""
    if known_bad:
        report.failures += [(p, f"{known_bad[k]} (failed the same way before; --retry-failed tries again)")
                            for p, k in zip(report.dataset.paths, report.keys) if k in known_bad]
        report.keys = [None if k in known_bad else k for k in report.keys]


def _drop_failed(report: ExtractReport, filled: Filled) -> set:
    """Report the run's failures, and every copy of a failed file failing with it (their rows do not exist
    either); their keys become None.  Returns the content keys that failed."""
    todo, failures = filled.todo, filled.failures
    failed_paths = {str(fp) for fp, _, _ in failures}
    failed_keys = {key for key, (p, _, _) in todo.items() if str(p) in failed_paths}
    reason = {str(p): r for p, r, _ in failures}
    first = {str(p) for p, _, _ in todo.values()}
    report.failures += [(p, r) for p, r, _ in failures]
    report.failures += [(p, reason[str(todo[k][0])]) for p, k in zip(report.dataset.paths, report.keys)
                        if k in failed_keys and str(p) not in first]
    report.keys = [None if k in failed_keys else k for k in report.keys]
    return failed_keys


def fill_views(report: ExtractReport, kind: RowKind, rows: LocalRows) -> None:
    """Fill the cache of ``kind`` (augmented views or the mirrored view) for the images the clean fill kept."""
    config = kind.cache_config(rows.config.cache_key())
    cache = FeatureCache(cache_path(report.cache_file.parent, config), config)
    filled = fill(cache, kind, report.dataset.paths, report.keys, rows)
    report.computed_views += len(filled.todo)
    report.engine = report.engine or filled.engine


def load_features(data, backbone: str = DEFAULT_BACKBONE, taps=("pre_logits",), pooling: str = "avg",
                  cache_dir=None, dtype: str = "float32", weights="imagenet", *, extract_missing: bool = True,
                  views: int = 0, flip: bool = False, split: bool | SplitSpec = True, **options) -> Features:
    """The cached codes of ``data`` (extracting what is missing first, by default), with fit-head's split.

    Parameters
    ----------
    data : folder, list of paths, or Dataset
    backbone, taps, pooling, dtype, weights : the extractor (see :func:`extract`)
        ``backbone`` may be an :class:`~featx.config.ExtractorConfig` instead (then the others are ignored).
    cache_dir : path, optional
        The cache folder (default ``$FEATX_CACHE`` or ``./cache``); the split is stored there too.
    extract_missing : bool
        Run the backbone on images the cache lacks (else they are reported as failures).
    views : int
        Also load that many cached augmented views per image.
    flip : bool
        Also load (extracting when allowed) the codes of each image mirrored left-right
        (``Features.flipped``, rows aligned with ``codes``).
    split : bool or SplitSpec
        The split, exactly as ``featx fit-head`` makes it (:func:`featx.datasets.make_split`):
        for labelled data ``Features.split`` holds 'train' / 'val' / 'test' per row and
        ``Features.split_id`` its id, the same stored assignment the CLI uses.  True: the default
        :class:`~featx.datasets.SplitSpec`, or the one named by ``val_fraction``, ``test_fraction``,
        ``seed`` in ``options`` (the former keywords).  False: no split, only codes and labels
        (``predict`` on a labelled folder needs no split, and a folder with two images of a class
        could not be split).
    **options
        ``val_fraction``, ``test_fraction``, ``seed`` (see ``split``), ``mixed_precision``, ``precision``,
        ``calibration`` (the extractor's, :class:`~featx.config.ExtractorConfig`), and
        :func:`extract`'s options.

    Returns
    -------
    Features
        Rows in the dataset's order; images that failed are left out and listed in ``failures``.

    Raises
    ------
    FeatxError
        Bad options, or a labelled dataset too small to split with these fractions.
    """
    if isinstance(backbone, ExtractorConfig):
        extractor = backbone
    else:
        extractor = ExtractorConfig(backbone, taps, pooling, dtype, weights, options.pop("mixed_precision", False),
                                    options.pop("precision", "float32"), options.pop("calibration", None))
    spec = _split_spec(split, options)
    taps = list(extractor.taps)
    dataset = _as_dataset(data)
    if extract_missing:
        report = extract(dataset, extractor, cache_dir=cache_dir, views=views, flip=flip, **options)
        keys, failures, path = report.keys, report.failures, report.cache_file
        extractor = report.extractor
    config = extractor.cache_key()
    if not extract_missing:
        keys, failures, path = cached_rows(dataset, extractor, cache_dir)
    ok = [i for i, k in enumerate(keys) if k is not None]
    ok_keys = [keys[i] for i in ok]
    labels = dataset.labels[ok] if dataset.labels is not None else None
    given = dataset.splits[ok] if dataset.splits is not None else None
    paths = [dataset.paths[i] for i in ok]
    codes = read_codes(FeatureCache(path, config), taps, ok_keys)
    view_codes = read_views(path.parent, config, taps, ok_keys, views) if views else None
    flipped = read_codes(FeatureCache(cache_path(path.parent, flip_config(config))), taps, ok_keys) if flip else None
    made = _make_split(spec, ok_keys, labels, given, paths, dataset.class_names, cache_dir or default_cache_dir())
    return Features(codes=codes, paths=paths, keys=ok_keys, y=labels, class_names=list(dataset.class_names),
                    split=made.assignment if made is not None else None, cache_file=path, config=config,
                    failures=failures, views=view_codes, flipped=flipped,
                    split_id=made.id if made is not None else None, split_report=made, given_splits=given)


def _split_spec(split, options: dict) -> SplitSpec | None:
    """The split :func:`load_features` makes (None: none), taking the former keywords out of ``options``;
    FeatxError for a fraction outside [0, 1), TypeError for a SplitSpec given with those keywords."""
    if isinstance(split, SplitSpec):
        return SplitSpec.resolve(split, options)
    if not isinstance(split, bool):
        raise FeatxError(f"expected True, False or a SplitSpec, got {split!r}", param="split")
    if split:
        return SplitSpec.take(options)
    for name in SPLIT_KEYWORDS:  # no split: accepted and unused, as before
        options.pop(name, None)
    return None


def _make_split(spec: SplitSpec | None, keys, labels, given, paths, class_names, store) -> Split | None:
    """fit-head's stored split of these rows (:func:`featx.datasets.make_split`); None without a spec,
    labels or rows."""
    if spec is None or labels is None or not keys:
        return None
    return make_split(keys, labels, given, spec.val_fraction, spec.test_fraction, spec.seed, store=store,
                      class_names=class_names, paths=paths)


def cached_rows(dataset: Dataset, extractor: ExtractorConfig, cache_dir=None) -> tuple[list, list, Path]:
    """Without extracting: each image's content key where every tap has a cached row, else None.

    Returns
    -------
    (keys, failures, cache folder)
        ``keys`` aligned with ``dataset.paths``; ``failures`` (path, reason) for the unreadable files,
        then for those the cache lacks.
    """
    path = cache_path(cache_dir or default_cache_dir(), extractor.cache_key())
    hashed = hash_files(dataset.paths)
    present = FeatureCache(path)
    have = set.intersection(*(present.keys(t, among=[k for k, _ in hashed]) for t in extractor.taps))
    failures = [(p, e) for p, (k, e) in zip(dataset.paths, hashed) if k is None]
    failures += [(p, "no cached codes (not extracted yet, or unreadable when it was)")
                 for p, (k, _) in zip(dataset.paths, hashed) if k is not None and k not in have]
    return [k if k in have else None for k, _ in hashed], failures, path


def read_codes(cache: FeatureCache, taps, keys) -> dict:
    """tap -> (n, d) codes of ``keys`` (in their order) from ``cache``."""
    return {t: cache.read(t, keys) for t in taps}


def read_views(folder: Path, config: dict, taps, keys, views: int) -> dict:
    """tap -> (n, views, d) codes of each image's augmented views, from the views cache in ``folder``."""
    cache = FeatureCache(cache_path(folder, views_config(config)))
    view_keys = [view_key(k, v) for k in keys for v in range(1, views + 1)]
    return {t: cache.read(t, view_keys).reshape(len(keys), views, -1) for t in taps}
