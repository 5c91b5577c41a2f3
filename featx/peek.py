"""The study's quick check: ImageNet top-K classes for a few images."""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone
from featx.errors import FeatxError
from featx.images import load_image


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    text = resources.files("featx").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    return tuple(text.splitlines())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


PEEK_BATCH = 8


def peek(paths, backbone: str = DEFAULT_BACKBONE, top: int = 5, weights="imagenet", engine: str = "auto",
         cache_dir=None):
    """Return, per image, ``[(class_index, class_name, probability), ...]`` best first.

    ``engine="auto"`` uses LiteRT only when its conversion is already in the cache
    (no TensorFlow then), else Keras: for a handful of images a conversion (once per
    configuration) costs more than it saves.  ``litert`` converts when needed.
    """
    from featx.cache import default_cache_dir
    from featx.config import ExtractorConfig
    from featx.engines import make_engine
    from featx.preprocess import to_network_input

    if top < 1:
        raise FeatxError(f"expected a positive number, got {top}", param="top")
    spec = get_backbone(backbone)
    if "logits" not in spec.tap_names:
        raise FeatxError(f"{backbone} has no ImageNet classifier to peek with", param="backbone")
    config = ExtractorConfig(backbone, ["logits"], weights=weights)
    batch = np.stack([to_network_input(spec, load_image(p, min_side=spec.input_size), str(p)) for p in paths])
    runner = make_engine(config, PEEK_BATCH, engine, cache_dir or default_cache_dir(), convert=False)
    logits = []
    for start in range(0, len(batch), PEEK_BATCH):  # fixed-size batches, the last one padded
        chunk = batch[start : start + PEEK_BATCH]
        padded = np.concatenate([chunk, np.zeros((PEEK_BATCH - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        logits.append(runner.run(padded)["logits"][: len(chunk)])
    probs = softmax(np.concatenate(logits).astype(np.float64))
    names = imagenet_classes()
    results = []
    for row in probs:
        order = np.argsort(-row)[:top]
        results.append([(int(i), names[i], float(row[i])) for i in order])
    return results
