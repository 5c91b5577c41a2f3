"""Inference engines: the same feature model run by Keras, LiteRT or Ray.

Every local engine has one small interface::

    engine.name        # "keras" or "litert" (recorded in the cache's provenance)
    engine.batch_size  # the batch size it is planned for (any size works), None: no plan
    engine.run(batch)  # (B, S, S, 3) uint8 RGB -> {tap: (B, d) codes}

Inputs come from :func:`featx.preprocess.load_for_network`; normalisation is
the engine's business.  :func:`make_engine` picks one: ``auto`` is LiteRT when
it is installed and no GPU is visible (on a GPU, Keras with its
mixed-precision option is faster).  On another Keras backend than
TensorFlow (``KERAS_BACKEND=jax`` or ``torch``), ``auto`` uses LiteRT only
when its conversion already exists: converting needs TensorFlow.  Ray (:mod:`featx.engines.ray`) is not a
local engine but a scale-out runner built on these.
"""

from __future__ import annotations

import sys

from featx import _tf
from featx.engines.keras import KerasEngine
from featx.engines.litert import (INT8_MIN_COSINE, PARITY_ATOL, LiteRTEngine, is_converted, litert_available,
                                  load_or_convert, load_or_convert_int8)
from featx.errors import FeatxError
from featx.vocabulary import ENGINES


__all__ = ["ENGINES", "INT8_MIN_COSINE", "PARITY_ATOL", "KerasEngine", "LiteRTEngine", "is_converted", "litert_available", "make_engine",
           "uses_litert"]


def uses_litert(engine: str = "auto", gpu: bool | None = None) -> bool:
    """Whether ``engine`` resolves to LiteRT here.

    Raises
    ------
    FeatxError
        Unknown engine, or ``litert`` asked for but not installed.
    """
    if engine not in ENGINES:
        raise FeatxError(f"expected one of {', '.join(ENGINES)}, got {engine!r}", param="engine")
    if engine == "litert" and not litert_available():
        raise FeatxError("litert: LiteRT is not installed; run: pip install ai-edge-litert", param="engine")
    if engine == "keras":
        return False
    return engine == "litert" or (litert_available() and not (gpu if gpu is not None else _tf.gpu_available()))


def make_engine(config, batch_size: int, engine: str = "auto", cache_dir=None, gpu: bool | None = None,
                warn=None, model=None, threads: int | None = None, announce=None, convert: bool = True,
                calibration=None):
    """The engine to run ``config``'s network with.

    Parameters
    ----------
    config : ExtractorConfig
    batch_size : int
        Batch size the engine will mostly be given (LiteRT plans for it; one
        conversion serves every batch size).
    engine : {"auto", "keras", "litert"}
    cache_dir : path, optional
        The cache folder, where converted models are stored; without it, Keras runs.
    gpu : bool, optional
        Override GPU detection (default: :func:`featx._tf.gpu_available`).
    warn, announce : callable(str), optional
        One-line warnings / progress notes (default: stderr).
    model : keras.Model, optional
        An already built feature model for ``config``.
    threads : int, optional
        LiteRT interpreter threads (default: the cores available).
    convert : bool
        With ``engine="auto"``: False uses LiteRT only when its checked
        conversion already exists (no one-time conversion; Keras otherwise).  Not for int8.
    calibration : featx.engines.calibration.Calibration, optional
        int8: the images ``config.calibration`` names (default: the record stored in the cache).

    Returns
    -------
    KerasEngine or LiteRTEngine

    Raises
    ------
    FeatxError
        Unknown engine, or LiteRT asked for but not installed; int8 on another engine than LiteRT or
        without a cache folder, or its conversion or parity check failed.
    """
    build = (lambda: model) if model is not None else config.feature_model
    if getattr(config, "precision", "float32") == "int8":
        if engine not in ("auto", "litert"):
            raise FeatxError(f"--precision int8 runs on the LiteRT engine only, not {engine}; use --engine litert",
                             param="engine")
        if not litert_available():
            raise FeatxError("--precision int8 needs LiteRT; run: pip install ai-edge-litert", param="precision")
        if cache_dir is None:
            raise FeatxError("--precision int8 needs a cache folder to keep its converted model", param="cache")
        return load_or_convert_int8(config, batch_size, cache_dir, build, calibration, threads, announce)
    if config.mixed_precision:
        engine = "keras"
    if not uses_litert(engine, gpu) or cache_dir is None:
        return KerasEngine(config, model)
    if not is_converted(config, cache_dir) and (not convert or _tf.backend() != "tensorflow"):
        if engine == "auto":  # converting needs TensorFlow as the backend; another backend runs Keras itself
            return KerasEngine(config, model)
        _tf.require_tensorflow("converting a network for the LiteRT engine")
    warn = warn or (lambda msg: print(f"featx: warning: {msg}", file=sys.stderr))
    return load_or_convert(config, batch_size, cache_dir, build,
                           warn, threads, announce)
