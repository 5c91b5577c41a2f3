"""The labelled codes every training route starts from: one backbone's cached codes with the stored split.

Why here: fit-head, sweep, finetune and advise all need the same thing first -- the codes of a labelled
dataset, extracted when missing, with the split ``fit-head`` stores -- and the same checks (two classes at
least, something decoded). :func:`labelled_codes` is that step.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone
from featx.cache import default_cache_dir
from featx.datasets import Dataset, Split, SplitSpec, check_classes, discover
from featx.errors import FeatxError
from featx.extract import Features, load_features


@dataclass
class LabelledCodes:
    """Codes of a labelled dataset with its stored split.

    ``y``: (n,) str class names; ``split``: (n,) str 'train'/'val'/'test'; rows in the dataset's order,
    images that failed to decode left out (``features.failures``).
    """

    features: Features
    y: np.ndarray  # class names
    split: np.ndarray
    split_id: str
    extract_seconds: float
    name: str  # the dataset folder's name, for outputs and the runs log
    split_report: Split | None = None  # leakage and label conflicts found while splitting

    def part(self, name: str, taps=None, with_views: bool = False):
        """Codes ``(m, d)`` and labels ``(m,)`` of one split; ``with_views`` adds every augmented view as a row."""
        mask = self.split == name
        X, y = self.features.matrix(taps)[mask], self.y[mask]
        if with_views and self.features.views:
            V = self.features.views_matrix(taps)[mask]  # (n, K, d)
            X = np.concatenate([X, V.reshape(-1, V.shape[-1])])
            y = np.concatenate([y, np.repeat(y, V.shape[1])])
        return X, y


def check_trainable(dataset: Dataset) -> None:
    """A dataset a classifier can be trained on: class folders, at least two of them, each with a training image.

    A class missing from a held-out folder is a warning on stderr (:func:`featx.datasets.check_classes`).

    Raises
    ------
    FeatxError
        No class folders, a single class (naming the empty folders that were left out), or a class with no
        training image.
    """
    if not dataset.labelled:
        raise FeatxError(f"{dataset.root}: no class folders; training needs DATA/<class>/<images>")
    if len(dataset.class_names) < 2:
        empty = dataset.empty_folders
        raise FeatxError(
            f"{dataset.root}: found 1 class ({dataset.class_names[0]!r}); a classifier needs at least 2 class folders"
            + (f" (left out, holding no images: {', '.join(empty)})" if empty else "")
        )
    for line in check_classes(dataset):
        print(f"featx: warning: {line}", file=sys.stderr)


def labelled_codes(data, backbone=DEFAULT_BACKBONE, taps=("pre_logits",), pooling="avg", dtype="float32",
                   weights="imagenet", cache_dir=None, *, views: int = 0, flip: bool = False,
                   split: SplitSpec | None = None, **options) -> LabelledCodes:
    """The cached codes of a labelled dataset (extracting what is missing) with its stored split.

    Parameters
    ----------
    data : str, Path or Dataset
    backbone, taps, pooling, dtype, weights : the extractor (:class:`featx.config.ExtractorConfig`)
    cache_dir : path, optional
        Default ``$FEATX_CACHE`` or ``./cache``.
    views, flip : also load that many augmented views / the mirrored view (:func:`featx.extract.load_features`)
    split : SplitSpec, optional
        The split's parameters; ``val_fraction``, ``test_fraction`` and ``seed`` may instead be given as
        keywords in ``options`` (the former spelling).
    **options
        Extraction options passed on to :func:`featx.extract.extract` (``engine``, ``batch_size``, ...).

    Raises
    ------
    FeatxError
        Not a labelled dataset of two classes or more, or no image could be decoded.
    """
    split = SplitSpec.resolve(split, options)
    cache_dir = Path(cache_dir or default_cache_dir())
    dataset = data if isinstance(data, Dataset) else discover(data)
    check_trainable(dataset)
    start = time.perf_counter()
    feats = load_features(dataset, backbone, taps, pooling, cache_dir, dtype, weights, views=views, flip=flip,
                          split=split, **options)
    seconds = time.perf_counter() - start
    if feats.split is None:
        first = f" (first: {feats.failures[0][0]}: {feats.failures[0][1]})" if feats.failures else ""
        raise FeatxError(f"{dataset.root}: none of its {len(dataset)} images could be decoded{first}")
    for line in feats.split_report.warnings():
        print(f"featx: warning: {line}", file=sys.stderr)
    y = feats.labels
    return LabelledCodes(feats, y, feats.split, feats.split_id, seconds, Path(dataset.root).resolve().name,
                         feats.split_report)


def backbone_list(backbone) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (order kept, repeats dropped, each name checked)."""
    names = backbone.split(",") if isinstance(backbone, str) else list(backbone)
    names = list(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    if not names:
        raise FeatxError("give at least one backbone name", param="backbone")
    for n in names:
        get_backbone(n)
    return names


def common_rows(codes_list: list[LabelledCodes]) -> list[np.ndarray]:
    """Row indices into each backbone's codes for the images every backbone could read, in the first's order."""
    if len(codes_list) == 1:
        return [np.arange(len(codes_list[0].y))]
    index = [{k: i for i, k in enumerate(c.features.keys)} for c in codes_list]
    keys = [k for k in codes_list[0].features.keys if all(k in ix for ix in index[1:])]
    return [np.asarray([ix[k] for k in keys], dtype=int) for ix in index]


def accuracy_of(model, X, y) -> float | None:
    """Plain accuracy of ``model`` on ``(X, y)``; None when there is no row."""
    return float((model.predict(X) == y).mean()) if len(y) else None
