"""int8 extraction (issue 29): its own cache key, a deterministic calibrated model, bundles that predict with it,
a parity bound that refuses a broken calibration, and the cleanup of a killed conversion's working folder.

The network here is a tiny stand-in (two convolutions) built in place of mobilenet_v2's feature model, so that a
real int8 conversion with TensorFlow's converter takes seconds; everything else (calibration choice, cache,
LiteRT engine, parity check, bundle, predict) is featx's own code path.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import require_extra, tinted, write_image
from featx.cache import cache_path
from featx.config import ExtractorConfig
from featx.engines import calibration as calibrations
from featx.engines.litert import TEMP_PREFIX, clean_stale_temp, converted_path
from featx.errors import FeatxError


def tiny_feature_model(self):
    """A small seeded network with mobilenet_v2's input and a ``pre_logits`` output (stands in for the backbone)."""
    from featx import _tf

    keras = _tf.keras()
    keras.backend.clear_session()  # layer names restart (they are in the converted file, as in a new process)
    keras.utils.set_random_seed(0)
    L = keras.layers
    image = keras.Input((self.spec.input_size, self.spec.input_size, 3))
    x = L.Conv2D(8, 3, strides=4, activation="relu")(image)
    x = L.Conv2D(16, 3, strides=4, activation="relu")(x)
    return keras.Model(image, {"pre_logits": L.GlobalAveragePooling2D()(x)})


@pytest.fixture(autouse=True)
def int8_allowed(monkeypatch):
    """These tests exercise the machinery, whatever backbones the measurements turned int8 off for."""
    import featx.config

    monkeypatch.setattr(featx.config, "INT8_REFUSED", {})


@pytest.fixture
def tiny(monkeypatch):
    require_extra("ai_edge_litert", "int8 runs on the LiteRT engine")
    monkeypatch.setattr(ExtractorConfig, "feature_model", tiny_feature_model)


def dataset(root: Path, per_class: int = 6) -> Path:
    for c, name in enumerate(("red", "green")):
        for i in range(per_class):
            write_image(root / name / f"{name}{i}.jpg", tinted(10 * c + i, c, size=(60, 80)))
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_int8_has_a_cache_key_and_model_file_of_its_own():
    f32 = ExtractorConfig("mobilenet_v2", weights=None)
    a = ExtractorConfig("mobilenet_v2", weights=None, precision="int8", calibration="0" * 16)
    b = a.calibrated("1" * 16)
    assert "precision" not in f32.cache_key()  # float32's key is the key every existing cache was made with
    assert a.cache_key()["precision"] == "int8" and a.cache_key()["calibration"] == "0" * 16
    assert len({cache_path("c", k.cache_key()) for k in (f32, a, b)}) == 3
    assert len({converted_path("c", k) for k in (f32, a, b)}) == 3
    with pytest.raises(FeatxError, match="calibration is not chosen"):
        ExtractorConfig("mobilenet_v2", weights=None, precision="int8").cache_key()
    with pytest.raises(FeatxError):
        ExtractorConfig("mobilenet_v2", precision="int8", mixed_precision=True)
    with pytest.raises(FeatxError):
        ExtractorConfig("mobilenet_v2", calibration="0" * 16)  # float32 has no calibration


def test_a_backbone_int8_is_off_for_is_refused_with_the_measurement(monkeypatch):
    import featx.config

    monkeypatch.setitem(featx.config.INT8_REFUSED, "mobilenet_v2", "heads lost 2.5 points on cifar10_3k")
    with pytest.raises(FeatxError, match="int8 is off for mobilenet_v2: heads lost 2.5 points"):
        ExtractorConfig("mobilenet_v2", precision="int8")
    assert ExtractorConfig("mobilenet_v2").precision == "float32"


def test_calibration_is_chosen_by_content_keys_alone():
    keys = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(150)]
    paths = [Path(f"img{i}.jpg") for i in range(150)]
    one = calibrations.choose(paths, keys)
    shuffled = np.random.default_rng(0).permutation(150)
    two = calibrations.choose([paths[i] for i in shuffled], [keys[i] for i in shuffled])
    assert one.id == two.id and one.keys == tuple(sorted(keys)[:100]) and len(one.probe_keys) == 4
    assert not set(one.probe_keys) & set(one.keys)  # the probe is held out from calibration
    splits = ["train" if i % 2 else "val" for i in range(150)]
    train_only = calibrations.choose(paths, keys, splits)
    assert set(train_only.keys) <= {k for k, s in zip(keys, splits) if s == "train"}


