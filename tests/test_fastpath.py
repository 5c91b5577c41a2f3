"""The fast path: no TensorFlow where it is not needed, one conversion per configuration,
decode threads sized from the cores.

The subprocess tests convert the model first (here, with TensorFlow), then run each command in
a fresh process and assert that neither ``tensorflow`` nor ``keras`` was imported there.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import numpy as np
import pytest

from conftest import ROOT, make_photo, write_image
from featx import _tf
from featx.config import ExtractorConfig
from featx.engines import KerasEngine, LiteRTEngine, litert_available, make_engine
from featx.errors import FeatxError
from featx.preprocess import decode_workers

litert_only = pytest.mark.skipif(not litert_available(), reason="ai-edge-litert is not installed")
no_gpu_sign = pytest.mark.skipif(_tf.gpu_sign(), reason="this machine shows a GPU: auto picks Keras there")

TAPS = ["logits"]  # one conversion serves extract, predict, peek and serve below

CHILD = textwrap.dedent("""
    import json, sys
    {body}
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
    print("HEAVY-MODULES " + json.dumps(heavy))
    sys.exit(code)
""")

CLI = "from featx.cli import main\ncode = main(json.loads(sys.argv[1]))"


def child_env():
    env = {k: v for k, v in os.environ.items() if k != "FEATX_ENGINE"}  # conftest pins Keras; children use auto
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_child(body: str, *args, timeout=300):
    proc = subprocess.run([sys.executable, "-c", CHILD.format(body=textwrap.dedent(body).strip()), *args],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)
    heavy = [line for line in proc.stdout.splitlines() if line.startswith("HEAVY-MODULES ")]
    assert heavy, f"child failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(heavy[-1].split(" ", 1)[1])


def engines_only(cache, dest):
    """A fresh cache folder holding only the converted models: every row must be computed."""
    shutil.copytree(cache / "engines", dest / "engines")
    return dest


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    from conftest import tinted

    from featx.training import fit_head

    root = tmp_path_factory.mktemp("fast")
    for c, name in enumerate(("red", "green", "blue")):
        for i in range(6):
            write_image(root / "data" / name / f"{name}{i}.jpg", tinted(40 + 10 * c + i, c))
    write_image(root / "new" / "new-photo.jpg", tinted(99, 1))
    cache = root / "cache"
    notes = []
    engine = make_engine(ExtractorConfig("mobilenet_v2", TAPS), 4, "litert", cache, gpu=False,
                         announce=notes.append)
    assert isinstance(engine, LiteRTEngine)
    result = fit_head(root / "data", taps=TAPS, cache_dir=cache, out_dir=root / "out", engine="keras")
    return {"root": root, "cache": cache, "bundle": result.bundle, "notes": notes, "engine": engine}


@litert_only
def test_conversion_says_what_it_does_and_how_long_it_takes(fast):
    first, done = fast["notes"]
    assert first.startswith("converting mobilenet_v2 (logits) for the LiteRT engine, once")
    assert "usually 15-30 s" in first and str(fast["cache"] / "engines") in first
    assert done.startswith("converted in ") and "matches Keras" in done


@litert_only
def test_one_conversion_serves_every_batch_size(fast):
    config = ExtractorConfig("mobilenet_v2", TAPS)
    keras = KerasEngine(config)
    images = np.stack([make_photo(s, (224, 224)) for s in range(3)])
    engine = fast["engine"]  # planned for 4
    for n in (1, 3, 4):
        batch = np.concatenate([images, images])[:n]
        got, want = engine.run(batch)["logits"], keras.run(batch)["logits"]
        assert got.shape == (n, 1000)
        assert np.abs(got - want).max() < 1e-4
    assert len(list((fast["cache"] / "engines").glob("*.tflite"))) == 1


@litert_only
@no_gpu_sign
def test_extract_runs_without_tensorflow(fast, tmp_path):
    from featx.extract import load_features

    cache = engines_only(fast["cache"], tmp_path)
    proc, heavy = run_child(CLI, json.dumps(["extract", str(fast["root"] / "data"), "--taps", "logits",
                                             "--cache", str(cache)]))
    assert proc.returncode == 0, proc.stderr
    assert "18 extracted" in proc.stdout and "litert" in proc.stdout
    assert heavy == []
    lite = load_features(fast["root"] / "data", taps=TAPS, cache_dir=cache, extract_missing=False)
    keras = load_features(fast["root"] / "data", taps=TAPS, cache_dir=fast["cache"], extract_missing=False)
    assert lite.keys == keras.keys and len(lite.keys) == 18
    np.testing.assert_allclose(lite.codes["logits"], keras.codes["logits"], atol=1e-4)


@litert_only
@no_gpu_sign
def test_predict_of_a_new_photo_runs_without_tensorflow(fast, tmp_path):
    cache = engines_only(fast["cache"], tmp_path)
    photo = fast["root"] / "new" / "new-photo.jpg"
    proc, heavy = run_child(CLI, json.dumps(["predict", str(fast["bundle"]), str(photo), "--cache", str(cache)]))
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.strip().splitlines()[:2]
    assert header.startswith("file,id,predicted") and row.split(",")[2] == "green"
    assert heavy == []


@litert_only
@no_gpu_sign
def test_peek_runs_without_tensorflow_once_converted(fast, sample_images):
    proc, heavy = run_child(CLI, json.dumps(["peek", str(sample_images["china"]), "--top", "1",
                                             "--cache", str(fast["cache"])]))
    assert proc.returncode == 0, proc.stderr
    assert "palace" in proc.stdout
    assert heavy == []


@litert_only
@no_gpu_sign
def test_serve_app_is_built_and_answers_without_tensorflow(fast, tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    cache = engines_only(fast["cache"], tmp_path)
    body = textwrap.dedent("""
        import cv2
        from starlette.testclient import TestClient
        from featx.serve import Predictor, create_app
        predictor = Predictor(sys.argv[1], engine="auto", cache_dir=sys.argv[2])
        client = TestClient(create_app(predictor, 2, 10**6))
        assert client.get("/health").json()["status"] == "ok"
        image = cv2.imread(sys.argv[3])[:, :, ::-1]
        proba = predictor.predict([image])
        print("ENGINE", predictor.engine, predictor.classes[int(proba.argmax())])
        code = 0
    """)
    proc, heavy = run_child(body, str(fast["bundle"]), str(cache), str(fast["root"] / "new" / "new-photo.jpg"))
    assert proc.returncode == 0, proc.stderr
    assert "ENGINE litert green" in proc.stdout
    assert heavy == []


@litert_only
def test_serve_says_when_it_is_ready_and_then_answers(fast, tmp_path):
    pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "featx.cli", "serve", str(fast["bundle"]), "--port", str(port),
                             "--cache", str(fast["cache"])], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        line = ""
        while time.monotonic() < deadline and "ready" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"serve exited {proc.returncode}: {proc.stderr.read()}")
        assert line.startswith("featx: ready in ") and f"http://127.0.0.1:{port}/" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:  # at once
            assert json.loads(response.read())["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@no_gpu_sign
def test_gpu_detection_and_versions_do_not_import_tensorflow():
    proc, heavy = run_child(textwrap.dedent("""
        from featx import _tf
        print("GPU", _tf.gpu_available(), json.dumps(_tf.versions()))
        code = 0
    """))
    assert "GPU False" in proc.stdout
    versions = json.loads(proc.stdout.split("GPU False ", 1)[1].splitlines()[0])
    assert versions["tensorflow"] and versions["keras"] and versions["device"] == "CPU"
    assert heavy == []


def test_a_sign_of_a_gpu_is_confirmed_with_tensorflow(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(_tf.glob, "glob", lambda pattern: ["/dev/nvidia0"])
    assert _tf.gpu_sign()
    asked = []
    _tf.gpu_available.cache_clear()
    monkeypatch.setattr(_tf, "keras", lambda: asked.append("tf"))
    try:
        import tensorflow as tf

        monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: ["GPU:0"])
        assert _tf.gpu_available() is True and asked == ["tf"]
    finally:
        _tf.gpu_available.cache_clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert not _tf.gpu_sign()


def test_decode_pool_is_sized_from_the_cores_left_beside_the_engine():
    assert decode_workers(None, engine_threads=1, cores=16) == 15  # a GPU engine: one feeding thread
    assert decode_workers(None, engine_threads=4, cores=16) == 12
    assert decode_workers(None, engine_threads=2, cores=2) == 1  # never zero; measured best on 2 cores
    assert [decode_workers(None, engine_threads=c, cores=c) for c in (4, 8, 16)] == [1, 2, 4]  # a quarter
    assert decode_workers(5, engine_threads=2, cores=2) == 5  # --workers wins
    with pytest.raises(FeatxError, match="workers"):
        decode_workers(0)


def test_extract_refuses_zero_workers_before_any_work(tmp_path):
    from featx.extract import extract

    write_image(tmp_path / "d" / "a" / "0.jpg", make_photo(1))
    with pytest.raises(FeatxError, match="workers: expected 1 or more, got 0"):
        extract(tmp_path / "d", cache_dir=tmp_path / "c", workers=0, engine="keras")
    assert not (tmp_path / "c").exists()


def test_extract_takes_one_config_value(tmp_path):
    from featx.extract import extract

    write_image(tmp_path / "d" / "a" / "0.jpg", make_photo(1))
    config = ExtractorConfig("mobilenet_v2", ["stage3", "stage3"], pooling="max")
    assert config.taps == ("stage3",)
    report = extract(tmp_path / "d", config, cache_dir=tmp_path / "c", batch_size=2, engine="keras")
    assert report.computed == 1 and "-max-" in report.cache_file.name
    with pytest.raises(TypeError, match="not both"):
        extract(tmp_path / "d", config, cache_dir=tmp_path / "c", pooling="avg")
    with pytest.raises(FeatxError, match="pooling"):
        ExtractorConfig(pooling="median")


def test_a_few_new_images_are_not_padded_to_a_full_batch(tmp_path):
    from featx.extract import extract

    class Recorder:
        name, threads = "recorder", 1
        shapes = []

        def run(self, batch):
            self.shapes.append(batch.shape)
            return {"pre_logits": np.zeros((len(batch), 1280), np.float32)}

    for i in range(3):
        write_image(tmp_path / "d" / "a" / f"{i}.jpg", make_photo(i))
    engine = Recorder()
    report = extract(tmp_path / "d", ExtractorConfig(), cache_dir=tmp_path / "c", batch_size=32, engine=engine)
    assert report.computed == 3
    assert engine.shapes == [(3, 224, 224, 3)]  # one photo to predict costs one image, not 32


def test_the_command_line_parser_loads_no_heavy_library():
    proc, heavy = run_child(textwrap.dedent("""
        from featx.cli import build_parser, head_names
        build_parser()
        print("LOADED", sorted(m for m in ("sklearn", "scipy", "pandas") if m in sys.modules))
        code = 0
    """))
    assert "LOADED []" in proc.stdout and heavy == []
    from featx.cli import head_names
    from featx.heads import HEADS

    assert head_names() == tuple(HEADS)


def test_the_usual_conversion_time_counts_the_same_backbone_only(tmp_path):
    """A first conversion of lite0 said 'about 16 s here before': that was mobilenet_v2's time."""
    from featx.engines.litert import TYPICAL_CONVERT_SECONDS, usual_convert_seconds

    (tmp_path / "mobilenet_v2-aaaa.json").write_text(json.dumps({"total_seconds": 9.0}))
    (tmp_path / "efficientnet_lite2-bbbb.json").write_text(json.dumps({"total_seconds": 40.0}))
    assert usual_convert_seconds(tmp_path, "efficientnet_lite2") == "about 40 s here before"
    assert usual_convert_seconds(tmp_path, "mobilenet_v2") == "about 9 s here before"
    assert usual_convert_seconds(tmp_path, "efficientnet_lite0") == f"usually {TYPICAL_CONVERT_SECONDS}"
