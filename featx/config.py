"""The extractor's configuration: one value passed down from the command to the engine.

An :class:`ExtractorConfig` names everything that decides the numbers an
extraction produces -- backbone, weights, taps, pooling, storage dtype,
mixed precision -- and is validated once, where it is made.  The backbone
spec is looked up once, at construction, and travels with the value
(``config.spec``), so the layers below never look it up again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from featx.backbones.registry import DEFAULT_BACKBONE, Backbone, get_backbone
from featx.errors import FeatxError
from featx.vocabulary import DTYPES, POOLINGS, PRECISIONS, check_choice

#: Backbones whose int8 codes cost the heads more than the goal (docs/int8.md): name -> the measurement.
#: ``precision="int8"`` is refused for them, with that measurement in the message.
INT8_REFUSED: dict[str, str] = {
    "mobilenet_v2": "heads on its int8 codes lost 2.5 points of accuracy on cifar10_3k, 1.0 on flowers5 and 0.8 "
                    "on ants_bees (scripts/bench_int8.py; the goal is within 0.5)",
}


@dataclass(frozen=True)
class ExtractorConfig:
    """Backbone, weights, taps, pooling and dtype of one extraction (immutable, validated).

    Parameters
    ----------
    backbone : str
        A registry name (``featx backbones``).
    taps : str or sequence of str
        Tap names of that backbone; duplicates are dropped, order kept.
    pooling : {"avg", "max", "avgmax", "none"}
    dtype : {"float32", "float16"}
        How codes are stored in the cache (the network always computes float32).
    weights : "imagenet", a weights file path, or None (random, seeded)
    mixed_precision : bool
        float16 compute (GPU); changes the numbers, so it is part of the key.
    precision : {"float32", "int8"}
        The network's arithmetic: float32, or full-integer int8 on the LiteRT engine, calibrated on
        real images of the data (:mod:`featx.engines.calibration`, docs/int8.md).
    calibration : str, optional
        int8 only: the identity of the calibration images (:attr:`Calibration.id
        <featx.engines.calibration.Calibration.id>`, 16 hex digits).  None: chosen from the data by
        :func:`featx.extract.extract`; a bundle records it, so prediction uses the very same int8 model.

    Raises
    ------
    FeatxError
        Unknown backbone, tap, pooling, dtype or precision, no taps, int8 with mixed precision, a
        calibration without int8, or int8 for a backbone in ``INT8_REFUSED``.
    """

    backbone: str = DEFAULT_BACKBONE
    taps: tuple = ("pre_logits",)
    pooling: str = "avg"
    dtype: str = "float32"
    weights: object = "imagenet"
    mixed_precision: bool = False
    precision: str = "float32"
    calibration: str | None = None
    spec: Backbone = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        spec = get_backbone(self.backbone)
        taps = [self.taps] if isinstance(self.taps, str) else list(self.taps)
        if not taps:
            raise FeatxError("give at least one tap", param="taps")
        for t in taps:
            spec.tap(t)
        check_choice(self.pooling, POOLINGS, "pooling")
        check_choice(self.dtype, DTYPES, "dtype")
        object.__setattr__(self, "taps", tuple(dict.fromkeys(taps)))
        object.__setattr__(self, "backbone", spec.name)
        object.__setattr__(self, "mixed_precision", bool(self.mixed_precision))
        object.__setattr__(self, "spec", spec)
        self._check_precision()

    def _check_precision(self) -> None:
        check_choice(self.precision, PRECISIONS, "precision")
        if self.precision != "int8":
            if self.calibration is not None:
                raise FeatxError("a calibration is for --precision int8 only", param="calibration")
            return
        if self.mixed_precision:
            raise FeatxError("int8 runs on the LiteRT engine, mixed precision on Keras: choose one",
                             param="precision")
        if self.spec.name in INT8_REFUSED:
            raise FeatxError(f"int8 is off for {self.spec.name}: {INT8_REFUSED[self.spec.name]}; use float32, or "
                             "a backbone int8 keeps accuracy for (docs/int8.md: efficientnet_lite0)",
                             param="precision")
        c = self.calibration
        if c is not None and not (isinstance(c, str) and len(c) == 16 and all(ch in "0123456789abcdef" for ch in c)):
            raise FeatxError(f"expected 16 hex digits (a calibration id), got {c!r}", param="calibration")

    def calibrated(self, calibration: str) -> "ExtractorConfig":
        """This configuration with its int8 calibration's identity set."""
        return dataclasses.replace(self, calibration=calibration)

    def cache_key(self) -> dict:
        """Everything that changes the numbers in a cache row (the cache file's key; taps excluded:
        one cache file holds every tap).  Hashes a weights file once per process.

        float32's key is the key of every cache made before int8 existed (no new entries);
        int8 adds ``precision`` and ``calibration``, so its rows live in a cache of their own.

        Raises
        ------
        FeatxError
            int8 whose calibration is not chosen yet (:func:`featx.extract.extract` chooses it).
        """
        spec = self.spec
        if self.precision == "int8" and self.calibration is None:
            raise FeatxError("int8: the calibration is not chosen yet; extract the data first", param="calibration")
        key = {
            "backbone": spec.name,
            "weights": spec.weights_id(self.weights),
            "input_size": spec.input_size,
            "crop_fraction": round(spec.crop_fraction, 6),
            "preprocessing": spec.normalizer.__name__,
            "pooling": self.pooling,
            "dtype": self.dtype,
            "mixed_precision": self.mixed_precision,
            "views": 0,
        }
        if self.precision != "float32":
            key.update(precision=self.precision, calibration=self.calibration)
        return key

    def feature_model(self):
        """The Keras feature model (imports TensorFlow): network input to ``{tap: codes}``."""
        from featx import _tf

        keras = _tf.keras()
        if self.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            return self.spec.feature_model(list(self.taps), self.pooling, self.weights)
        finally:
            if self.mixed_precision:
                keras.mixed_precision.set_global_policy("float32")
