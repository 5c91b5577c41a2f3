"""What to predict: the images given (files, folders, a Dataset) and, when they carry them, their labels."""

from __future__ import annotations

from pathlib import Path

from featx.datasets import Dataset, discover, from_paths
from featx.errors import FeatxError


def prediction_dataset(images) -> Dataset:
    """The images to predict: one folder is discovered (its class folders become labels); anything else
    is a list of files and folders, unlabelled.

    Parameters
    ----------
    images : str, Path, list of them, or Dataset

    Returns
    -------
    Dataset
        ``labels`` set only when ``images`` is one folder of class folders.
    """
    if isinstance(images, Dataset):
        return images
    if isinstance(images, (str, Path)):
        images = [images]
    images = list(images)
    if len(images) == 1 and Path(images[0]).is_dir():
        return discover(images[0])
    return from_paths(images)


def true_labels(features, classes):
    """Class name per row of ``features`` when its dataset is labelled with classes the model knows,
    else ``None`` (folder names that are not the model's classes are not labels)."""
    if features.labels is None or not set(features.class_names) <= {str(c) for c in classes}:
        return None
    return features.labels


def check_top(top, n_classes: int) -> None:
    """``top`` is None or in 1..n_classes, else a FeatxError naming ``top``."""
    if top is not None and not 1 <= top <= n_classes:
        raise FeatxError(f"expected 1..{n_classes}, got {top}", param="top")
