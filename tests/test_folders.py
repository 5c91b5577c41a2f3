"""Issue 24: real folders as users have them -- every image counted once under its own label, every name handled,
nothing dropped in silence.  Each test builds its tree from generated images (no /work/shared)."""

import json
import os
from pathlib import Path

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
    os.link(root / "ants" / "a1.jpg", root / "ants" / "hard.jpg")   # a second name of one file, same class
    os.symlink(outside, root / "bees" / "more")                     # a folder out of the root
    os.symlink(outside / "o.jpg", root / "ants" / "o.jpg")          # a file out of the root
    os.symlink(root / "missing.jpg", root / "ants" / "gone.jpg")    # broken
    ds = discover(root)
    assert sorted(labels_of(ds).items()) == [("ants/a0.jpg", "ants"), ("ants/a1.jpg", "ants"),
                                             ("bees/b0.jpg", "bees"), ("bees/b1.jpg", "bees")]
    reasons = {str(p.relative_to(root)): why for p, why in ds.left_out}
    assert reasons["bees/alias.jpg"].startswith("link to ants/a0.jpg inside the dataset")
    assert reasons["ants/hard.jpg"].startswith(f"the same file as {root / 'ants' / 'a1.jpg'}")
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


def test_a_link_to_a_left_out_file_says_it_is_counted_nowhere(tmp_path):
    """*Why*: ants/viahidden.png -> ../.stash/h.png was "counted where it lies" though .stash/ is hidden: nowhere."""
    photos(tmp_path / "ants", ["a0.png", "a1.png"])
    photos(tmp_path / "bees", ["b0.png", "b1.png"], seed=10)
    photos(tmp_path / ".stash", ["h.png"], seed=20)
    photos(tmp_path, ["loose.png"], seed=30)
    os.symlink("../.stash/h.png", tmp_path / "ants" / "viahidden.png")
    os.symlink("../loose.png", tmp_path / "bees" / "vialoose.png")
    os.symlink("../.stash", tmp_path / "bees" / "stash")
    os.symlink("../ants/a0.png", tmp_path / "bees" / "alias.png")  # its target is counted: the old message holds
    ds = discover(tmp_path)
    reasons = {str(p.relative_to(tmp_path)): why for p, why in ds.left_out}
    assert reasons["ants/viahidden.png"] == ("link to .stash/h.png inside the dataset, which is left out too "
                                             "(hidden): counted nowhere")
    assert reasons["bees/vialoose.png"] == ("link to loose.png inside the dataset, which is left out too "
                                            "(outside class folders): counted nowhere")
    assert reasons["bees/stash"].endswith("left out too (hidden): counted nowhere")
    assert reasons["bees/alias.png"] == "link to ants/a0.png inside the dataset (counted where it lies, under its own folder)"


def test_class_folders_that_all_link_out_of_the_root_are_named_in_the_error(tmp_path):
    """*Why*: outer/ants -> elsewhere/ants (every class a link) said only "no images found", even with -v."""
    photos(tmp_path / "elsewhere" / "ants", ["a0.png"])
    photos(tmp_path / "elsewhere" / "bees", ["b0.png"], seed=10)
    (tmp_path / "outer").mkdir()
    for cls in ("ants", "bees"):
        os.symlink(tmp_path / "elsewhere" / cls, tmp_path / "outer" / cls)
    with pytest.raises(FeatxError, match=r"outer: no images found: 2 link\(s\) in it lead out of the dataset's folder "
                       r"and are not followed \(e\.g\. .*outer/ants -> .*elsewhere/ants\)"):
        discover(tmp_path / "outer")


def test_duplicates_under_another_label_stay_files_of_their_own_folder(tmp_path):
    photos(tmp_path / "cat", ["a.jpg"], seed=1)
    photos(tmp_path / "dog", ["copy-of-a.jpg"], seed=1)  # the same bytes, another file: a label conflict
    ds = discover(tmp_path)
    assert labels_of(ds) == {"cat/a.jpg": "cat", "dog/copy-of-a.jpg": "dog"}


