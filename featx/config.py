"""The extractor's configuration: one value passed down from the command to the engine.

An :class:`ExtractorConfig` names everything that decides the numbers an
extraction produces -- backbone, weights, taps, pooling, storage dtype,
mixed precision -- and is validated once, where it is made.  The backbone
spec is looked up once, at construction, and travels with the value
(``config.spec``), so the layers below never look it up again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from featx.backbones.registry import DEFAULT_BACKBONE, Backbone, get_backbone
from featx.errors import FeatxError
from featx.vocabulary import DTYPES, POOLINGS, check_choice


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

    Raises
    ------
    FeatxError
        Unknown backbone, tap, pooling or dtype, or no taps.
    """

    backbone: str = DEFAULT_BACKBONE
    taps: tuple = ("pre_logits",)
    pooling: str = "avg"
    dtype: str = "float32"
    weights: object = "imagenet"
    mixed_precision: bool = False
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

    def cache_key(self) -> dict:
        """Everything that changes the numbers in a cache row (the cache file's key; taps excluded:
        one cache file holds every tap).  Hashes a weights file once per process."""
        spec = self.spec
        return {
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
