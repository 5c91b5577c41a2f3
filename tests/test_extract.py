import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, make_photo, write_image
from featx.backbones.registry import get_backbone
from featx.cache import CacheLockedError, FeatureCache
from featx.cli import main
from featx.extract import extract, load_features
from featx.images import load_image

TAPS = ["pre_logits", "stage4"]


def make_dataset(root: Path, classes=("cat", "dog"), per_class=4, seed=0, size=(40, 52)) -> Path:
    for c, cls in enumerate(classes):
        for i in range(per_class):
            write_image(root / cls / f"{cls}{i}.jpg", make_photo(seed + 100 * c + i, size))
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A small dataset and the codes the network gives on it, computed directly."""
    root = make_dataset(tmp_path_factory.mktemp("data"))
    spec = get_backbone("mobilenet_v2")
    model = spec.feature_model(TAPS)
    paths = sorted(root.glob("*/*.jpg"))
    out = model.predict(spec.preprocess([load_image(p) for p in paths]), verbose=0)
    return root, {p.name: {t: out[t][i] for t in TAPS} for i, p in enumerate(paths)}


def check_codes(features, expected, atol=1e-5):
    for i, path in enumerate(features.paths):
        for t in TAPS:
            np.testing.assert_allclose(features.codes[t][i], expected[path.name][t], atol=atol)


def test_codes_equal_the_backbone_through_its_preprocessing(reference, tmp_path):
    root, expected = reference
    feats = load_features(root, taps=TAPS, cache_dir=tmp_path, batch_size=3)
    assert len(feats.paths) == 8 and feats.class_names == ["cat", "dog"]
    assert list(feats.y) == [0] * 4 + [1] * 4
    assert feats.codes["pre_logits"].shape == (8, 1280) and feats.codes["stage4"].shape == (8, 96)
    check_codes(feats, expected)
    assert FeatureCache(feats.cache_file).verify() == []


def test_incremental_run_computes_only_new_images(reference, tmp_path):
    root, expected = reference
    data = tmp_path / "data"
    shutil.copytree(root, data)
    first = extract(data, taps=TAPS, cache_dir=tmp_path / "c")
    assert (first.computed, first.cached) == (8, 0)
    again = extract(data, taps=TAPS, cache_dir=tmp_path / "c")
    assert (again.computed, again.cached) == (0, 8)
    write_image(data / "cat" / "new.jpg", make_photo(999, (40, 52)))
    third = extract(data, taps=TAPS, cache_dir=tmp_path / "c")
    assert (third.computed, third.cached) == (1, 8)
    # a tap not cached yet is computed for every image, the others are kept
    fourth = extract(data, taps=["stage3"], cache_dir=tmp_path / "c")
    assert fourth.computed == 9
    assert FeatureCache(fourth.cache_file).info()["taps"]["pre_logits"]["rows"] == 9


def test_img_per_second_leaves_out_making_the_engine(reference, tmp_path, monkeypatch):
    """A first run converts or builds the network: that one-time cost is reported apart, not as a slow rate."""
    import featx.engines

    root, _ = reference
    real = featx.engines.make_engine

    def slow_make_engine(*args, **kwargs):
        time.sleep(1.5)  # stands in for a one-time conversion
        return real(*args, **kwargs)

    monkeypatch.setattr(featx.engines, "make_engine", slow_make_engine)
    report = extract(root, "mobilenet_v2", cache_dir=tmp_path, progress=False)
    assert report.computed == 8 and report.engine_seconds >= 1.5
    assert report.images_per_second == pytest.approx(8 / (report.seconds - report.engine_seconds))
    assert f"engine ready in {report.engine_seconds:.1f}s" in report.summary()


def test_renamed_or_duplicated_file_reuses_its_row(reference, tmp_path):
    root, expected = reference
    data = tmp_path / "data"
    shutil.copytree(root, data)
    extract(data, taps=TAPS, cache_dir=tmp_path / "c")
    (data / "cat" / "cat0.jpg").rename(data / "dog" / "renamed.jpg")
    shutil.copy(data / "dog" / "dog1.jpg", data / "cat" / "copy.jpg")
    report = extract(data, taps=TAPS, cache_dir=tmp_path / "c")
    assert report.computed == 0 and report.cached == 9
    feats = load_features(data, taps=TAPS, cache_dir=tmp_path / "c", extract_missing=False)
    i = [p.name for p in feats.paths].index("renamed.jpg")
    np.testing.assert_allclose(feats.codes["pre_logits"][i], expected["cat0.jpg"]["pre_logits"], atol=1e-5)
    assert feats.labels[i] == "dog" and feats.y[i] == feats.class_names.index("dog")  # labels come from the dataset


def test_bad_files_are_reported_and_skipped(reference, tmp_path, capsys, engine):
    root, expected = reference
    atol = 1e-4 if engine == "litert" else 1e-5  # LiteRT's parity check guarantees 1e-4 against Keras
    data = tmp_path / "data"
    shutil.copytree(root, data)
    (data / "cat" / "empty.png").write_bytes(b"")
    (data / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (data / "dog" / "readme.txt").write_text("not an image")
    write_image(data / "dog" / "tiny.png", make_photo(5, (3, 3)))
    trunc = data / "dog" / "truncated.jpg"
    write_image(trunc, make_photo(6, (300, 400)))
    trunc.write_bytes(trunc.read_bytes()[:300])
    code = main(["extract", str(data), "--cache", str(tmp_path / "c"), "--taps", ",".join(TAPS),
                 "--batch-size", "2"])  # the engine from $FEATX_ENGINE (the `engine` fixture)
    out, err = capsys.readouterr()
    assert code == 3
    assert "8 extracted" in out and "4 skipped" in out and "1 not an image" in err  # the scan's count: stderr
    for name in ("empty.png", "corrupt.jpg", "tiny.png", "truncated.jpg"):
        assert any(line.startswith("skipped") and name in line for line in out.splitlines()), name
    feats = load_features(data, taps=TAPS, cache_dir=tmp_path / "c")
    assert len(feats.paths) == 8 and len(feats.failures) == 4
    check_codes(feats, expected, atol)
    info = FeatureCache(feats.cache_file).info()
    assert info["provenance"]["engine"] == engine
    assert len(info["failures"]) == 4  # also recorded in the cache's metadata


def test_configurations_are_never_mixed(reference, tmp_path):
    root, _ = reference
    avg = load_features(root, cache_dir=tmp_path, pooling="avg", taps=["stage4"])
    mx = load_features(root, cache_dir=tmp_path, pooling="max", taps=["stage4"])
    half = load_features(root, cache_dir=tmp_path, pooling="avg", taps=["stage4"], dtype="float16")
    assert len({avg.cache_file, mx.cache_file, half.cache_file}) == 3
    assert not np.allclose(avg.codes["stage4"], mx.codes["stage4"])
    np.testing.assert_allclose(half.codes["stage4"], avg.codes["stage4"], rtol=2e-3, atol=2e-3)
    assert FeatureCache(half.cache_file).info()["taps"]["stage4"]["dtype"] == "float16"


def test_second_writer_gets_a_clear_error(tmp_path):
    path = tmp_path / "x.h5"
    with FeatureCache(path, {}):
        with pytest.raises(CacheLockedError, match="another featx process"):
            FeatureCache(path, {}).lock()
    FeatureCache(path, {}).lock().unlock()  # free again afterwards


KILL_SCRIPT = textwrap.dedent("""
    import sys
    if sys.argv[3]:  # the test run's shared LiteRT store: no conversion in this process
        sys.path.insert(0, sys.argv[4])
        from conftest import redirect_engines
        redirect_engines(sys.argv[3])
    from featx.extract import extract
    extract(sys.argv[1], taps=["pre_logits", "stage4"], cache_dir=sys.argv[2], batch_size=2, flush_rows=2)
