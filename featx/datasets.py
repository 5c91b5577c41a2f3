"""Find the images of a dataset folder, their labels and any given splits; split them.

One scan (:func:`scan`) describes a folder once: its images, each image's label, its split folder, and
every file or folder left out with its reason.  Three layouts are understood:

* ``DATA/<class>/...images``: labels are the sorted folder names;
* ``DATA/{train,val|valid|validation|validate|dev,test}/<class>/...`` (split folder names in any letter
  case): splits given by the folders (recognised only when ``train/`` itself holds class folders, so a
  class may be called ``train``); any other folder beside them is left out and named on stderr;
* ``DATA/...images`` with no class folders: unlabelled (for prediction).

Every image is counted once, under its own label.  An image's label is the name of the class folder it
physically lies in (at any depth below it) and nothing else.  Folders are walked without following links:
a link to a file or folder inside the dataset is left out (what it points to is counted where it lies);
a link leading out of the dataset's folder is left out; a link to a folder that holds it is a cycle, at
any depth.  Two names of one file (hard links: the same ``(st_dev, st_ino)``) count once in one class folder
of one split; in different class or split folders both are kept, as byte-identical copies are (the split
reports them as leakage or a label conflict).

A class folder is a folder that holds at least one image: an empty folder, or one like
``__MACOSX/`` that holds only hidden files, is left out and named, never a class with 0 images.
Class names are compared after NFC Unicode normalisation (no case folding): two sibling folders
whose names differ only in normalisation are an error naming both.  Hidden files, files that
are not images (by suffix: :data:`featx.images.FORMATS`) and the like are left out, counted in
``Dataset.skipped`` and named in ``Dataset.left_out``.

Splits (:func:`make_split`) are a pure function of the dataset's content, stored under the
cache folder: byte-identical files form one group that never straddles train/val/test.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import logging
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx.names import shown
from featx.errors import FeatxError
from featx.images import FORMAT_NAMES, IMAGE_SUFFIXES, is_image_path, why_not_a_file

#: Split folder names (compared in lower case) -> the split they give.  ``valid`` is Roboflow's spelling,
#: ``dev`` the NLP habit; every spelling of validation is a validation folder.
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validate": "val", "validation": "val",
                 "dev": "val", "test": "test"}

log = logging.getLogger("featx")


@dataclass(repr=False)
class Dataset:
    root: Path
    paths: list[Path]
    labels: np.ndarray | None  # int index into class_names, or None when unlabelled
    class_names: list[str]
    splits: np.ndarray | None = None  # the split FOLDER ('train' / 'val' / 'test') per image, when given
    skipped: Counter = field(default_factory=Counter)  # reason -> count of what the walk left out
    left_out: list = field(default_factory=list)  # (path, reason) for every file or folder left out
    folders: list = field(default_factory=list)  # names of the folders holding images (reported when unlabelled)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        classes = f"{len(self.class_names)} classes" if self.labels is not None else "unlabelled"
        splits = ", split folders" if self.splits is not None else ""
        return f"Dataset({str(self.root)!r}, {len(self)} images, {classes}{splits}, {sum(self.skipped.values())} left out)"

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def empty_folders(self) -> list[str]:
        """Folders left out because they hold no image (they are not classes)."""
        return [str(p) for p, why in self.left_out if why == NO_IMAGES]

    def classes_by_split(self) -> dict:
        """split folder ('train' / 'val' / 'test') -> {class name: images}, when the folders give splits."""
        if self.splits is None or self.labels is None:
            return {}
        out: dict = {}
        for split, label in zip(self.splits.tolist(), self.labels.tolist()):
            counts = out.setdefault(split, Counter())
            counts[self.class_names[label]] += 1
        return out


NO_IMAGES = "folder with no images (not a class)"
OUTSIDE_SPLITS = "folder outside train/val/test"
LINK_OUT = "link leading out of the dataset's folder (not followed)"
CYCLE = "symlink cycle"  # a link to a folder that holds it (at any depth)
LINK_INSIDE = "link inside the dataset"  # what skipped counts for a link to a file or folder under the root


def _link_inside(target: str) -> str:
    return f"link to {target} inside the dataset (counted where it lies, under its own folder)"


def _same_file(first: Path) -> str:
    return f"the same file as {first} (a hard link; counted once)"


class _Walk:
    """What a scan found and left out."""

    def __init__(self):
        self.skipped: Counter = Counter()
        self.left_out: list[tuple[Path, str]] = []
        self.inode: dict = {}  # image path -> (st_dev, st_ino), to count two names of one file once
        self.links: list[tuple[int, str, str]] = []  # (index in left_out, real target, target as shown)

    def leave_link(self, path: Path, real: str, real_root: str, folder: bool = False) -> None:
        """Name ``path``, a link to ``real`` inside the root, as left out (what it points to counts where it lies)."""
        shown_target = os.path.relpath(real, real_root) + (os.sep if folder else "")
        self.leave(path, _link_inside(shown_target), LINK_INSIDE)
        self.links.append((len(self.left_out) - 1, real, shown_target))

    def settle_links(self, counted, real_root: str) -> None:
        """Reword each link whose target is left out too (hidden, outside class folders, ...): counted nowhere.

        ``counted``: the paths the dataset keeps.  Else the link would promise "counted where it lies".
        """
        if not self.links:
            return
        kept = {os.path.realpath(p) for p in counted}
        link_at = {i for i, _, _ in self.links}
        why_out = {os.path.realpath(p): why for i, (p, why) in enumerate(self.left_out) if i not in link_at}
        for i, real, target in self.links:
            if real in kept or any(k.startswith(real.rstrip(os.sep) + os.sep) for k in kept):
                continue
            why, at, up = None, real, None
            while why is None and at != up and _inside(at, real_root):  # the target, or a folder above it
                why, at, up = why_out.get(at), os.path.dirname(at), at
            self.left_out[i] = (self.left_out[i][0], f"link to {target} inside the dataset, which is left out too "
                                f"({why or 'not counted'}): counted nowhere")

    def leave(self, path: Path, reason: str, kind: str | None = None) -> None:
        """Name ``path`` as left out for ``reason``; ``kind`` (default: the reason) is what ``skipped`` counts."""
        self.skipped[kind or reason] += 1
        self.left_out.append((path, reason))


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _dir_link_reason(full: str, real_root: str, real_parent: str) -> str:
    real = os.path.realpath(full)
    if not os.path.isdir(real):
        return why_not_a_file(full) or "not a folder"
    if not _inside(real, real_root):
        return LINK_OUT
    if _inside(real_parent, real):  # the link leads to the folder holding it, or above: a cycle
        return CYCLE
    return _link_inside(os.path.relpath(real, real_root) + os.sep)


def _scan(root: Path, walk: _Walk) -> list[tuple[Path, tuple]]:
    """Every image file physically under ``root``, once each: (path, its folders relative to root).

    Folders are walked without following links, so an image has one path and one label: its own folders.
    A link is left out with its reason: out of the root, a cycle (to a folder that holds it), or a link to
    something inside the root (counted where it lies).  Hard links are all returned; :func:`_once` counts
    them once per class folder.
    """
    real_root = os.path.realpath(root)
    found = []

    def unreadable(exc: OSError) -> None:  # issue 17: a folder os.walk cannot list is named, not dropped
        walk.leave(Path(exc.filename), f"unreadable folder ({(exc.strerror or str(exc)).lower()})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        here = Path(dirpath)
        parts = here.relative_to(root).parts
        real_here = os.path.realpath(dirpath)
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if d.startswith("."):
                walk.leave(here / d, "hidden")
            elif os.path.islink(full):
                why = _dir_link_reason(full, real_root, real_here)
                if why.startswith("link to "):
                    walk.leave_link(here / d, os.path.realpath(full), real_root, folder=True)
                else:
                    walk.leave(here / d, why)
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = here / name
            if name.startswith("."):
                walk.leave(path, "hidden")
            elif not is_image_path(name):
                walk.leave(path, "not an image")
            elif not path.is_file():  # issue 17: the real reason (link loop, FIFO, device, socket, ...)
                walk.leave(path, why_not_a_file(path) or "not a regular file")
            elif path.is_symlink():
                real = os.path.realpath(path)
                if _inside(real, real_root):
                    walk.leave_link(path, real, real_root)
                else:
                    walk.leave(path, LINK_OUT)
            else:
                info = os.stat(path)
                walk.inode[path] = (info.st_dev, info.st_ino)
                found.append((path, parts))
    return found


def _once(entries, group, walk: _Walk) -> list:
    """``entries`` with each file counted once per ``group(entry)`` (hard links: the same ``(st_dev, st_ino)``).

    Two names of one file in the same group (one class folder of one split) count once, the other named as
    left out.  Names in different groups are both kept, as byte-identical copies are: the split then reports
    them as leakage (different split folders) or a label conflict (different class folders).
    """
    seen: dict = {}
    kept = []
    for entry in entries:
        path = entry[0]
        first = seen.setdefault((walk.inode.get(path, path), group(entry)), path)
        if first is not path:
            walk.leave(path, _same_file(first), "hard link to a file counted once")
        else:
            kept.append(entry)
    return kept


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _check_collisions(folders: dict) -> None:
    """Two sibling folders whose names are equal after NFC normalisation: a FeatxError naming both."""
    for parent, names in folders.items():
        by_nfc: dict = {}
        for d in sorted(names):
            other = by_nfc.setdefault(_nfc(d), d)
            if other != d:
                raise FeatxError(f"{parent / other} and {parent / d}: two class folders with the same name after "
                                 "Unicode (NFC) normalisation; merge or rename one")


def _layout(root: Path, found, walk: _Walk):
    """(split folders by name, whether the split layout applies): train/ holding class folders."""
    tops = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    split_dirs = {t: SPLIT_FOLDERS[t.lower()] for t in tops if t.lower() in SPLIT_FOLDERS}
    has_train = any(s == "train" for s in split_dirs.values())
    split_layout = has_train and any(len(parts) >= 2 and split_dirs.get(parts[0]) == "train" for _, parts in found)
    return tops, split_dirs, split_layout


def _leave_empty(parent: Path, names, holding: set, walk: _Walk) -> None:
    for d in names:
        if d not in holding:
            walk.leave(parent / d, NO_IMAGES)


def _sub_names(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir()
                      if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    except OSError:
        return []


def scan(root: str | Path, every_image: bool = False) -> Dataset:
    """Scan ``root`` once: every image, its label (its own class folder), its split folder, and what was left out.

    Parameters
    ----------
    root : str or Path
        A dataset folder (see the module's layouts).
    every_image : bool
        False (training): images outside class folders are left out, named.  True (prediction): every image
        under ``root`` is taken; labels are given only when every image sits in a class folder.

    Returns
    -------
    Dataset

    Raises
    ------
    FeatxError
        ``root`` holds no image, or two sibling class folders collide after NFC normalisation.
    """
    root = Path(root)
    walk = _Walk()
    found = _scan(root, walk)
    tops, split_dirs, split_layout = _layout(root, found, walk)
    depth = 1 if split_layout else 0  # where class folders are: parts[depth]
    classes_at: dict = {}
    labelled, loose = [], []
    for path, parts in found:
        if split_layout and parts and parts[0] not in split_dirs:
            loose.append((path, OUTSIDE_SPLITS))
        elif len(parts) > depth:
            labelled.append((path, parts))
            classes_at.setdefault(root.joinpath(*parts[:depth]), set()).add(parts[depth])
        else:
            loose.append((path, "outside class folders"))
    _check_collisions(classes_at)
    if split_layout:
        for t in tops:
            if t in split_dirs:
                _leave_empty(root / t, _sub_names(root / t), classes_at.get(root / t, set()), walk)
            elif not any(parts and parts[0] == t for _, parts in found):
                walk.leave(root / t, NO_IMAGES)
        others = [t for t in tops if t not in split_dirs]
        if others:
            log.warning("warning: %s: folder(s) beside train/ that are not split folders, left out: %s (split folders "
                        "are train, val, valid, validation, validate, dev and test, in any letter case)", root,
                        ", ".join(f"{t}/" for t in others))
    else:
        _leave_empty(root, tops, classes_at.get(root, set()), walk)
    folders = sorted({_nfc(parts[depth]) for _, parts in labelled})
    if every_image and loose:
        take = _once(found, lambda e: None, walk)  # prediction: each file once, whatever its folder
        dataset = Dataset(root, [p for p, _ in take], None, [], None, walk.skipped, walk.left_out, folders)
    elif labelled:
        labelled = _once(labelled, lambda e: (split_dirs[e[1][0]] if split_layout else None, _nfc(e[1][depth])), walk)
        for path, why in loose:
            walk.leave(path, why)
        class_names = sorted({_nfc(parts[depth]) for _, parts in labelled})
        index = {n: i for i, n in enumerate(class_names)}
        labels = np.asarray([index[_nfc(parts[depth])] for _, parts in labelled], dtype=np.int64)
        splits = np.asarray([split_dirs[parts[0]] for _, parts in labelled]) if split_layout else None
        dataset = Dataset(root, [p for p, _ in labelled], labels, class_names, splits, walk.skipped, walk.left_out,
                          folders)
    else:  # no folder holds an image: the loose files are an unlabelled set
        loose = _once(loose, lambda e: None, walk)
        dataset = Dataset(root, [p for p, _ in loose], None, [], None, walk.skipped, walk.left_out)
    walk.settle_links(dataset.paths, os.path.realpath(root))
    if not dataset.paths:
        raise FeatxError(_no_images(root, walk))
    _log_left_out(dataset)
    return dataset


def _no_images(root: Path, walk: _Walk) -> str:
    """The error for a folder with no image: links out of it (not followed) named first, as the likely reason."""
    out = [p for p, why in walk.left_out if why == LINK_OUT]
    if out:
        return (f"{root}: no images found: {len(out)} link(s) in it lead out of the dataset's folder and are not "
                f"followed (e.g. {out[0]} -> {os.path.realpath(out[0])}); copy or move the class folders into "
                f"{root}, or give featx the folder the links point to")
    return f"{root}: no images found (looked for {FORMAT_NAMES}: {', '.join(sorted(IMAGE_SUFFIXES))})"


def discover(root: str | Path) -> Dataset:
    """Scan ``root`` and return its images in a stable (sorted) order.

    Parameters
    ----------
    root : str or Path
        A dataset folder (see the module's layouts) or one image file.

    Returns
    -------
    Dataset
        ``paths`` in walk order (folders sorted by name); ``labels`` int64 (n,) or None; ``splits`` the
        split folder of each image or None; ``left_out`` every (path, reason) the scan skipped.

    Raises
    ------
    FeatxError
        ``root`` is missing, holds no image, or two class folders collide after NFC normalisation.
    """
    root = Path(root)
    if not root.exists():
        raise FeatxError(f"{root}: no such folder")
    if root.is_file():
        return from_paths([root])
    return scan(root)


def _fold(name: str) -> str:
    """A class name with letter case and Unicode form (compatibility characters included) set aside."""
    return unicodedata.normalize("NFKC", name).casefold()


def _class_folder(dataset: Dataset, label: int, split: str) -> Path:
    """The folder holding the first image of class ``label`` in split folder ``split`` (for messages)."""
    for path, y, s in zip(dataset.paths, dataset.labels.tolist(), dataset.splits.tolist()):
        if y == label and s == split:
            rel = path.relative_to(dataset.root).parts
            return dataset.root.joinpath(*rel[:2])
    return dataset.root


def check_classes(dataset: Dataset) -> list[str]:
    """Check each class's presence in each split folder, before any work.

    Only a dataset whose folders give the split (``train/``, ``val/``, ``test/``) can lack a class in a split;
    a stratified split puts every class in each part.

    Returns
    -------
    list of str
        One warning per class with no image in a held-out folder (``val/`` or ``test/``): what it means.

    Raises
    ------
    FeatxError
        A class with no training image, named with its folder, and "did you mean" the training class whose
        name differs from it only in letter case or Unicode form.
    """
    by_split = dataset.classes_by_split()
    if not by_split:
        return []
    train = by_split.get("train", Counter())
    problems = []  # every class without training images, so one run names them all
    for label, name in enumerate(dataset.class_names):
        if name in train:
            continue
        where = sorted(s for s, counts in by_split.items() if name in counts)
        near = [t for t in sorted(train) if _fold(t) == _fold(name)]
        hint = (f"; did you mean '{shown(near[0])}'? (the names differ only in letter case or Unicode form: rename one "
                "folder so both are spelt the same)" if near else
                f"; add its training images under train/{shown(name)}/, or move the folder out of the dataset")
        n = sum(by_split[s][name] for s in where)
        problems.append(f"{_class_folder(dataset, label, where[0])}: class '{shown(name)}' has no training image "
                        f"(its {n} image(s) are in {' and '.join(s + '/' for s in where)} only){hint}")
    if problems:
        raise FeatxError(problems[0] if len(problems) == 1 else
                         f"{len(problems)} classes have no training image: " + "; ".join(problems))
    held_out = {"test": "test set (test/)", "val": "validation set (val/)" if "test" in by_split else
                "held-out set (val/, the test set when there is no test/)"}
    warnings = []
    for split in ("val", "test"):
        if split not in by_split:
            continue
        for name in dataset.class_names:
            if name not in by_split[split]:
                meaning = ("no accuracy for it; the overall accuracy covers the other classes only"
                           if not held_out[split].startswith("validation") else
                           "the head's settings are chosen without it")
                warnings.append(f"class '{shown(name)}' has no image in the {held_out[split]}: {meaning}")
    return warnings


def _log_left_out(dataset: Dataset) -> None:
    """One line counting what the scan left out; each file by name at DEBUG (``--verbose``)."""
    if not dataset.left_out:
        return
    counts = ", ".join(f"{n} {why}" for why, n in sorted(dataset.skipped.items()) if n)
    log.info("%s: left out %d: %s%s", dataset.root, len(dataset.left_out), counts,
             "" if log.isEnabledFor(logging.DEBUG) else " (--verbose names them)")
    for path, why in dataset.left_out:
        log.debug("  left out %s: %s", path, why)


def from_paths(paths) -> Dataset:
    """An unlabelled dataset from explicit files and folders: every image under each folder (:func:`scan`).

    A file named explicitly is taken whatever its suffix: the decoder judges it by its bytes.  The folders
    holding images are listed in ``folders`` (for messages), never used as labels.
    """
    out: list[Path] = []
    skipped: Counter = Counter()
    left_out: list = []
    folders: set = set()
    for p in map(Path, paths):
        if p.is_dir():
            sub = scan(p, every_image=True)
            out += sub.paths
            skipped += sub.skipped
            left_out += sub.left_out
            folders.update(sub.folders)
        else:
            out.append(p)
    if not out:
        raise FeatxError("no images given")
    return Dataset(Path("."), out, None, [], None, skipped, left_out, sorted(folders))


# ---- splits ---------------------------------------------------------------------------

#: Part of every split id: bump when the assignment rule changes, so that no stored split made
#: by an older rule is taken for a new one.  2: byte-identical files are one group.
SPLIT_VERSION = 2
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    """How a labelled dataset is split: the rule's parameters, as one value (validated at construction).

    Parameters
    ----------
    val_fraction, test_fraction : float
        Fractions in [0, 1) of the images (of each class) held out for validation and test when the
        dataset's folders do not give that split.
    seed : int
        The split's seed; with the same files and fractions, the same seed gives the same split (its id).

    Raises
    ------
    FeatxError
        A fraction outside [0, 1) (names the keyword).
    """

    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not 0 <= value < 1:
                raise FeatxError(f"expected a fraction in [0, 1), got {value!r}", param=name)
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**32:
            # scikit-learn and numpy take seeds in [0, 2**32): a negative one failed deep inside before
            raise FeatxError(f"expected a whole number from 0 to 2**32 - 1, got {self.seed!r}", param="seed")

    @classmethod
    def take(cls, options: dict) -> "SplitSpec":
        """The spec named by ``val_fraction``/``test_fraction``/``seed`` in ``options`` (removed from it)."""
        given = {k: options.pop(k) for k in SPLIT_KEYWORDS if k in options}
        return cls(**given)

    @classmethod
    def resolve(cls, split, options: dict) -> "SplitSpec":
        """``split`` when it is a SplitSpec, else the one its former keywords in ``options`` name (popped).

        Raises
        ------
        FeatxError
            ``split`` is neither None nor a SplitSpec (names ``split``), or a fraction or seed out of range.
        TypeError
            ``split`` given together with ``val_fraction``/``test_fraction``/``seed`` (which one wins would
            be a guess).
        """
        if split is None:
            return cls.take(options)
        if not isinstance(split, cls):
            raise FeatxError(f"expected a SplitSpec (or val_fraction=, test_fraction=, seed=), got "
                             f"{type(split).__name__}", param="split")
        both = [k for k in SPLIT_KEYWORDS if k in options]
        if both:
            raise TypeError(f"give split= or {', '.join(both)}=, not both")
        return split


#: The keywords a SplitSpec's fields were given as before it existed (and still may be).
SPLIT_KEYWORDS = ("val_fraction", "test_fraction", "seed")


@dataclass(repr=False)
class Split:
    """A dataset's train/val/test assignment and what was found while making it.

    ``assignment``: (n,) str, one of 'train' / 'val' / 'test' per image.
    ``leakage``: byte-identical files that the user's own split folders put in different
    splits, as ``[path_a, split_a, path_b, split_b]`` (each pair once).
    ``label_conflicts``: byte-identical files under different class folders, as one list of
    ``[path, class]`` per content.
    """

    assignment: np.ndarray
    id: str
    source: str
    leakage: list = field(default_factory=list)
    label_conflicts: list = field(default_factory=list)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={int((self.assignment == s).sum())}" for s in ("train", "val", "test"))
        return (f"Split(id={self.id!r}, {counts}, source={self.source!r}, {len(self.leakage)} leakage, "
                f"{len(self.label_conflicts)} label conflicts)")

    def warnings(self, limit: int = 5) -> list[str]:
        """Console lines (without the ``featx: warning:`` prefix) for leakage and label conflicts."""
        lines = []
        if self.leakage:
            shown = "; ".join(f"{a} ({sa}) = {b} ({sb})" for a, sa, b, sb in self.leakage[:limit])
            more = f"; and {len(self.leakage) - limit} more" if len(self.leakage) > limit else ""
            lines.append(f"leakage: {len(self.leakage)} pair(s) of byte-identical files in different splits, "
                         f"kept where the folders put them: {shown}{more}")
        if self.label_conflicts:
            shown = "; ".join(" = ".join(f"{p} ({c})" for p, c in group) for group in self.label_conflicts[:limit])
            more = f"; and {len(self.label_conflicts) - limit} more" if len(self.label_conflicts) > limit else ""
            lines.append(f"label conflict: {len(self.label_conflicts)} image(s) stored byte-identical under "
                         f"different classes: {shown}{more}")
        return lines

    def record(self) -> dict:
        """The parts of the split that go into metrics.json."""
        return {"split_id": self.id, "split_source": self.source, "leakage": self.leakage,
                "label_conflicts": self.label_conflicts}


def _source(given) -> str:
    names = set(given.tolist()) if given is not None else set()
    if names <= {"train"}:
        return "stratified"  # no folders, or only train/: split like a flat folder
    if "test" in names:
        return "folders" if "val" in names else "folders:val-from-train"
    return "folders:val-as-test"


def _units(keys, labels, given):
    """Group each image with its byte-identical copies (in the same split folder, when given)."""
    unit_of = [k if given is None else f"{g}/{k}" for k, g in
               zip(keys, given.tolist() if given is not None else [None] * len(keys))]
    unit_labels: dict[str, set] = {}
    unit_given: dict[str, str | None] = {}
    for u, y, g in zip(unit_of, labels.tolist(), given.tolist() if given is not None else [None] * len(keys)):
        unit_labels.setdefault(u, set()).add(y)
        unit_given[u] = g
    return unit_of, unit_labels, unit_given


def split_id(keys, labels, val_fraction, test_fraction, seed, source, given=None) -> str:
    """The id of a split: a hash of the rule, its parameters and the set of (group, labels).

    Copies of a file add nothing to the set, and the order of the files does not matter, so one
    id always stands for one assignment of every content.
    """
    labels = np.asarray(labels)
    given = np.asarray(given) if given is not None else None
    _, unit_labels, _ = _units(list(keys), labels, given)
    h = hashlib.sha256(json.dumps([SPLIT_VERSION, source, val_fraction, test_fraction, seed]).encode())
    for u in sorted(unit_labels):
        h.update(f"{u}:{','.join(map(str, sorted(unit_labels[u])))};".encode())
    return h.hexdigest()[:12]


def assign_splits(keys, labels, given=None, val_fraction: float = 0.2, test_fraction: float = 0.2,
                  seed: int = 0, store: str | Path | None = None, class_names=None) -> tuple[np.ndarray, str]:
    """'train' / 'val' / 'test' for each image, and the split's id (see :func:`make_split`)."""
    split = make_split(keys, labels, given, val_fraction, test_fraction, seed, store, class_names)
    return split.assignment, split.id


def make_split(keys, labels, given=None, val_fraction: float = 0.2, test_fraction: float = 0.2,
               seed: int = 0, store: str | Path | None = None, class_names=None, paths=None) -> Split:
    """Split a labelled dataset by content: a pure, stored function of its files.

    Parameters
    ----------
    keys : sequence of str, length n
        Content key of each image (a hash of its bytes).
    labels : array-like of int, shape (n,)
        Class index of each image.
    given : array-like of str, shape (n,), optional
        The split folder of each image ('train' / 'val' / 'test'), when the dataset has them.
        train/val/test folders are used as they are.  train/ + test/: a stratified
        ``val_fraction`` of train/ becomes the validation set.  train/ + val/: val/ is the
        held-out test set and validation is carved from train/ the same way (the study's
        protocol).  Otherwise (no folders, or train/ alone) a stratified, seeded split:
        ``test_fraction`` of all images, then ``val_fraction`` of the rest.
    val_fraction, test_fraction : float in [0, 1)
    seed : int
    store : path, optional
        Cache folder; the assignment is written to ``store/splits/<id>.json`` and read back
        from there on every later run, so every head, sweep and fine-tune of the dataset is
        judged on the same images.
    class_names : list of str, optional
        For messages and reports.
    paths : sequence of path, length n, optional
        For the leakage and label-conflict reports (keys are shown without them).

    Returns
    -------
    Split
        Byte-identical files are one group (in the same split folder, when given) and never
        straddle train/val/test.  Copies that the user's folders put in different splits stay
        where they are and are listed in ``leakage``; copies under different classes are
        listed in ``label_conflicts`` (the group is stratified by its smallest class index).

    Raises
    ------
    FeatxError
        A fraction outside [0, 1), or a class with too few images to split.
    """
    keys = [str(k) for k in keys]
    labels = np.asarray(labels)
    given = np.asarray(given).astype(str) if given is not None else None
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise FeatxError(f"expected a fraction in [0, 1), got {f}", param=name)
    source = _source(given)
    if source == "stratified":
        given = None
    unit_of, unit_labels, unit_given = _units(keys, labels, given)
    sid = split_id(keys, labels, val_fraction, test_fraction, seed, source, given)
    path = Path(store) / "splits" / f"{sid}.json" if store is not None else None
    units = sorted(unit_labels)
    stored = None
    if path is not None and path.exists():
        try:
            stored = json.loads(path.read_text())["assignments"]
        except (OSError, ValueError, KeyError):
            stored = None  # a damaged record: the split is a pure function, so make it again
        if stored is not None and not all(u in stored for u in units):
            stored = None
    if stored is None:
        u_labels = np.asarray([min(unit_labels[u]) for u in units], dtype=np.int64)
        u_given = np.asarray([unit_given[u] for u in units]) if given is not None else None
        out = _split(u_labels, u_given, source, val_fraction, test_fraction, seed, class_names)
        stored = dict(zip(units, out.tolist()))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {"id": sid, "version": SPLIT_VERSION, "source": source, "val_fraction": val_fraction,
                      "test_fraction": test_fraction, "seed": seed, "assignments": stored}
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
    assignment = np.asarray([stored[u] for u in unit_of], dtype="<U5").astype(str)
    names = [str(p) for p in paths] if paths is not None else keys
    return Split(assignment, sid, source, _leakage(keys, assignment, names),
                 _label_conflicts(keys, labels, names, class_names))


def _leakage(keys, assignment, names) -> list:
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    order = {s: i for i, s in enumerate(SPLIT_NAMES)}
    pairs = []
    for idx in by_key.values():
        if len({assignment[i] for i in idx}) < 2:
            continue
        idx = sorted(idx, key=lambda i: (order.get(assignment[i], 9), names[i]))
        for a_pos, a in enumerate(idx):
            for b in idx[a_pos + 1:]:
                if assignment[a] != assignment[b]:
                    pairs.append([names[a], str(assignment[a]), names[b], str(assignment[b])])
    return sorted(pairs)


def _label_conflicts(keys, labels, names, class_names) -> list:
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    out = []
    for idx in by_key.values():
        if len({int(labels[i]) for i in idx}) > 1:
            out.append(sorted([names[i], class_names[labels[i]] if class_names is not None else int(labels[i])]
                              for i in idx))
    return sorted(out)


def _split(labels, given, source, val_fraction, test_fraction, seed, class_names) -> np.ndarray:
    """The assignment of each group (rows already in a fixed, content-derived order)."""
    from sklearn.model_selection import train_test_split

    out = np.empty(len(labels), dtype=object)
    idx = np.arange(len(labels))
    if source == "folders":
        out[:] = given
        return out
    if given is not None:  # train/ + test/ or train/ + val/: the other folder is the test set
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
            "(add images, or lower the validation and test fractions to 0)"
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
