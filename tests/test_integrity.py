"""Inputs taken at their word (issue 11): splits, orientation, discovery, cache integrity, resume.

Every test builds its own tiny images; none needs /work/shared.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import ROOT, make_photo, write_image
from featx import filling as extract_module  # the decode hook lives where the decoding is
from featx.cache import FeatureCache, content_key
from featx.cli import main
from featx.datasets import discover, from_paths, make_split
from featx.errors import FeatxError
from featx.extract import extract, hash_files, load_features
from featx.images import FORMATS, decode, is_image_path, load_image, looks_like_image, sniff_format

TAPS = ["stage4"]  # the smallest tap: these tests check which rows exist, not the codes' values


def split_of(root: Path, store: Path, **kw):
    """The split featx makes of a folder, without running a network (keys are content hashes)."""
    ds = discover(root)
    keys = [k for k, _ in hash_files(ds.paths)]
    split = make_split(keys, ds.labels, ds.splits, store=store, class_names=ds.class_names, paths=ds.paths, **kw)
    return ds, keys, split


# ---- 1. splits ------------------------------------------------------------------------------

def make_ants_bees(root: Path) -> Path:
    """The issue's first recipe: train/ 6 per class, val/ 3 per class plus copies of 2 training photos."""
    for c, cls in enumerate(("ants", "bees")):
        for i in range(6):
            write_image(root / "train" / cls / f"{cls}{i}.png", make_photo(10 * c + i, (24, 32)))
        for i in range(3):
            write_image(root / "val" / cls / f"v{cls}{i}.png", make_photo(100 + 10 * c + i, (24, 32)))
        for i in range(2):
            shutil.copy(root / "train" / cls / f"{cls}{i}.png", root / "val" / cls / f"copy{i}.png")
    return root


def test_recipe_1_copies_across_split_folders_stay_put_and_are_reported_once(tmp_path):
    data = make_ants_bees(tmp_path / "DATA")
    ds, keys, first = split_of(data, tmp_path / "cache")
    _, _, again = split_of(data, tmp_path / "cache")  # read back from the store this time
    assert (tmp_path / "cache" / "splits" / f"{first.id}.json").exists()
    assert again.id == first.id and list(again.assignment) == list(first.assignment)
    assigned = dict(zip(map(str, ds.paths), first.assignment))
    # the user's folders decide: every val/ file (copies too) is the test set, train/ files are train or val
    assert all(assigned[p] == "test" for p in assigned if "/val/" in p)
    assert all(assigned[p] in ("train", "val") for p in assigned if "/train/" in p)
    assert sum(s == "test" for s in first.assignment) == 10 and sum(s == "val" for s in first.assignment) == 2
    # four copies, each reported once as a pair (train-side file first)
    assert len(first.leakage) == 4
    for a, sa, b, sb in first.leakage:
        assert "/train/" in a and "/val/" in b and Path(b).name.startswith("copy")
        assert sa in ("train", "val") and sb == "test"
        assert Path(a).read_bytes() == Path(b).read_bytes()
    assert first.label_conflicts == []
    assert "leakage: 4 pair(s)" in first.warnings()[0]


def make_flat(root: Path, classes=("a", "b", "c"), per_class=15) -> Path:
    for c, cls in enumerate(classes):
        for i in range(per_class):
            write_image(root / cls / f"{cls}{i}.png", make_photo(1000 + 50 * c + i, (16, 16)))
    return root


def test_recipe_2_a_copy_under_a_new_name_changes_nothing(tmp_path):
    data = make_flat(tmp_path / "leaves")
    ds0, _, before = split_of(data, tmp_path / "cache")
    shutil.copy(data / "b" / "b3.png", data / "b" / "b3 copy.png")
    ds1, _, first = split_of(data, tmp_path / "cache")
    _, _, second = split_of(data, tmp_path / "cache")
    assert first.id == second.id == before.id  # a split is a function of the set of contents
    assert list(first.assignment) == list(second.assignment)
    by_path = dict(zip(map(str, ds1.paths), first.assignment))
    assert by_path[str(data / "b" / "b3 copy.png")] == by_path[str(data / "b" / "b3.png")]  # one group
    assert {str(p): s for p, s in zip(ds0.paths, before.assignment)} == \
        {p: s for p, s in by_path.items() if not p.endswith("copy.png")}
    assert first.leakage == [] and first.label_conflicts == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 11), st.integers(0, 2)), min_size=30, max_size=60),
       st.integers(0, 3), st.randoms(use_true_random=False))
