"""Find the images of a dataset folder, their labels and any given splits.

Three layouts are understood:

* ``DATA/<class>/...images``: labels are the sorted folder names;
* ``DATA/{train,val|validate|validation,test}/<class>/...``: splits given by the folders;
* ``DATA/...images`` with no class folders: unlabelled (for prediction).

Hidden files and files that are not images are skipped and counted; symbolic
links are followed, but a link that leads back into a folder being walked (a cycle) is not.
"""

from __future__ import annotations

import hashlib
import json
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


# ---- splits ---------------------------------------------------------------------------

def split_id(keys, labels, val_fraction, test_fraction, seed, source) -> str:
    h = hashlib.sha256(json.dumps([source, val_fraction, test_fraction, seed]).encode())
    for k, y in sorted(zip(keys, np.asarray(labels).tolist())):
        h.update(f"{k}:{y};".encode())
    return h.hexdigest()[:12]


def assign_splits(keys, labels, given=None, val_fraction: float = 0.2, test_fraction: float = 0.2,
                  seed: int = 0, store: str | Path | None = None, class_names=None) -> tuple[np.ndarray, str]:
    """'train' / 'val' / 'test' for each image, and the split's id.

    ``given``: the dataset's own split folders, if any.  With train/val/test
    folders they are used as they are; with train/val only, ``val`` is the
    held-out test set and a stratified ``val_fraction`` of ``train`` becomes
    the validation set (the study's protocol: model selection never sees the
    test images).  Otherwise a stratified, seeded split: ``test_fraction`` of
    all images, then ``val_fraction`` of the rest.  The assignment, keyed by
    image content, is stored under ``store`` so every later head, sweep and
    fine-tune of the dataset is judged on the same images.
    """
    keys = list(keys)
    labels = np.asarray(labels)
    for name, f in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= f < 1:
            raise FeatxError(f"{name}: expected a fraction in [0, 1), got {f}")
    has_test = given is not None and "test" in set(given)
    source = "folders" if has_test else "folders:val-as-test" if given is not None else "stratified"
    sid = split_id(keys, labels, val_fraction, test_fraction, seed, source)
    path = Path(store) / "splits" / f"{sid}.json" if store is not None else None
    if path is not None and path.exists():
        stored = json.loads(path.read_text())["assignments"]
        if all(k in stored for k in keys):
            return np.asarray([stored[k] for k in keys]), sid
    # split in key order, so that the order files were listed in does not matter
    order = np.argsort(np.asarray(keys, dtype=object).astype(str), kind="stable")
    sorted_labels = labels[order]
    sorted_given = np.asarray(given)[order] if given is not None else None
    out = _split(sorted_labels, sorted_given, has_test, val_fraction, test_fraction, seed, class_names)
    result = np.empty(len(keys), dtype=object)
    result[order] = out
    result = result.astype(str)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"id": sid, "source": source, "val_fraction": val_fraction, "test_fraction": test_fraction,
                  "seed": seed, "assignments": dict(zip(keys, result.tolist()))}
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    return result, sid


def _split(labels, given, has_test, val_fraction, test_fraction, seed, class_names) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    out = np.empty(len(labels), dtype=object)
    idx = np.arange(len(labels))
    if has_test:
        out[:] = given
        return out
    if given is not None:
        out[:] = np.where(given == "train", "train", "test")
        pool = idx[out == "train"]
        need = 1 + (val_fraction > 0)
    else:
        pool = idx
        need = 1 + (val_fraction > 0) + (test_fraction > 0)
    classes, counts = np.unique(labels[pool], return_counts=True)
    if counts.min() < need:
        small = classes[counts.argmin()].item()
        small = class_names[small] if class_names is not None else small
        raise FeatxError(
            f"class {small!r} has {counts.min()} training image(s); a split needs at least {need} per class "
            "(add images, or lower --val-fraction / --test-fraction to 0)"
        )
    out[pool] = "train"
    if given is None and test_fraction > 0:
        pool, test = _stratified(pool, labels, test_fraction, seed, train_test_split)
        out[test] = "test"
    if val_fraction > 0:
        _, val = _stratified(pool, labels, val_fraction, seed, train_test_split)
        out[val] = "val"
    return out


def _stratified(pool, labels, fraction, seed, train_test_split):
    n_classes = len(np.unique(labels[pool]))
    size = max(int(round(fraction * len(pool))), n_classes)  # at least one per class
    if size >= len(pool):
        raise FeatxError(f"too few images ({len(pool)}) to hold out {fraction:.0%} per class")
    return train_test_split(pool, test_size=size, random_state=seed, stratify=labels[pool])


def load_split(store: str | Path, sid: str) -> dict:
    path = Path(store) / "splits" / f"{sid}.json"
    if not path.exists():
        raise FeatxError(f"split {sid} is not stored under {store}; was the cache folder moved?")
    return json.loads(path.read_text())
