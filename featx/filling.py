"""Filling a cache with a network's rows: one step for every kind of row (the image, its mirror, its views).

Why its own module: :func:`featx.extract.extract` decides *what* a dataset needs (hashing, known-bad
files, which kinds of rows); this module does the filling itself, the same way for each :class:`RowKind`:
commit leftovers, find the missing rows, decode in a thread pool while the engine runs the previous
batch, journal every finished batch (a killed run loses at most one batch), commit with provenance.
Memory stays flat in the number of images; a bad image is a reported failure, never fatal.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx import __version__, _tf
from featx.augment import STUDY
from featx.cache import FeatureCache, TapRows
from featx.config import ExtractorConfig
from featx.images import ImageError
from featx.preprocess import CHANGED, FLIP, VANISHED, FileChangedError, decode_workers, load_for_network

LARGE_FLAT_DIM = 100_000  # warn when pooling='none' stores more numbers than this per image

#: Test hook: called with each file's path in the decode worker, after the pre-pass hashed it and
#: before the worker reads it (a test swaps the file here).  None in normal use.
BEFORE_DECODE_HOOK = None


AUGMENTATION_ID = STUDY.id  # Keras 1.2.2 semantics (was "study-v1": Keras 3 layers); new id, new views cache


def view_key(key: str, view: int) -> str:
    """Cache key of augmented view ``view`` (1..K) of the image with content key ``key``."""
    return hashlib.blake2b(f"{key}:view{view}".encode(), digest_size=16).hexdigest()


def view_seed(key: str, view: int) -> int:
    return int(view_key(key, view)[:7], 16)


def views_config(config: dict) -> dict:
    """The configuration of a cache holding augmented views: its own file."""
    return {**config, "views": AUGMENTATION_ID}


def flip_config(config: dict) -> dict:
    """The configuration of a cache holding the left-right mirrored view: its own file, same keys."""
    return {**config, "views": FLIP}


@dataclass(frozen=True)
class RunOptions:
    """How missing rows are computed, never what they hold (see :func:`extract`'s parameters of these names):
    one value, as every kind of row is run with the same settings."""

    batch_size: int = 32
    workers: int | None = None
    progress: bool | None = None
    flush_rows: int = 1


@dataclass(frozen=True)
class RowKind:
    """A kind of cache row: which cache holds it, how its rows are keyed and seeded.

    Clean codes, the mirrored view and augmented views are cached by the same :func:`fill`; only this differs.
    ``view``: None (the image as it is, keyed by its content key, in the extractor's cache), ``FLIP`` (mirrored
    left-right, same keys, cache of :func:`flip_config`) or ``AUGMENTATION_ID`` (cache of :func:`views_config`).
    ``count``: rows per image, 1 or the K augmented views (keys :func:`view_key`, seeds :func:`view_seed`).
    """

    view: str | None = None
    count: int = 1

    @property
    def clean(self) -> bool:
        """The image itself: decode failures are remembered and committed, running them is announced."""
        return self.view is None

    def cache_config(self, config: dict) -> dict:
        """The configuration (the cache's key) of the cache holding this kind of row."""
        return config if self.view is None else {**config, "views": self.view}

    def rows(self, paths, keys) -> list[tuple]:
        """(path, content key, row key, seed for :func:`featx.preprocess.load_for_network`) of each row
        of each image; images whose key is None have none."""
        if self.view == AUGMENTATION_ID:
            return [(p, k, view_key(k, v), view_seed(k, v))
                    for p, k in zip(paths, keys) if k is not None for v in range(1, self.count + 1)]
        return [(p, k, k, self.view) for p, k in zip(paths, keys) if k is not None]


CLEAN = RowKind()
FLIPPED = RowKind(FLIP)


def augmented(views: int) -> RowKind:
    """The kind of row of ``views`` augmented views per image."""
    return RowKind(AUGMENTATION_ID, views)


@dataclass
class Filled:
    """What one :func:`fill` found and ran.

    ``todo``: row key -> (path, seed, content key), the missing rows it ran (each row once: copies of a
    file share theirs).  ``skipped``: content key -> reason, missing rows it was told not to run.
    ``failures``: (path, reason, content key to remember as undecodable or None), from the run.
    ``engine``: the name of the engine that ran the rows, None when none were missing.
    """

    todo: dict
    skipped: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    engine: str | None = None


def provenance(engine_name: str) -> dict:
    """What a commit records about how its rows were made: featx's version, the engine, library versions."""
    return {"featx": __version__, "engine": engine_name,
            **_tf.versions("CPU" if engine_name == "litert" else None)}


class LocalRows:
    """Runs missing rows on the local engine, made on first need and shared by every kind of row.

    ``engine``: a name for :func:`featx.engines.make_engine` or an engine already made (it has ``run``);
    ``cache_dir``: where a converted engine is kept; ``calibration``: an int8 config's calibration images
    (:class:`featx.engines.calibration.Calibration`; None: the one stored under its id).
    """

    def __init__(self, config: ExtractorConfig, engine, cache_dir: Path, options: RunOptions, calibration=None):
        self.config, self.engine, self.cache_dir, self.options = config, engine, cache_dir, options
        self.calibration = calibration
        self.runner = engine if hasattr(engine, "run") else None
        self.seconds = 0.0  # spent making the engine (building the network, a conversion, loading)

    @property
    def name(self) -> str:
        return self.runner.name

    def announce(self, count: int) -> None:
        """Before clean rows run: the size warning; a notice, as building the network takes seconds."""
        _warn_if_large(self.config)
        if progress_enabled(self.options.progress):
            print(f"featx: extracting {count} images with {self.config.backbone}; loading the network",
                  file=sys.stderr, flush=True)

    def make(self, count: int):
        """The engine, made on first need for ``count`` rows (LiteRT plans for no more than there are)."""
        if self.runner is None:
            from featx.engines import make_engine

            t0 = time.perf_counter()
            self.runner = make_engine(self.config, min(self.options.batch_size, count), self.engine, self.cache_dir,
                                      calibration=self.calibration)
            self.seconds += time.perf_counter() - t0
        return self.runner

    def run(self, cache: FeatureCache, todo: dict) -> list:
        """Compute and journal the rows of ``todo`` (see :class:`Filled`); returns the failures."""
        o = self.options
        runner = self.make(len(todo))
        return run_batches(self.config, runner, list(todo.items()), cache, min(o.batch_size, len(todo)), o.workers,
                    o.progress, o.flush_rows)


class RayRows:
    """Runs missing clean rows on a Ray cluster (:class:`featx.engines.ray.RayEngine`); views run locally."""

    name = "ray"

    def __init__(self, engine, config: ExtractorConfig, batch_size: int):
        self.engine, self.config, self.batch_size = engine, config, batch_size

    def announce(self, count: int) -> None:
        _warn_if_large(self.config)

    def run(self, cache: FeatureCache, todo: dict) -> list:
        """Compute the rows of ``todo`` on the cluster; failures as :meth:`LocalRows.run` gives them."""
        failures = self.engine.extract(self.config, cache, [(k, p) for k, (p, _, _) in todo.items()],
                                       self.batch_size)
        key_of = {str(p): k for k, (p, _, _) in todo.items()}
        return [(p, r, None if r.startswith(CHANGED) or r.endswith(VANISHED) else key_of.get(str(p)))
                for p, r in failures]


def missing_rows(cache: FeatureCache, kind: RowKind, paths, keys, taps) -> dict:
    """Row key -> (path, seed, content key) of the rows of ``kind`` that ``cache`` lacks for a tap.

    ``paths``, ``keys``: each image's path and content key (None: left out).  In dataset order, each row
    once (copies of a file share theirs); the lookup costs in proportion to these images, not to the cache.
    """
    rows = kind.rows(paths, keys)
    wanted = [row_key for _, _, row_key, _ in rows]
    complete = set.intersection(*(cache.keys(t, among=wanted) for t in taps))  # a row for every tap
    todo: dict[str, tuple] = {}
    for path, key, row_key, seed in rows:
        if row_key not in complete and row_key not in todo:
            todo[row_key] = (path, seed, key)
    return todo


def fill(cache: FeatureCache, kind: RowKind, paths, keys, rows, *, skip=None, record=None) -> Filled:
    """Compute and commit the rows of ``kind`` that ``cache`` lacks for these images; the one filling step.

    First without any lock, from a snapshot: find the missing rows (:func:`missing_rows`).  When every
    row is cached (or known not to decode), nothing waits for a writer: ``record`` is called and the
    rows are read from the snapshot.  Otherwise, under the cache's writer lock (waiting for another
    writer, and saying so on stderr): commit what a killed run left in the journal, find the missing
    rows again, run them with ``rows`` (:class:`LocalRows` or :class:`RayRows`), commit them with
    their provenance.

    ``cache``: the cache of ``kind`` (``kind.cache_config`` of the extractor's key); ``paths``, ``keys``: each
    image's path and content key (None: left out).  ``skip()`` -> {content key: reason}: missing rows not to
    run.  ``record(filled)`` -> failures to commit ([path, reason] each) or None: called after the run
    (also when nothing ran; under the lock when something ran), before the commit.
    """
    filled = _missing(cache, kind, paths, keys, rows, skip)
    if not filled.todo:  # a reader: every row it needs is committed (or journalled)
        if record is not None:
            record(filled)
        return filled
    cache.wait_for_lock()
    try:
        cache.commit()  # fold in rows a killed run left in the journal
        filled = _missing(cache, kind, paths, keys, rows, skip)  # another writer may have done them meanwhile
        if filled.todo:
            if kind.clean:
                rows.announce(len(filled.todo))
            filled.failures = rows.run(cache, filled.todo)
            filled.engine = rows.name
        failures = record(filled) if record is not None else None
        if filled.todo:
            cache.commit(provenance=provenance(filled.engine), failures=failures)
    finally:
        cache.unlock()
    return filled


def _missing(cache: FeatureCache, kind: RowKind, paths, keys, rows, skip) -> Filled:
    """The rows to compute (:func:`missing_rows`), less those ``skip()`` says failed to decode before."""
    filled = Filled(missing_rows(cache, kind, paths, keys, list(rows.config.taps)))
    known_bad = skip() if skip is not None and filled.todo else {}
    filled.skipped = {k: known_bad[k] for k in filled.todo if k in known_bad}
    for key in filled.skipped:
        del filled.todo[key]
    return filled


def progress_enabled(progress: bool | None) -> bool:
    """Whether to show progress: ``progress`` when given, else only when stderr is a terminal."""
    if progress is not None:
        return bool(progress)
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _warn_if_large(config: ExtractorConfig):
    """With pooling 'none', warn when a tap's flattened map holds more than LARGE_FLAT_DIM numbers per image."""
    if config.pooling != "none":
        return
    spec = config.spec
    for t in config.taps:
        tap = spec.tap(t)
        side = -(-spec.input_size // tap.stride)
        if tap.name not in ("pre_logits", "logits") and side * side * tap.channels > LARGE_FLAT_DIM:
            print(f"featx: warning: pooling 'none' stores {side * side * tap.channels:,} numbers per image "
                  f"for tap {t}; consider --pooling avg", file=sys.stderr)


def _load_checked(spec, path, seed, augment_layers, expected_key):
    """:func:`load_for_network` in the decode worker, after the test hook (when one is set)."""
    if expected_key is not None and BEFORE_DECODE_HOOK is not None:
        BEFORE_DECODE_HOOK(path)
    return load_for_network(spec, path, seed, augment_layers, expected_key=expected_key)


def run_batches(config, runner, items, cache, batch_size, workers, progress, flush_rows):
    """Decode in threads, infer in fixed-shape batches, journal every finished batch.

    ``items``: (row key, (path, view seed or None, content key)).  Returns the failures as
    (path, reason, content key to remember as undecodable, or None).
    """
    from tqdm import tqdm

    spec, taps, dtype = config.spec, list(config.taps), config.dtype
    workers = decode_workers(workers, engine_threads=getattr(runner, "threads", 1))
    failures = []
    pending = {t: ([], []) for t in taps}
    pending_rows = 0
    size = spec.input_size
    batch = np.zeros((batch_size, size, size, 3), dtype=np.uint8)
    batch_keys: list[str] = []

    def flush():
        nonlocal pending_rows
        if pending_rows:
            cache.append({t: TapRows(np.asarray(k, dtype="S32"), np.concatenate(c).astype(dtype, copy=False))
                          for t, (k, c) in pending.items()})
            for k, c in pending.values():
                k.clear()
                c.clear()
            pending_rows = 0

    def infer():
        nonlocal pending_rows
        n = len(batch_keys)
        out = runner.run(batch)  # uint8; always full batches: one shape, one plan
        for t in taps:
            pending[t][0].extend(batch_keys)
            pending[t][1].append(np.asarray(out[t][:n], dtype=np.float32))
        pending_rows += n
        batch_keys.clear()
        if pending_rows >= flush_rows:
            flush()

    augment_layers = None
    if any(seed is not None and not isinstance(seed, str) for _, (_, seed, _) in items):
        from featx.augment import augmentation_layers

        augment_layers = augmentation_layers()
    bar = tqdm(total=len(items), unit="img", disable=None if progress is None else not progress,
               file=sys.stderr, dynamic_ncols=True)
    with cf.ThreadPoolExecutor(workers) as pool:
        window = collections.deque()
        it = iter(items)

        def submit_next():
            item = next(it, None)
            if item is not None:
                key, (path, seed, ckey) = item
                window.append(((key, path, seed is None and ckey),
                               pool.submit(_load_checked, spec, path, seed, augment_layers, ckey)))

        for _ in range(2 * batch_size):  # in flight: at most two batches of images
            submit_next()
        while window:
            (key, path, remember), fut = window.popleft()
            submit_next()
            try:
                batch[len(batch_keys)] = fut.result()
                batch_keys.append(key)
            except FileChangedError as exc:
                failures.append((path, str(exc).removeprefix(f"{path}: "), None))
            except ImageError as exc:  # these very bytes do not decode: remembered
                failures.append((path, str(exc).removeprefix(f"{path}: "), remember or None))
            except Exception as exc:  # noqa: BLE001 - one odd file must not stop a long run
                failures.append((path, f"{type(exc).__name__}: {exc}", None))
            bar.update(1)
            if len(batch_keys) == batch_size:
                infer()
        if batch_keys:
            batch[len(batch_keys):] = 0
            infer()
    flush()
    bar.close()
    return failures