def test_identical_files_never_straddle_and_order_does_not_matter(items, seed, rnd):
    # content c always has label c % 3 here (conflicts are tested separately); several copies per content
    items = [(c + 12 * copy, (c + 12 * copy) % 3) for c, copy in items]
    base = [(f"{c:032x}", y) for c, y in items] + [(f"{900 + i:032x}", i % 3) for i in range(30)]
    keys, labels = zip(*base)
    split = make_split(keys, labels, seed=seed)
    seen = {}
    for k, s in zip(keys, split.assignment):
        assert seen.setdefault(k, s) == s, "byte-identical files in two splits"
    order = list(range(len(keys)))
    rnd.shuffle(order)
    shuffled = make_split([keys[i] for i in order], [labels[i] for i in order], seed=seed)
    assert shuffled.id == split.id and [shuffled.assignment[j] for j in np.argsort(order)] == list(split.assignment)


def test_same_bytes_under_two_labels_is_a_label_conflict(tmp_path):
    data = make_flat(tmp_path / "d", per_class=6)
    shutil.copy(data / "a" / "a0.png", data / "c" / "looks_like_a.png")
    ds, _, split = split_of(data, None)
    assert split.label_conflicts == [[[str(data / "a" / "a0.png"), "a"], [str(data / "c" / "looks_like_a.png"), "c"]]]
    by_path = dict(zip(map(str, ds.paths), split.assignment))
    assert by_path[str(data / "a" / "a0.png")] == by_path[str(data / "c" / "looks_like_a.png")]
    assert "label conflict: 1 image(s)" in " ".join(split.warnings())


def test_train_and_test_folders_without_val_carve_val_from_train(tmp_path):
    for c, cls in enumerate(("x", "y")):
        for i in range(10):
            write_image(tmp_path / "d" / "train" / cls / f"{i}.png", make_photo(300 + 20 * c + i, (16, 16)))
        for i in range(4):
            write_image(tmp_path / "d" / "test" / cls / f"{i}.png", make_photo(400 + 20 * c + i, (16, 16)))
    ds, _, split = split_of(tmp_path / "d", None, val_fraction=0.25)
    assert split.source == "folders:val-from-train"
    assert list(split.assignment[ds.splits == "test"]) == ["test"] * 8
    train_side = split.assignment[ds.splits == "train"]
    assert (train_side == "val").sum() == 5 and (train_side == "train").sum() == 15  # 25% of the 20


# ---- 2. discovery ----------------------------------------------------------------------------

def test_macosx_plus_one_class_is_the_one_line_two_class_error(tmp_path, capsys):
    for i in range(4):
        write_image(tmp_path / "d" / "ants" / f"{i}.jpg", make_photo(i))
    (tmp_path / "d" / "__MACOSX" / "ants").mkdir(parents=True)
    (tmp_path / "d" / "__MACOSX" / "ants" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    (tmp_path / "d" / "empty").mkdir()
    ds = discover(tmp_path / "d")
    assert ds.class_names == ["ants"]
    assert sorted(ds.empty_folders) == [str(tmp_path / "d" / "__MACOSX"), str(tmp_path / "d" / "empty")]
    code = main(["fit-head", str(tmp_path / "d"), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"),
                 "--verbose"])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("featx: error:")]
    assert len(errors) == 1 and "at least 2 class folders" in errors[0] and "__MACOSX" in errors[0]
    assert "Traceback" not in err
    assert "__MACOSX: folder with no images" in err  # --verbose names what the scan left out


def test_a_class_named_train(tmp_path):
    for cls in ("bus", "train", "tram"):
        for i in range(2):
            write_image(tmp_path / cls / f"{i}.jpg", make_photo(i + len(cls)))
    ds = discover(tmp_path)
    assert ds.class_names == ["bus", "train", "tram"] and ds.splits is None and len(ds) == 6