@pytest.mark.timeout(240)
def test_the_same_data_gives_the_same_int8_model_and_a_bundle_predicts_with_it(tiny, tmp_path):
    from featx.extract import cached_rows, extract
    from featx.datasets import discover
    from featx.prediction import predict
    from featx.training import fit_head

    data = dataset(tmp_path / "data")
    models = []
    for run in ("a", "b"):
        cache = tmp_path / f"cache-{run}"
        stale = cache / "engines" / f"{TEMP_PREFIX}{dead_pid()}-x"  # as a killed conversion leaves it
        stale.mkdir(parents=True)
        report = extract(data, "mobilenet_v2", weights=None, precision="int8", cache_dir=cache, progress=False)
        assert report.computed == 12 and report.engine == "litert"
        assert not stale.exists()
        models.append(converted_path(cache, report.extractor))
    assert models[0].name == models[1].name and sha(models[0]) == sha(models[1])

    cache = tmp_path / "cache-a"
    result = fit_head(data, weights=None, precision="int8", cache_dir=cache, out_dir=tmp_path / "out",
                      val_fraction=0.25, test_fraction=0.25)
    from featx.bundle import load_bundle

    ext = load_bundle(result.bundle).extractor
    assert ext["precision"] == "int8" and ext["calibration"] == report.extractor.calibration
    new = write_image(tmp_path / "new" / "photo.jpg", tinted(77, 1, size=(60, 80)))
    caches_before = sorted(p.name for p in cache.glob("mobilenet_v2-*"))
    table = predict(result.bundle, tmp_path / "new", cache_dir=cache, engine="litert")
    assert len(table) == 1
    assert sorted(p.name for p in cache.glob("mobilenet_v2-*")) == caches_before  # no float32 cache was made
    keys, _, _ = cached_rows(discover(new.parent), report.extractor, cache)
    assert keys[0] is not None  # the new photo's row went into the int8 cache, made by the int8 model


@pytest.mark.timeout(240)
def test_a_broken_calibration_fails_the_parity_bound_loudly(tiny, tmp_path, monkeypatch):
    from featx.extract import extract

    data = dataset(tmp_path / "data", per_class=4)
    monkeypatch.setattr(calibrations.Calibration, "images",
                        lambda self, spec: np.zeros((len(self.keys), spec.input_size, spec.input_size, 3), np.uint8))
    from featx.datasets import discover
    from featx.extract import cached_rows

    for _ in range(2):  # converted and refused; then refused again from its record, never used
        with pytest.raises(FeatxError, match="fails its parity check"):
            extract(data, "mobilenet_v2", weights=None, precision="int8", cache_dir=tmp_path / "c", progress=False)
    chosen = calibrations.choose(*_keyed(data))
    config = ExtractorConfig("mobilenet_v2", weights=None, precision="int8", calibration=chosen.id)
    keys, _, _ = cached_rows(discover(data), config, tmp_path / "c")
    assert keys == [None] * 8  # no rows were stored


def test_int8_refuses_other_engines(tmp_path):
    from featx.extract import extract

    data = dataset(tmp_path / "data", per_class=2)
    with pytest.raises(FeatxError, match="LiteRT engine only"):
        extract(data, "mobilenet_v2", weights=None, precision="int8", cache_dir=tmp_path / "c", engine="keras",
                progress=False)


def _keyed(folder: Path):
    from featx.extract import image_keys

    found, keys = image_keys(folder)
    return found.paths, keys


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_conversions_working_folder_is_removed_and_a_live_ones_kept(tmp_path):
    dead = tmp_path / f"{TEMP_PREFIX}{dead_pid()}-abcd"
    live = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-efgh"
    legacy_old, legacy_new = tmp_path / "tmpold123", tmp_path / "tmpnew456"
    for d in (dead, live, legacy_old, legacy_new):
        (d / "saved").mkdir(parents=True)
        (d / "saved" / "saved_model.pb").write_bytes(b"x" * 100)
    os.utime(legacy_old, (time.time() - 7 * 3600,) * 2)
    (tmp_path / "mobilenet_v2-abc.tflite").write_bytes(b"model")
    removed = clean_stale_temp(tmp_path)
    assert sorted(removed) == sorted([dead, legacy_old])
    assert live.exists() and legacy_new.exists() and (tmp_path / "mobilenet_v2-abc.tflite").exists()
