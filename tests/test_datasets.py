import os

import pytest

from conftest import make_photo, write_image
from featx.datasets import discover, from_paths
from featx.errors import FeatxError


def test_class_folders_give_sorted_labels(tmp_path):
    for cls, n in (("zebra", 2), ("ant", 3)):
        for i in range(n):
            write_image(tmp_path / cls / f"{i}.jpg", make_photo(i))
    (tmp_path / "ant" / "notes.txt").write_text("x")
    (tmp_path / "ant" / ".hidden.jpg").write_bytes(b"x")
    ds = discover(tmp_path)
    assert ds.class_names == ["ant", "zebra"]
    assert list(ds.labels) == [0, 0, 0, 1, 1]
    assert ds.splits is None
    assert ds.skipped["not an image"] == 1 and ds.skipped["hidden"] == 1


def test_split_folders(tmp_path):
    for split in ("train", "validate", "test"):
        for cls in ("a", "b"):
            write_image(tmp_path / split / cls / "x.png", make_photo(len(split)))
    ds = discover(tmp_path)
    assert ds.class_names == ["a", "b"]
    assert sorted(set(ds.splits)) == ["test", "train", "val"]
    assert len(ds) == 6


def test_flat_folder_is_unlabelled(tmp_path):
    write_image(tmp_path / "a.jpg", make_photo(1))
    write_image(tmp_path / "b.png", make_photo(2))
    ds = discover(tmp_path)
    assert not ds.labelled and len(ds) == 2


def test_links_never_relabel_nor_double_count(tmp_path):
    """Issue 24: a link to another class folder (dog -> elsewhere) counted elsewhere's images twice, once as dog;
    now every image is counted once, under the folder it lies in, and the link is named as left out."""
    write_image(tmp_path / "cat" / "a.jpg", make_photo(1))
    write_image(tmp_path / "cat" / "deeper" / "b.jpg", make_photo(2))
    os.symlink(tmp_path / "cat", tmp_path / "cat" / "deeper" / "loop")
    write_image(tmp_path / "elsewhere" / "c.jpg", make_photo(3))
    os.symlink(tmp_path / "elsewhere", tmp_path / "dog")
    ds = discover(tmp_path)
    assert ds.class_names == ["cat", "elsewhere"]
    assert len(ds) == 3
    assert ds.skipped["symlink cycle"] == 1
    reasons = {p.name: why for p, why in ds.left_out}
    assert reasons["dog"].startswith("link to elsewhere/ inside the dataset")


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "cls").mkdir()
    with pytest.raises(FeatxError, match="no images found"):
        discover(tmp_path)
    with pytest.raises(FeatxError, match="no such folder"):
        discover(tmp_path / "missing")


def test_from_paths_mixes_files_and_folders(tmp_path):
    a = write_image(tmp_path / "a.jpg", make_photo(1))
    write_image(tmp_path / "sub" / "b.jpg", make_photo(2))
    ds = from_paths([a, tmp_path / "sub"])
    assert [p.name for p in ds.paths] == ["a.jpg", "b.jpg"]
