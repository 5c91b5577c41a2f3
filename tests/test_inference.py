import numpy as np
import pytest

import featx.engines.litert as litert
from featx.config import ExtractorConfig
from featx.engines import KerasEngine, LiteRTEngine, make_engine
from featx.engines.litert import converted_path, probe_batch
from featx.extract import extract, load_features
from featx.prediction import predict
from featx.training import fit_head

from conftest import require_extra  # noqa: E402

require_extra("ai_edge_litert", "the default engine on a CPU")  # skipped without it, but a failure in CI
pytestmark = pytest.mark.slow  # LiteRT conversions: 15-25 s each

OFFLINE = ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def engine_for(name, taps, cache_dir, engine="litert", warnings=None, batch=2):
    config = ExtractorConfig(name, taps)
    return config.spec, make_engine(config, batch, engine, cache_dir, gpu=False,
                                    warn=(warnings.append if warnings is not None else None))


PARITY_TAPS = ["stage2", "stage4", "features", "pre_logits", "logits"]


@pytest.fixture(scope="module")
def engines_dir(engines_store):
    return engines_store  # the run's shared converted-engine store (conftest)


@pytest.mark.parametrize("name", OFFLINE)
def test_litert_matches_keras_on_every_tap(name, engines_dir):
    taps = PARITY_TAPS
    spec, engine = engine_for(name, taps, engines_dir)
    assert isinstance(engine, LiteRTEngine)
    x = probe_batch(spec, 2) // 2  # uint8, not the probe the conversion was checked on
    expected = spec.feature_model(taps).predict_on_batch(spec.normalize(x))
    got = engine.run(x)
    for tap in taps:
        assert got[tap].shape == expected[tap].shape
        assert np.abs(got[tap] - np.asarray(expected[tap])).max() < 1e-4, tap


def test_parity_failure_falls_back_to_keras_and_warns(tmp_path, monkeypatch):
    real_convert = litert.convert

    def perturbed(model, spec, path):
        layer = model.get_layer("logits")
        w, b = layer.get_weights()
        layer.set_weights([w, b + 0.01])  # a converted model that no longer matches
        try:
            return real_convert(model, spec, path)
        finally:
            layer.set_weights([w, b])

    monkeypatch.setattr(litert, "convert", perturbed)
    warnings = []
    _, engine = engine_for("mobilenet_v2", ["logits"], tmp_path, warnings=warnings)
    assert isinstance(engine, KerasEngine)
    assert len(warnings) == 1 and "disagree" in warnings[0]
    again = []
    _, engine = engine_for("mobilenet_v2", ["logits"], tmp_path, warnings=again)
    assert isinstance(engine, KerasEngine) and "failed its parity check" in again[0]


def test_converted_model_is_reused_and_rebuilt_when_damaged(engines_dir, tmp_path, monkeypatch):
    import shutil

    _, first = engine_for("efficientnet_lite0", PARITY_TAPS, engines_dir)  # converted by the parity test
    shutil.copytree(engines_dir / "engines", tmp_path / "engines")
    path = converted_path(tmp_path, ExtractorConfig("efficientnet_lite0", PARITY_TAPS))
    assert path.name == first.path.name and path.exists()
    calls = []
    real_convert = litert.convert
    monkeypatch.setattr(litert, "convert", lambda *a: calls.append(a) or real_convert(*a))
    _, second = engine_for("efficientnet_lite0", PARITY_TAPS, tmp_path)
    assert isinstance(second, LiteRTEngine) and calls == []  # reused, not converted again
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    warnings = []
    _, third = engine_for("efficientnet_lite0", PARITY_TAPS, tmp_path, warnings=warnings)
    assert len(calls) == 1 and "damaged or stale" in warnings[0]
    assert isinstance(third, LiteRTEngine)


def test_engine_is_recorded_but_rows_are_interchangeable(tmp_path, engines_dir):
    from conftest import make_photo, write_image
    from featx.cache import FeatureCache

    for c in ("a", "b"):
        for i in range(3):
            write_image(tmp_path / "data" / c / f"{i}.jpg", make_photo(i + 10 * (c == "b")))
    lite = extract(tmp_path / "data", cache_dir=engines_dir, engine="litert", batch_size=4)
    keras = extract(tmp_path / "data", cache_dir=tmp_path / "keras", engine="keras", batch_size=4)
    assert lite.cache_file.name == keras.cache_file.name  # the engine is not part of the key
    assert FeatureCache(lite.cache_file).info()["provenance"]["engine"] == "litert"
    a = load_features(tmp_path / "data", cache_dir=engines_dir, extract_missing=False)
    b = load_features(tmp_path / "data", cache_dir=tmp_path / "keras", extract_missing=False)
    np.testing.assert_allclose(a.codes["pre_logits"], b.codes["pre_logits"], atol=1e-4)


def test_predict_gives_the_same_classes_with_every_engine(tmp_path, engines_dir):
    from test_fit import tinted
    from conftest import write_image

    for c, name in enumerate(("red", "green", "blue")):
        for i in range(6):
            write_image(tmp_path / "data" / name / f"{i}.jpg", tinted(70 + 10 * c + i, c))
    result = fit_head(tmp_path / "data", cache_dir=tmp_path / "c1", out_dir=tmp_path / "out", engine="keras")
    caches = {"keras": tmp_path / "p-keras", "litert": engines_dir}  # the litert model converted above
    tables = {e: predict(result.bundle, [tmp_path / "data"], cache_dir=caches[e], engine=e, batch_size=4)
              for e in ("keras", "litert")}
    assert (tables["keras"]["predicted"] == tables["litert"]["predicted"]).all()
    np.testing.assert_allclose(tables["keras"]["probability"], tables["litert"]["probability"], atol=1e-3)


def test_auto_picks_litert_on_a_cpu_and_keras_on_a_gpu(engines_dir):
    config = ExtractorConfig("mobilenet_v2", PARITY_TAPS)
    cpu = make_engine(config, 2, "auto", engines_dir, gpu=False)
    gpu = make_engine(config, 2, "auto", engines_dir, gpu=True)
    assert (cpu.name, gpu.name) == ("litert", "keras")


def test_peek_through_litert_ranks_like_keras(sample_images, engines_dir):
    from featx.peek import peek

    paths = [sample_images["china"], sample_images["flower"]]
    keras = peek(paths, top=3, engine="keras")
    lite = peek(paths, top=3, engine="litert", cache_dir=engines_dir)
    assert [[c for c, _, _ in row] for row in lite] == [[c for c, _, _ in row] for row in keras]
    assert lite[0][0][1] == "palace"