def test_class_names_are_compared_after_nfc(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    write_image(tmp_path / "flat" / nfc / "1.jpg", make_photo(1))
    write_image(tmp_path / "flat" / nfd / "2.jpg", make_photo(2))
    write_image(tmp_path / "flat" / "tea" / "3.jpg", make_photo(3))
    with pytest.raises(FeatxError) as err:
        discover(tmp_path / "flat")
    assert str(tmp_path / "flat" / nfc) in str(err.value) and str(tmp_path / "flat" / nfd) in str(err.value)
    # across split folders the two spellings are one class
    write_image(tmp_path / "split" / "train" / nfc / "1.jpg", make_photo(1))
    write_image(tmp_path / "split" / "train" / "tea" / "1.jpg", make_photo(4))
    write_image(tmp_path / "split" / "test" / nfd / "2.jpg", make_photo(2))
    ds = discover(tmp_path / "split")
    assert ds.class_names == sorted([nfc, "tea"]) and len(ds) == 3


def test_one_format_list_for_scanner_decoder_and_serve(tmp_path):
    rgb = make_photo(7, (20, 30))
    pil_name = {"JPEG": "JPEG", "PNG": "PNG", "BMP": "BMP", "WebP": "WEBP", "TIFF": "TIFF", "GIF": "GIF"}
    for fmt in FORMATS:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, pil_name[fmt.name])
        data = buf.getvalue()
        assert sniff_format(data) is fmt and looks_like_image(data)
        for suffix in fmt.suffixes:
            assert is_image_path(f"x{suffix.upper()}")
        out = decode(data)
        assert out.shape == rgb.shape
        (tmp_path / f"img{fmt.suffixes[0]}").write_bytes(data)
    (tmp_path / "img.ppm").write_bytes(b"P6\n1 1\n255\n\x00\x00\x00")
    ds = discover(tmp_path)
    assert len(ds) == len(FORMATS)
    assert ds.left_out == [(tmp_path / "img.ppm", "not an image")]
    assert not looks_like_image(b"P6\n1 1\n255\n\x00\x00\x00")
    with pytest.raises(FeatxError, match="not a readable image"):
        decode(b"P6\n1 1\n255\n\x00\x00\x00")  # the decoder refuses what the scanner would not take
    import featx.serve

    assert "looks_like_image" in Path(featx.serve.__file__).read_text()  # serve asks the same list


def test_gif_first_frame(tmp_path):
    red, blue = np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    frames = [Image.fromarray(red), Image.fromarray(blue)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = load_image(tmp_path / "anim.gif")
    assert out.shape == (10, 12, 3) and (out[..., 0] > 200).all() and (out[..., 2] < 50).all()
    ds = from_paths([tmp_path])
    assert [p.name for p in ds.paths] == ["anim.gif"]


# ---- 3. orientation --------------------------------------------------------------------------

# the stored pixels for each EXIF orientation: the inverse of what a viewer applies to show it upright
_STORED = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
           7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}
_SAVE = {"JPEG": ("JPEG", {"quality": 95}), "PNG": ("PNG", {}), "WebP": ("WEBP", {"lossless": True}),
         "TIFF": ("TIFF", {})}


def _upright() -> np.ndarray:
    """64x48, landscape, every quadrant a different flat colour: any wrong turn or flip shows."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[:24, :32], img[:24, 32:], img[24:, :32], img[24:, 32:] = (230, 20, 20), (20, 230, 20), (20, 20, 230), \
        (230, 230, 20)
    img[:8, :8] = 255
    return img


@pytest.mark.parametrize("min_side", [None, 8])
@pytest.mark.parametrize("fmt", sorted(_SAVE))
def test_every_exif_format_comes_out_upright_once(tmp_path, fmt, min_side):
    assert {f.name for f in FORMATS if f.exif} == set(_SAVE)  # every accepted format that carries EXIF
    upright = _upright()
    for tag, op in _STORED.items():
        stored = Image.fromarray(upright) if op is None else Image.fromarray(upright).transpose(op)
        exif = Image.Exif()
        exif[0x0112] = tag
        buf = io.BytesIO()
        name, options = _SAVE[fmt]
        stored.save(buf, name, exif=exif.tobytes(), **options)
        out = decode(buf.getvalue(), f"{fmt}-{tag}", min_side=min_side)
        want = upright if out.shape == upright.shape else cv2.resize(upright, out.shape[1::-1],
                                                                      interpolation=cv2.INTER_AREA)
        assert out.shape[0] * 4 == out.shape[1] * 3, f"{fmt} orientation {tag}: turned to {out.shape}"
        error = np.abs(out.astype(int) - want).mean()
        assert error < (6 if fmt == "JPEG" or min_side else 0.01), f"{fmt} orientation {tag}: off by {error:.1f}"


# ---- 4. cache integrity ----------------------------------------------------------------------

def make_dataset(root: Path, per_class=3, seed=0) -> Path:
    for c, cls in enumerate(("cat", "dog")):
        for i in range(per_class):
            write_image(root / cls / f"{cls}{i}.png", make_photo(seed + 100 * c + i, (40, 40)))
    return root


def test_a_file_swapped_between_hashing_and_decoding_is_never_stored_under_its_old_key(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d")
    victim = data / "cat" / "cat1.png"
    old_key = content_key(victim.read_bytes())
    replacement = write_image(tmp_path / "other.png", make_photo(999, (40, 40)))

    def swap(path):
        if Path(path) == victim:
            shutil.copy(replacement, victim)

    monkeypatch.setattr(extract_module, "BEFORE_DECODE_HOOK", swap)
    report = extract(data, taps=TAPS, cache_dir=tmp_path / "c", batch_size=2)
    assert [(p, r.split(" (")[0]) for p, r in report.failures] == [(victim, "changed during the run")]
    assert report.computed == 5
    cache = FeatureCache(report.cache_file)
    assert old_key not in cache.keys("stage4")  # the new image's codes are not under the old key
    assert content_key(replacement.read_bytes()) not in cache.keys("stage4")
    monkeypatch.setattr(extract_module, "BEFORE_DECODE_HOOK", None)
    again = extract(data, taps=TAPS, cache_dir=tmp_path / "c", batch_size=2)
    assert again.computed == 1 and again.failures == []  # the new content, under its own key


def test_decode_failures_are_remembered_until_retry_failed(tmp_path):
    data = make_dataset(tmp_path / "d")
    (data / "cat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really a png")
    (data / "dog" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    first = extract(data, taps=TAPS, cache_dir=tmp_path / "c")
    assert first.computed == 6 and len(first.failures) == 2 and first.engine is not None
    second = extract(data, taps=TAPS, cache_dir=tmp_path / "c")
    assert second.engine is None and second.computed == 0  # the network was not loaded again
    assert sorted(p.name for p, _ in second.failures) == ["corrupt.png", "truncated.jpg"]
    assert all("failed the same way before" in r for _, r in second.failures)
    retried = extract(data, taps=TAPS, cache_dir=tmp_path / "c", retry_failed=True)
    assert retried.engine is not None and len(retried.failures) == 2
    write_image(data / "cat" / "corrupt.png", make_photo(77, (40, 40)))  # fixed: new bytes, new key
    fixed = extract(data, taps=TAPS, cache_dir=tmp_path / "c")
    assert fixed.computed == 1 and [p.name for p, _ in fixed.failures] == ["truncated.jpg"]


# ---- 5. resume -------------------------------------------------------------------------------

KILL_AFTER_FIRST_BATCH = textwrap.dedent("""
    import os, signal, sys
    from featx.cache import FeatureCache
    from featx.extract import extract

    append = FeatureCache.append

    def append_then_die(self, rows):
        path = append(self, rows)
        os.kill(os.getpid(), signal.SIGKILL)  # killed right after the first batch was journalled
        return path

    FeatureCache.append = append_then_die
    extract(sys.argv[1], taps=["stage4"], cache_dir=sys.argv[2], batch_size=4, workers=1)
