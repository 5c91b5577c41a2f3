"""Random small dataset trees as users have them, and the invariants every folder scan must keep (issue 24).

Used by ``tests/test_fuzz_folders.py`` (a small Hypothesis budget in CI) and ``scripts/fuzz_folders.py`` (long runs).
A tree is drawn as a list of plain steps (:func:`trees`), then made on disk (:func:`build`): class and split folders
in mixed case, nested folders, loose images, empty and non-image folders, links (to files, to folders, broken,
cycles, to ancestors, out of the root), byte-identical copies under other names and labels, hard links, names with
non-UTF-8 bytes, NFC/NFD and case collisions, hidden files and non-images named ``.jpg``.
"""

from __future__ import annotations

import os
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from featx.datasets import SPLIT_FOLDERS, Dataset
from featx.images import is_image_path

CLASS_NAMES = ["cat", "Cat", "dog", "bird", unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"),
               os.fsdecode(b"gr\xfcn"), "train", "a b"]
SPLIT_NAMES = ["train", "Train", "val", "valid", "VALIDATION", "dev", "test", "extras"]
SUFFIXES = [".png", ".jpg", ".JPG"]


@lru_cache(maxsize=64)
def image_bytes(seed: int, suffix: str = ".png") -> bytes:
    """A tiny decodable image (8x8 to 12x12 RGB) whose colour cast depends on ``seed``."""
    import cv2

    rng = np.random.default_rng(seed)
    size = 8 + seed % 5
    img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    img[:, :, seed % 3] = 200
    ext = ".jpg" if suffix.lower() == ".jpg" else ".png"
    return cv2.imencode(ext, img)[1].tobytes()


def file_name(draw, i: int) -> str:
    stem = draw(st.sampled_from(["img", "Img", "photo", os.fsdecode(b"caf\xe9"), "x y", "ß"]))
    return f"{stem}{i}{draw(st.sampled_from(SUFFIXES))}"


@st.composite
def trees(draw, max_images: int = 14):
    """A tree as a list of steps ``(kind, relative path parts, argument)`` that :func:`build` makes."""
    steps = []
    split = draw(st.booleans())
    tops = draw(st.lists(st.sampled_from(SPLIT_NAMES), min_size=1, max_size=3, unique=True)) if split else [None]
    classes = draw(st.lists(st.sampled_from(CLASS_NAMES), min_size=1, max_size=3, unique=True))
    n = 0
    for top in tops:
        for cls in classes:
            for _ in range(draw(st.integers(0, 3))):
                if n >= max_images:
                    break
                deeper = draw(st.sampled_from([(), (), ("sub",), ("Sub", "deeper")]))
                parts = ((top,) if top else ()) + (cls,) + deeper + (file_name(draw, n),)
                steps.append(("image", parts, draw(st.integers(0, 5))))  # few seeds: byte-identical copies happen
                n += 1
    images = [s[1] for s in steps]
    folders = sorted({p[:-1] for p in images if len(p) > 1})
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["loose", "empty", "not_image", "hidden", "fake_jpg", "file_link", "dir_link",
                                     "broken", "cycle", "outside", "hard_link", "copy"]))
        where = draw(st.sampled_from(folders)) if folders else ()
        if kind == "loose":
            steps.append(("image", (draw(st.sampled_from(["loose.png", "README.jpg"])),), draw(st.integers(0, 5))))
        elif kind == "empty":
            steps.append(("dir", where + (draw(st.sampled_from(["empty", "__MACOSX", "Empty"])),), None))
        elif kind == "not_image":
            steps.append(("text", where + ("notes.txt",), "hello"))
        elif kind == "hidden":
            steps.append(("image", where + ("._x.jpg",), 7))
        elif kind == "fake_jpg":
            steps.append(("text", where + ("broken.jpg",), "not an image"))
        elif kind in ("file_link", "hard_link") and images:
            target = draw(st.sampled_from(images))
            steps.append((kind, where + (f"{kind}.png",), target))
        elif kind == "dir_link" and folders:
            steps.append(("dir_link", where + ("linked",), draw(st.sampled_from(folders))))
        elif kind == "broken":
            steps.append(("broken", where + ("gone.png",), None))
        elif kind == "cycle":
            steps.append(("cycle", where + ("loop",), draw(st.integers(1, max(1, len(where))))))
        elif kind == "outside":
            steps.append(("outside", where + ("away",), None))
        elif kind == "copy" and images:
            steps.append(("copy", where + ("copy.png",), draw(st.sampled_from(images))))
    return steps


