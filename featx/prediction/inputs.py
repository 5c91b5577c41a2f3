"""What to predict: the images given (files, folders, a Dataset) and, when they carry them, their labels."""

from __future__ import annotations

from pathlib import Path

from featx.datasets import Dataset, from_paths, scan
from featx.errors import FeatxError
from featx.names import shown


def prediction_dataset(images) -> Dataset:
    """The images to predict: every image under each folder given, whatever its layout, and each file given.

    Parameters
    ----------
    images : str, Path, list of them, or Dataset

    Returns
    -------
    Dataset
        ``labels`` set only when ``images`` is one folder in which every image lies in a class folder
        (``DATA/<class>/...`` or ``DATA/<split>/<class>/...``); otherwise unlabelled, with the folders that
        hold images in ``folders`` (reported by :func:`folder_notes`, never used as labels).
    """
    if isinstance(images, Dataset):
        return images
    if isinstance(images, (str, Path)):
        images = [images]
    images = list(images)
    if len(images) == 1 and Path(images[0]).is_dir():
        return scan(images[0], every_image=True)
    return from_paths(images)


def folder_notes(dataset: Dataset) -> list[str]:
    """A line for stderr when folders hold images but are not read as labels (some images lie outside them)."""
    if dataset.labels is not None or not dataset.folders:
        return []
    names = ", ".join(shown(f) for f in dataset.folders[:5]) + (" ..." if len(dataset.folders) > 5 else "")
    return [f"every image under the folder is predicted, but not every one lies in a class folder: the folder "
            f"names ({names}) are not read as labels and no accuracy is computed"]


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
