"""Find the images of a dataset folder, their labels and any given splits.

Three layouts are understood:

* ``DATA/<class>/...images``: labels are the sorted folder names;
* ``DATA/{train,val|validate|validation,test}/<class>/...``: splits given by the folders;
* ``DATA/...images`` with no class folders: unlabelled (for prediction).

Hidden files and files that are not images are skipped and counted; symbolic
links are followed, but a link that leads back into a folder being walked (a cycle) is not.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx.errors import FeatxError
from featx.images import is_image_path

SPLIT_FOLDERS = {"train": "train", "val": "val", "validate": "val", "validation": "val", "test": "test"}


@dataclass
class Dataset:
    root: Path
    paths: list[Path]
    labels: np.ndarray | None  # int index into class_names, or None when unlabelled
    class_names: list[str]
    splits: np.ndarray | None = None  # 'train' / 'val' / 'test' per image when the folders say
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return self.labels is not None


def _walk_images(folder: Path, skipped: Counter) -> list[Path]:
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            skipped["symlink cycle"] += 1
            continue
        seen.add(real)
        hidden = [d for d in dirnames if d.startswith(".")]
        skipped["hidden"] += len(hidden)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith("."):
                skipped["hidden"] += 1
            elif not is_image_path(name):
                skipped["not an image"] += 1
            elif not path.is_file():
                skipped["broken link"] += 1
            else:
                found.append(path)
    return found


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def discover(root: str | Path) -> Dataset:
    """Scan ``root`` and return its images in a stable (sorted) order."""
    root = Path(root)
    if not root.exists():
        raise FeatxError(f"{root}: no such folder")
    if root.is_file():
        return from_paths([root])
    skipped: Counter = Counter()
    subdirs = _subdirs(root)
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_FOLDERS]
    if any(d.name.lower() == "train" for d in split_dirs):
        groups = [(SPLIT_FOLDERS[d.name.lower()], c) for d in split_dirs for c in _subdirs(d)]
        loose = [p for d in split_dirs for p in d.iterdir() if p.is_file()]
    else:
        groups = [(None, c) for c in subdirs]
        loose = [p for p in root.iterdir() if p.is_file()]
    if groups:
        skipped["outside class folders"] += sum(1 for p in loose if is_image_path(p) and not p.name.startswith("."))
        class_names = sorted({c.name for _, c in groups})
        index = {n: i for i, n in enumerate(class_names)}
        paths, labels, splits = [], [], []
        for split, folder in groups:
            found = _walk_images(folder, skipped)
            paths += found
            labels += [index[folder.name]] * len(found)
            splits += [split] * len(found)
        has_splits = splits and splits[0] is not None
        dataset = Dataset(root, paths, np.asarray(labels, dtype=np.int64), class_names,
                          np.asarray(splits) if has_splits else None, skipped)
    else:
        dataset = Dataset(root, _walk_images(root, skipped), None, [], None, skipped)
    if not dataset.paths:
        raise FeatxError(f"{root}: no images found (looked for {', '.join(sorted({'.jpg', '.png', '.bmp', '.webp', '.tif'}))})")
    return dataset


def from_paths(paths) -> Dataset:
    """An unlabelled dataset from explicit files (folders are scanned)."""
    out: list[Path] = []
    skipped: Counter = Counter()
    for p in map(Path, paths):
        if p.is_dir():
            sub = discover(p)
            out += sub.paths
            skipped += sub.skipped
        else:
            out.append(p)
    if not out:
        raise FeatxError("no images given")
    return Dataset(Path("."), out, None, [], None, skipped)