""")


@pytest.mark.slow
def test_sigkill_mid_run_leaves_a_readable_cache_and_resumes(tmp_path, engine, request):
    store = ""
    if engine == "litert":  # convert once, in this process, into the shared store the subprocess will use
        store = str(request.getfixturevalue("shared_engines"))
        extract(make_dataset(tmp_path / "warm", per_class=1, seed=49), taps=TAPS, cache_dir=tmp_path / "w",
                batch_size=2)
    n = 60 if engine == "keras" else 120  # LiteRT is faster: more images to be killed in the middle of
    data = make_dataset(tmp_path / "data", per_class=n // 2, seed=50)
    cache_dir = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(data), str(cache_dir), store,
                             str(ROOT / "tests")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    journal = None
    while time.time() < deadline and proc.poll() is None:
        parts = list(cache_dir.glob("*/journal/part-*.npz"))
        if len(parts) >= 3:
            journal = parts[0].parent
            break
        time.sleep(0.05)
    assert proc.poll() is None, "extraction finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert journal is not None
    cache = FeatureCache(journal.parent)
    assert cache.verify() == []
    partial = cache.keys("pre_logits")
    assert 0 < len(partial) < n

    report = extract(data, taps=TAPS, cache_dir=cache_dir, batch_size=2)
    assert report.cached == len(partial) and report.computed == n - len(partial)
    assert FeatureCache(report.cache_file).info()["provenance"]["engine"] == engine
    resumed = load_features(data, taps=TAPS, cache_dir=cache_dir, extract_missing=False)
    clean = load_features(data, taps=TAPS, cache_dir=tmp_path / "clean", batch_size=2)
    for t in TAPS:
        np.testing.assert_allclose(resumed.codes[t], clean.codes[t], atol=1e-5)
    assert FeatureCache(report.cache_file).verify() == []
    assert not list(journal.glob("part-*"))


def test_cache_cli_ls_info_verify(reference, tmp_path, capsys):
    root, _ = reference
    feats = load_features(root, cache_dir=tmp_path, taps=["stage4"])
    assert main(["cache", "ls", str(tmp_path)]) == 0
    assert "stage4 8x96" in capsys.readouterr().out
    assert main(["cache", "info", str(feats.cache_file)]) == 0
    assert '"backbone": "mobilenet_v2"' in capsys.readouterr().out
    assert main(["cache", "verify", str(feats.cache_file)]) == 0
    segment = next((feats.cache_file / "segments").glob("seg-*.h5"))  # the cache is a folder of segments
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) // 3])
    assert main(["cache", "verify", str(feats.cache_file)]) == 1
    assert "cannot read" in capsys.readouterr().out