def build(steps, root: Path) -> tuple[Path, Path]:
    """Make ``steps`` under ``root/data`` (and ``root/outside``); returns (data, outside).  Steps that collide
    with what is already there (a case-insensitive file system, two steps on one name) are skipped."""
    data, outside = root / "data", root / "outside"
    data.mkdir(parents=True)
    outside.mkdir()
    (outside / "far.png").write_bytes(image_bytes(9))
    for kind, parts, arg in steps:
        path = data.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(path):
                continue
            if kind == "image":
                path.write_bytes(image_bytes(arg, path.suffix))
            elif kind == "copy":
                source = data.joinpath(*arg)
                if source.is_file():
                    path.write_bytes(source.read_bytes())
            elif kind == "text":
                path.write_text(arg)
            elif kind == "dir":
                path.mkdir()
            elif kind == "file_link":
                os.symlink(os.path.relpath(data.joinpath(*arg), path.parent), path)
            elif kind == "hard_link":
                if data.joinpath(*arg).is_file() and not data.joinpath(*arg).is_symlink():
                    os.link(data.joinpath(*arg), path)
            elif kind == "dir_link":
                os.symlink(os.path.relpath(data.joinpath(*arg), path.parent), path)
            elif kind == "broken":
                os.symlink("nowhere.png", path)
            elif kind == "cycle":
                os.symlink("/".join([".."] * arg) if arg else ".", path)
            elif kind == "outside":
                os.symlink(outside, path)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue
    return data, outside


def physical_images(data: Path) -> list[Path]:
    """Every regular image file under ``data`` by its own path (no link followed), hidden ones included."""
    out = []
    for dirpath, dirnames, filenames in os.walk(data):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            path = Path(dirpath) / name
            if is_image_path(name) and not path.is_symlink() and path.is_file():
                out.append(path)
    return out


def _covered(path: Path, left: dict) -> bool:
    """Whether ``path`` or one of its folders is named as left out."""
    return any(p in left for p in [path, *path.parents])


def check_scan(ds: Dataset, data: Path, every_image: bool = False) -> None:
    """The scan's invariants (AssertionError naming the first broken one).

    Every image file under the root is used exactly once or named as left out (itself or a folder above it);
    each used image lies physically under the root, is no link, is not the same file as another used one of its
    class and split; its label is its own class folder's name (NFC); its split is its own split folder's; no image is in two splits.
    """
    left = {Path(p): why for p, why in ds.left_out}
    assert all(why for why in left.values()), "a left-out entry without a reason"
    used = [Path(p) for p in ds.paths]
    assert len(used) == len(set(used)), "an image used twice"
    real_root = os.path.realpath(data)
    ids = set()
    for i, p in enumerate(used):
        assert not p.is_symlink() and os.path.realpath(p).startswith(real_root + os.sep), f"{p}: outside or a link"
        info = os.stat(p)
        # hard links count once per class folder of one split; across classes or splits both are kept (as copies)
        group = (None if ds.labels is None else int(ds.labels[i]), None if ds.splits is None else str(ds.splits[i]))
        assert (info.st_dev, info.st_ino, group) not in ids, f"{p}: the same file counted twice"
        ids.add((info.st_dev, info.st_ino, group))
    for p in physical_images(data):
        assert p in set(used) or _covered(p, left), f"{p}: neither used nor named as left out"
    if ds.labels is None:
        return
    split_layout = ds.splits is not None
    for i, p in enumerate(used):
        parts = p.relative_to(data).parts
        own = parts[1] if split_layout else parts[0]
        assert ds.class_names[ds.labels[i]] == unicodedata.normalize("NFC", own), f"{p}: labelled " \
            f"{ds.class_names[ds.labels[i]]!r}, its class folder is {own!r}"
        if split_layout:
            assert ds.splits[i] == SPLIT_FOLDERS[parts[0].lower()], f"{p}: split {ds.splits[i]} from {parts[0]}/"
