"""File -> network input: the one function every engine and route uses to feed a network.

:func:`load_for_network` reads a file, decodes it at the smallest scale that
still covers the network input, centre-crops and resizes it to the backbone's
input size, and returns uint8 RGB.  Normalisation (uint8 -> the network's
input values) is the engine's job: the LiteRT engine does it inside the
converted graph, the Keras engine with the backbone's ``normalize``.  Only
numpy and OpenCV run here, never TensorFlow.

:func:`decode_workers` sizes the decode thread pool from the cores this
process may use, leaving the engine its share (a rule chosen by measurement: ``DECODE_SHARE``).
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os

import numpy as np

from featx.errors import FeatxError
from featx.images import ImageError, decode, read_bytes

MIN_IMAGE_SIDE = 8  # smaller images carry no usable signal after resizing
FLIP = "flip"  # the view "seed" that asks for the image mirrored left-right
CHANGED = "changed during the run"
VANISHED = "(it was there when the run began)"


class FileChangedError(ImageError):
    """A file's bytes changed (or it vanished) between the pre-pass that hashed it and its decoding."""


def to_network_input(spec, image: np.ndarray, source: str = "<image>") -> np.ndarray:
    """A decoded ``(H, W, 3)`` uint8 RGB image to ``(S, S, 3)`` uint8, S = ``spec.input_size``.

    Raises
    ------
    ImageError
        The image is smaller than ``MIN_IMAGE_SIDE`` pixels on a side.
    """
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise ImageError(f"{source}: {image.shape[1]}x{image.shape[0]} pixels is too small to classify")
    return spec.resize(image)


def load_for_network(spec, path, seed: int | None = None, augment_layers=None,
                     expected_key: str | None = None) -> np.ndarray:
    """Read, decode, centre-crop and resize one image file for ``spec``'s network.

    Parameters
    ----------
    spec : Backbone
        Gives the input size and crop fraction.
    path : str or Path
    seed : int or "flip", optional
        An int: an augmented view (the study's augmentation, seeded; ``augment_layers``
        from :func:`featx.augment.augmentation_layers`).  ``"flip"``: mirrored left-right.
    expected_key : str, optional
        The content key a pre-pass computed: the file is read once here and those very
        bytes are hashed and decoded, so a file that changed in between raises
        :class:`FileChangedError` instead of giving its new pixels to the old key.

    Returns
    -------
    ndarray, shape (S, S, 3), uint8 RGB

    Raises
    ------
    ImageError
        Unreadable, undecodable or too small (:class:`FileChangedError`: changed or gone
        since it was hashed).
    """
    try:
        data = read_bytes(path)
    except ImageError as exc:
        if expected_key is None:
            raise
        raise FileChangedError(f"{exc} {VANISHED}") from None
    if expected_key is not None:
        from featx.cache import content_key  # the cache's key function, the one the pre-pass used

        if content_key(data) != expected_key:
            raise FileChangedError(f"{path}: {CHANGED} (its bytes differ from when it was hashed); "
                                   "run again to extract its new content")
    image = decode(data, str(path), min_side=spec.input_size)
    image = to_network_input(spec, image, str(path))
    if isinstance(seed, str) and seed == FLIP:
        return np.ascontiguousarray(image[:, ::-1])
    if seed is not None:
        from featx.augment import augment_view

        image = augment_view(image, seed, augment_layers)
    return image


def load_network_inputs(spec, paths, workers: int | None = None) -> np.ndarray:
    """Decode and resize ``paths`` in a thread pool: ``(N, S, S, 3)`` uint8.

    ``workers``: decode threads (default: :func:`decode_workers`).
    """
    with cf.ThreadPoolExecutor(decode_workers(workers, engine_threads=0)) as pool:
        return np.stack(list(pool.map(lambda p: load_for_network(spec, p), paths)))


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: The decode pool's floor beside an engine that keeps every core busy (LiteRT runs as many threads as cores):
#: a quarter of the cores.  Measured with scripts/bench_extract.py on 2 cores (docs/int8.md): the default of 1
#: thread was not slower than fixed 1, 2 or 3 threads, float32 and int8 (1.01-1.18x them).  Decoding costs
#: 2.8 CPU ms per image there against 11.3 (float32) and 5.3 (int8) for the network: 20-35 % of the work, so
#: on many cores a single decode thread would starve the network (one thread decodes ~350 img/s).
DECODE_SHARE = 0.25


def decode_workers(requested: int | None = None, engine_threads: int = 1, cores: int | None = None) -> int:
    """How many decode threads to run beside an engine.

    Parameters
    ----------
    requested : int, optional
        An explicit ``--workers``: always wins (must be >= 1).
    engine_threads : int
        Cores the engine keeps busy while it runs a batch (a CPU engine: its
        thread count; a GPU engine: 1, the thread that feeds it).
    cores : int, optional
        Cores available (default :func:`available_cores`).

    Returns
    -------
    int
        ``requested`` if given, else the larger of the cores left beside the engine and
        ``ceil(DECODE_SHARE * cores)``, at least 1.  Beside LiteRT on all cores: 1 thread on 2 or
        4 cores, 2 on 8, 4 on 16; beside a GPU engine: every core but one.

    Raises
    ------
    FeatxError
        ``requested`` is below 1.
    """
    if requested is not None:
        if requested < 1:
            raise FeatxError(f"expected 1 or more, got {requested}", param="workers")
        return int(requested)
    cores = cores or available_cores()
    return max(1, cores - max(0, engine_threads), math.ceil(DECODE_SHARE * cores))
