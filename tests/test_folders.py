"""Issue 24: real folders as users have them -- every image counted once under its own label, every name handled,
nothing dropped in silence.  Each test builds its tree from generated images (no /work/shared)."""

import json
import os

import pytest

from conftest import make_photo, tinted, write_image
from featx.cli import main
from featx.datasets import check_classes, discover, make_split
from featx.errors import FeatxError


def photos(folder, names, seed=0, tint=None):
    for i, name in enumerate(names):
        img = make_photo(seed + i, (24, 28)) if tint is None else tinted(seed + i, tint, size=(24, 28))
        write_image(folder / name, img)


def labels_of(ds):
    return {str(p.relative_to(ds.root)): ds.class_names[y] for p, y in zip(ds.paths, ds.labels)}


# ---- 1. one description: each image once, under its own folder ---------------------------------------------

def test_a_link_pointing_back_up_never_relabels_ants_as_bees(tmp_path):
    """*Why*: bees/loop -> .. made the ants reached through it bees; only the innermost repetition was caught."""
    photos(tmp_path / "ants", ["a0.jpg", "a1.jpg", "a2.jpg"])
    photos(tmp_path / "bees", ["b0.jpg", "b1.jpg"], seed=10)
    os.symlink("..", tmp_path / "bees" / "loop")
    (tmp_path / "ants" / "deep" / "deeper").mkdir(parents=True)
    os.symlink("../../..", tmp_path / "ants" / "deep" / "deeper" / "up")  # a cycle three folders down
    ds = discover(tmp_path)
    assert labels_of(ds) == {"ants/a0.jpg": "ants", "ants/a1.jpg": "ants", "ants/a2.jpg": "ants",
                             "bees/b0.jpg": "bees", "bees/b1.jpg": "bees"}
    reasons = {str(p.relative_to(tmp_path)): why for p, why in ds.left_out}
    assert reasons["bees/loop"] == "symlink cycle" and reasons["ants/deep/deeper/up"] == "symlink cycle"