def test_hard_links_across_classes_or_splits_are_reported_like_byte_identical_copies(tmp_path):
    """*Why*: val/bees/1.png hard-linked as train/ants/x.png was kept once, as an ant in train: wrong label, dropped
    from val, and no leakage or label conflict reported (a byte-identical copy in the same places is reported)."""
    import hashlib
    root = tmp_path / "d"
    for s, split in enumerate(("train", "val", "test")):
        for c, cls in enumerate(("ants", "bees")):
            photos(root / split / cls, [f"{i}.png" for i in range(3)], seed=100 * s + 10 * c, tint=c)
    os.link(root / "test" / "ants" / "0.png", root / "train" / "ants" / "hl.png")             # a leak
    os.link(root / "val" / "bees" / "1.png", root / "train" / "ants" / "hl_wronglabel.png")   # a leak + a conflict
    ds = discover(root)
    labels = labels_of(ds)
    assert labels["val/bees/1.png"] == "bees" and labels["train/ants/hl_wronglabel.png"] == "ants"
    assert labels["test/ants/0.png"] == "ants" and labels["train/ants/hl.png"] == "ants"
    keys = [hashlib.sha256(p.read_bytes()).hexdigest() for p in ds.paths]
    split = make_split(keys, ds.labels, ds.splits, paths=ds.paths, class_names=ds.class_names)
    assert sorted((a.relative_to(root).as_posix(), b.relative_to(root).as_posix()) for a, _, b, _ in
                  ((Path(x[0]), 0, Path(x[2]), 0) for x in split.leakage)) == [
        ("train/ants/hl.png", "test/ants/0.png"), ("train/ants/hl_wronglabel.png", "val/bees/1.png")]
    assert [[(Path(p).relative_to(root).as_posix(), c) for p, c in group] for group in split.label_conflicts] == [
        [("train/ants/hl_wronglabel.png", "ants"), ("val/bees/1.png", "bees")]]


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