""")


def test_sigkill_after_the_first_batch_the_rerun_computes_only_the_rest(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=5, seed=40)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_BATCH, str(data), str(tmp_path / "c")],
                          cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    report = extract(data, taps=TAPS, cache_dir=tmp_path / "c", batch_size=4)
    assert report.cached == 4 and report.computed == 6


# ---- 6. load_features and fit-head: one split --------------------------------------------------

@pytest.fixture(scope="module")
def fitted_twice(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    data = make_ants_bees(tmp / "DATA")
    runs = []
    for i in range(2):
        out = tmp / f"out{i}"
        code = main(["fit-head", str(data), "--tap", "stage4", "--cache", str(tmp / "c"), "--out", str(out)])
        assert code == 0
        runs.append(json.loads((out / "metrics.json").read_text()))
    return tmp, data, runs


def test_fit_head_twice_same_split_and_leakage_in_metrics(fitted_twice, capsys):
    _, _, (m1, m2) = fitted_twice
    assert m1["split_id"] == m2["split_id"] and m1["n"] == m2["n"] == {"train": 10, "val": 2, "test": 10}
    assert m1["accuracy"] == m2["accuracy"]
    assert len(m1["leakage"]) == 4 and m1["label_conflicts"] == []


def test_load_features_gives_fit_heads_split(fitted_twice):
    tmp, data, (m1, _) = fitted_twice
    feats = load_features(data, taps=["stage4"], cache_dir=tmp / "c", extract_missing=False)
    assert feats.split_id == m1["split_id"]
    assert {s: int((feats.split == s).sum()) for s in ("train", "val", "test")} == m1["n"]
    assert set(feats.split[feats.given_splits == "val"]) == {"test"}  # the val/ folder is the test set
    other = load_features(data, taps=["stage4"], cache_dir=tmp / "c", extract_missing=False, seed=1,
                          val_fraction=0.4)
    assert other.split_id != feats.split_id and (other.split == "val").sum() == 5


def test_predict_takes_the_gif_in_a_folder(fitted_twice, tmp_path, capsys):
    tmp, data, _ = fitted_twice
    folder = tmp_path / "new"
    write_image(folder / "a.png", make_photo(5, (24, 32)))
    Image.fromarray(make_photo(6, (24, 32))).save(folder / "b.gif")
    capsys.readouterr()
    code = main(["predict", str(tmp / "out0" / "model.featx"), str(folder), "--cache", str(tmp / "c")])
    out = capsys.readouterr().out
    assert code == 0
    assert sorted(Path(line.split(",")[0]).name for line in out.splitlines()[1:]) == ["a.png", "b.gif"]