def test_links_to_files_hard_links_and_links_out_of_the_root_count_once_or_are_named(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "outside"
    photos(root / "ants", ["a0.jpg", "a1.jpg"])
    photos(root / "bees", ["b0.jpg", "b1.jpg"], seed=10)
    photos(outside, ["o.jpg"], seed=20)
    os.symlink("../ants/a0.jpg", root / "bees" / "alias.jpg")       # a link to an ant: not a bee
    os.link(root / "ants" / "a1.jpg", root / "bees" / "hard.jpg")   # a second name of one file
    os.symlink(outside, root / "bees" / "more")                     # a folder out of the root
    os.symlink(outside / "o.jpg", root / "ants" / "o.jpg")          # a file out of the root
    os.symlink(root / "missing.jpg", root / "ants" / "gone.jpg")    # broken
    ds = discover(root)
    assert sorted(labels_of(ds).items()) == [("ants/a0.jpg", "ants"), ("ants/a1.jpg", "ants"),
                                             ("bees/b0.jpg", "bees"), ("bees/b1.jpg", "bees")]
    reasons = {str(p.relative_to(root)): why for p, why in ds.left_out}
    assert reasons["bees/alias.jpg"].startswith("link to ants/a0.jpg inside the dataset")
    assert reasons["bees/hard.jpg"].startswith(f"the same file as {root / 'ants' / 'a1.jpg'}")
    assert reasons["bees/more"].startswith("link leading out of") and reasons["ants/o.jpg"].startswith("link leading")
    assert reasons["ants/gone.jpg"] == "broken link"


@pytest.mark.parametrize("name", ["valid", "Validation", "VAL", "validate", "dev", "Dev"])
def test_every_spelling_of_validation_is_a_validation_folder(tmp_path, name):
    """*Why*: a Roboflow export's valid/ was left out and validation carved from train/."""
    for split, n in (("train", 4), (name, 2), ("test", 2)):
        for c, cls in enumerate(("cat", "dog")):
            photos(tmp_path / split / cls, [f"{split}{i}.jpg" for i in range(n)], seed=100 * c + 10 * len(split))
    ds = discover(tmp_path)
    assert sorted(set(ds.splits.tolist())) == ["test", "train", "val"] and len(ds) == 16
    keys = [str(p) for p in ds.paths]  # distinct contents: the paths stand in for content keys
    split = make_split(keys, ds.labels, ds.splits, class_names=ds.class_names)
    assert split.source == "folders" and (split.assignment == "val").sum() == 4
    assert {p.parent.parent.name for p, s in zip(ds.paths, split.assignment) if s == "val"} == {name}


def test_an_unknown_folder_beside_train_is_named_on_stderr_without_verbose(tmp_path, capsys):
    import logging

    from featx.cli.errors import log_to_stderr

    for split in ("train", "test", "extras"):
        photos(tmp_path / split / "cat", ["x.jpg"], seed=len(split))
        photos(tmp_path / split / "dog", ["y.jpg"], seed=50 + len(split))
    log_to_stderr(False)
    try:
        ds = discover(tmp_path)
    finally:
        logging.getLogger("featx").handlers.clear()
    err = capsys.readouterr().err
    assert "extras/" in err and "not split folders" in err, err
    assert len(ds) == 4 and ds.skipped["folder outside train/val/test"] == 2


def test_duplicates_under_another_label_stay_files_of_their_own_folder(tmp_path):
    photos(tmp_path / "cat", ["a.jpg"], seed=1)
    photos(tmp_path / "dog", ["copy-of-a.jpg"], seed=1)  # the same bytes, another file: a label conflict
    ds = discover(tmp_path)
    assert labels_of(ds) == {"cat/a.jpg": "cat", "dog/copy-of-a.jpg": "dog"}


# ---- 2. classes checked per split ---------------------------------------------------------------------------

def split_tree(root, val_classes):
    for c, cls in enumerate(("ants", "bees")):
        photos(root / "train" / cls, [f"t{i}.jpg" for i in range(4)], seed=10 * c, tint=c)
    for c, cls in enumerate(val_classes):
        photos(root / "val" / cls, [f"v{i}.jpg" for i in range(4)], seed=100 + 10 * c, tint=c)
    return root


@pytest.mark.parametrize("spelling", ["Bees", "ｂｅｅｓ"])  # letter case; Unicode compatibility form
def test_a_class_with_no_training_image_is_an_error_with_did_you_mean(tmp_path, capsys, spelling):
    """*Why*: val/Bees beside train/bees made three classes, trained on two, and scored the bees wrong."""
    root = split_tree(tmp_path / "d", ["ants", spelling])
    with pytest.raises(FeatxError, match=f"class '{spelling}' has no training image.*did you mean 'bees'"):
        check_classes(discover(root))
    assert main(["fit-head", str(root), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "did you mean 'bees'" in err[0] and str(root / "val" / spelling) in err[0], err
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()  # checked before any work


def test_a_class_missing_from_the_held_out_folder_is_a_warning_and_recorded(tmp_path, capsys):
    """*Why*: with val/ants only, fit-head said 1.000 and "smallest class 4" although bees had no test image."""
    root = split_tree(tmp_path / "d", ["ants"])
    assert check_classes(discover(root)) == [
        "class 'bees' has no image in the held-out set (val/ is the test set when there is no test/) (val/): "
        "no accuracy for it; the overall accuracy covers the other classes only"]
    assert main(["fit-head", str(root), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"),
                 "--engine", "keras"]) == 0
    out, err = capsys.readouterr()
    assert "featx: warning: class 'bees' has no image in the held-out set" in err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["classes_not_evaluated"] == ["bees"]
    assert metrics["test"]["smallest_class"] == 0 and metrics["test"]["classes_missing"] == ["bees"]
    assert "smallest class 0" in out and "no test image of class(es) 'bees'" in out, out