def test_extract_refuses_a_class_with_no_training_image_before_any_work(tmp_path, capsys):
    """*Why*: featx extract cached valid/Bees beside train/bees (rc 0) while fit-head refused it; docs say refused."""
    root = split_tree(tmp_path / "d", ["ants", "Bees"])
    assert main(["extract", str(root), "--cache", str(tmp_path / "c"), "--weights", "none"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "class 'Bees' has no training image" in err[0] and "did you mean 'bees'" in err[0], err
    assert not (tmp_path / "c").exists()


def test_a_class_missing_from_the_held_out_folder_is_a_warning(tmp_path):
    root = split_tree(tmp_path / "d", ["ants"])
    assert check_classes(discover(root)) == [
        "class 'bees' has no image in the held-out set (val/, the test set when there is no test/): "
        "no accuracy for it; the overall accuracy covers the other classes only"]
    (root / "test" / "bees").mkdir(parents=True)
    photos(root / "test" / "bees", ["x.jpg"], seed=77)
    photos(root / "test" / "ants", ["y.jpg"], seed=78)
    assert check_classes(discover(root)) == [
        "class 'bees' has no image in the validation set (val/): the head's settings are chosen without it"]


# ---- 3, 4, 5: predict on any folder; any name through every output; whole outputs; no traceback ----------

LATIN1_CLASS = os.fsdecode(b"gr\xfcn")  # a Latin-1 folder name: not UTF-8, a lone surrogate in Python


def put(path, rgb):
    """Write an image by its bytes (cv2.imwrite crashes the process on a non-UTF-8 name)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".png", rgb[:, :, ::-1].copy())[1].tobytes())
    return path


@pytest.fixture(scope="module")
def latin1(tmp_path_factory):
    """train/{red, grün} with a Latin-1 folder of Latin-1 file names, val/ holding red only; fitted once through
    the CLI (the one fit-head of this module: it carries the non-UTF-8 names and the class missing from val/)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("latin1")
    data = root / "data"
    for c, name in enumerate(("red", LATIN1_CLASS)):
        for i in range(4):
            put(data / "train" / name / os.fsdecode(b"caf\xe9 %d.png" % i), tinted(40 + 10 * c + i, 2 * c, (24, 28)))
    for i in range(3):
        put(data / "val" / "red" / f"v{i}.png", tinted(80 + i, 0, size=(24, 28)))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["fit-head", str(data), "--cache", str(root / "cache"), "--out", str(root / "out"),
                     "--engine", "keras", "--val-fraction", "0.25"])
    return root, data, code, out.getvalue(), err.getvalue()


def test_fit_head_on_latin1_names_writes_every_output(latin1):
    """*Why*: fit-head died in matplotlib after writing model.featx and metrics.json."""
    import pandas as pd

    root, data, code, out, err = latin1
    assert code == 0, err
    assert {p.name for p in (root / "out").iterdir()} == {"model.featx", "metrics.json", "confusion.png", "errors.json",
                                                      "codes_map.png", "gallery.html"}  # nothing half-written beside them
    metrics = json.loads((root / "out" / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"red", LATIN1_CLASS}  # JSON keeps the name itself (\udcfc escapes)
    assert "gr\\xfcn" in out  # the console shows the escape
    runs = pd.read_csv(root / "cache" / "runs.csv", encoding="utf-8")
    assert runs["output"].iloc[-1] == str(root / "out" / "model.featx")


def test_a_class_missing_from_the_held_out_folder_is_warned_and_recorded(latin1):
    """*Why*: with val/ants only, fit-head said 1.000 and "smallest class 4" although bees had no test image."""
    root, data, code, out, err = latin1
    assert "featx: warning: class 'gr\\xfcn' has no image in the held-out set" in err, err
    metrics = json.loads((root / "out" / "metrics.json").read_text())
    assert metrics["classes_not_evaluated"] == [LATIN1_CLASS]
    assert metrics["test"]["smallest_class"] == 0 and metrics["test"]["n"] == 3
    assert "smallest class 0" in out and "no test image of class(es) 'gr\\xfcn'" in out, out


def test_predict_and_export_write_latin1_names_readably_and_read_back_to_the_same_file(latin1, tmp_path, capsys):
    """*Why*: predict died with UnicodeEncodeError (pandas); cache export --data left an .npy without metadata."""
    import pandas as pd

    from featx.names import unshown

    root, data = latin1[:2]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(root / "out" / "model.featx"), str(data), "--cache", str(root / "cache"),
                 "--out", str(out)]) == 0
    table = pd.read_csv(out, encoding="utf-8")
    files = [unshown(f) for f in table["file"]]
    assert sorted(files) == sorted(str(p) for p in data.rglob("*.png")) and all(os.path.isfile(f) for f in files)
    assert "p_gr\\xfcn" in table.columns and set(table["true_label"]) == {"red", "gr\\xfcn"}
    (cache,) = (root / "cache").glob("mobilenet_v2-*")
    for fmt in ("npy", "parquet"):
        assert main(["cache", "export", str(cache), "--data", str(data), "--out", str(tmp_path / fmt),
                     "--format", fmt]) == 0
        meta = pd.read_parquet(next((tmp_path / fmt).rglob("*.parquet")))
        assert sorted(unshown(p) for p in meta["path"]) == sorted(files)
    capsys.readouterr()


def test_predict_takes_every_image_under_any_folder(latin1, tmp_path, capsys):
    """*Why*: new_photos/ with 8 photos and rejected/ with 2 gave "2 predictions written"."""
    root, data = latin1[:2]
    new = tmp_path / "new_photos"
    for i in range(8):
        put(new / f"{i}.png", tinted(900 + i, i % 3, size=(24, 28)))
    for i in range(2):
        put(new / "rejected" / f"r{i}.png", tinted(950 + i, 0, size=(24, 28)))
    assert main(["predict", str(root / "out" / "model.featx"), str(new), "--cache", str(root / "cache")]) == 0
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.endswith(".png") or ".png," in line]
    assert len(rows) == 10 and "true_label" not in out and "accuracy" not in out, out
    assert "folder names (rejected) are not read as labels" in err, err


def test_a_failed_fit_head_leaves_no_finished_looking_files_and_no_traceback(latin1, tmp_path, capsys, monkeypatch):
    import featx.outputs

    root, data = latin1[:2]

    def broken(*args, **kwargs):
        raise RuntimeError("the plot could not be drawn")

    monkeypatch.setattr(featx.outputs, "plot_confusion", broken)
    out = tmp_path / "out"
    code = main(["fit-head", str(data), "--cache", str(root / "cache"), "--out", str(out), "--engine", "keras",
                 "--val-fraction", "0.25"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "Traceback" not in "\n".join(err)
    assert err[-1] == ("featx: error: fit-head: unexpected RuntimeError in outputs.plot_confusion: the plot could not "
                       "be drawn; rerun with --debug (or FEATX_DEBUG=1) for the traceback"), err
    assert list(out.iterdir()) == []  # no model.featx, no metrics.json, no temporary file


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import featx.report

    def broken(*args, **kwargs):
        raise RuntimeError("column")

    monkeypatch.setattr(featx.report, "write_report", broken)
    (tmp_path / "runs.csv").write_text("time,dataset\n")
    argv = ["report", "--runs", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "r")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == ("featx: error: report: unexpected RuntimeError in report.run: column; rerun with --debug (or "
                   "FEATX_DEBUG=1) for the traceback\n"), err
    for how in ("flag", "env"):
        if how == "env":
            monkeypatch.setenv("FEATX_DEBUG", "1")
        assert main(argv + ["--debug"] if how == "flag" else argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):") and "RuntimeError: column" in err, err
        assert err.splitlines()[-1] == "featx: error: report: unexpected RuntimeError in report.run: column"


def test_names_escape_is_visible_and_reversible():
    from hypothesis import given, settings, strategies as st

    from featx.names import shown, unshown

    assert shown(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg" and shown("C:\\data\\x.jpg") == "C:\\data\\x.jpg"
    assert shown("caf\u00e9.jpg") == "caf\u00e9.jpg"  # valid UTF-8 is unchanged

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=12).map(os.fsdecode) | st.text(alphabet="\\x8f0a\udce9é", max_size=10))
    def roundtrip(name):
        text = shown(name)
        text.encode("utf-8")  # always writable as text
        assert unshown(text) == name

    roundtrip()


# ---- 7. report with a perfect and a zero score ------------------------------------------------------------

def test_report_renders_table_chart_and_html_with_a_1000_and_a_0000_run(tmp_path, capsys):
    """*Why*: one run at 1.000 made report fail ('xerr' must not contain negative values): 10/10 gave an upper
    Wilson bound of 0.9999999999999999, below the accuracy."""
    import csv

    from featx.runs import RUN_COLUMNS
    from featx.stats import wilson_interval

    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    for correct, n in ((10, 10), (0, 10), (7, 9), (1, 3), (49, 49)):
        low, high = wilson_interval(correct, n)
        assert 0.0 <= low <= correct / n <= high <= 1.0
    runs = tmp_path / "runs.csv"
    with open(runs, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUN_COLUMNS)
        w.writeheader()
        for dataset, acc in (("butterflies", 1.0), ("moths", 0.0)):
            w.writerow({"time": "2026-01-01 00:00:00", "dataset": dataset, "route": "cached",
                        "backbone": "mobilenet_v2", "taps": "pre_logits", "head": "logistic", "split_id": dataset[:6],
                        "n_train": 30, "n_val": 10, "n_test": 10, "train_acc": acc, "val_acc": acc, "test_acc": acc,
                        "extract_s": 1.0, "fit_s": 0.5, "output": ""})
    assert main(["report", "--runs", str(runs), "--out", str(tmp_path / "rep"), "--html"]) == 0
    out = capsys.readouterr().out
    assert "1.000 [0.722, 1.000]" in out and "0.000 [0.000, 0.278]" in out, out
    for name in ("summary.md", "summary.csv", "summary.png", "report.html"):
        assert (tmp_path / "rep" / name).stat().st_size > 100
    assert "butterflies" in (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")


def test_every_class_without_training_images_is_named_in_one_error(tmp_path):
    """A new user fixed val/Bees, reran, and only then learnt of the next class with no training image."""
    root = split_tree(tmp_path / "d", ["ants", "Bees"])
    photos(root / "test" / "wasps", ["w.jpg"], seed=5)
    with pytest.raises(FeatxError, match=r"2 classes have no training image: .*'Bees'.*did you mean 'bees'.*'wasps'"):
        check_classes(discover(root))
