"""featx on every Keras 3 backend (docs/backends.md).

One subprocess per backend runs the routes a user runs -- extract, a dense head, predict, a one-epoch
fine-tune -- with ``KERAS_BACKEND`` set, on tiny generated images, and reports whether TensorFlow was ever
imported and the codes it extracted; the codes must equal the TensorFlow backend's (this process) within
the same tolerance that makes LiteRT rows interchangeable with Keras rows (``PARITY_ATOL``, 1e-4), which is
why the backend is recorded in provenance but is not part of the cache key.

JAX is in the ``dev`` extra (its CPU wheel), so in CI a missing JAX fails; PyTorch's CPU wheel is large and
not installed there: its run is skipped unless torch is installed.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT, in_ci, tinted, write_image
from featx import _tf
from featx.errors import FeatxError

CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import numpy as np
    import featx  # noqa: F401
    from featx import _tf
    from featx.extract import load_features
    from featx.info import describe
    from featx.prediction import predict
    from featx.training import finetune, fit_head

    work = Path(sys.argv[1]); data, cache = work / "data", work / "cache"
    seconds = {}

    def step(name, run):
        start = time.process_time(); out = run(); seconds[name] = round(time.process_time() - start, 1)
        return out

    codes = step("extract", lambda: load_features(data, "mobilenet_v2", cache_dir=cache, engine="keras", split=False))
    np.save(work / "codes.npy", codes.X[np.argsort([str(p) for p in codes.paths])])
    head = step("dense head", lambda: fit_head(data, "mobilenet_v2", head="dense", cache_dir=cache,
                                               out_dir=work / "dense", head_params={"epochs": 3}))
    table = step("predict", lambda: predict(head.model, [data], cache_dir=cache))
    tuned = step("finetune", lambda: finetune(data, cache_dir=cache, out_dir=work / "ft", epochs=1, batch_size=32,
                                              unfreeze="top:1", init_head=head.model,
                                              echo=lambda *_: None))
    print("RESULT " + json.dumps({
        "keras_backend": sys.modules["keras"].backend.backend(), "tensorflow_imported": "tensorflow" in sys.modules,
        "provenance": _tf.versions(), "predicted": sorted(set(table["predicted"])), "rows": len(table),
        "head_kind": json.loads((work / "dense" / "metrics.json").read_text()).get("head"),
        "finetune_epochs": tuned.metrics["epochs_run"], "model_keras": Path(tuned.model).is_file(),
        "info": describe(work / "cache"), "cpu_seconds": seconds}))
""")


def _installed(package: str) -> bool:
    return _tf.package_version(package) is not None


def _backend_or_skip(backend: str) -> None:
    """JAX is a dev dependency (missing in CI fails); torch is optional (missing skips)."""
    package = _tf.BACKEND_PACKAGES[backend][0]
    if _installed(package):
        return
    message = f"KERAS_BACKEND={backend} needs {package}, not installed: pip install 'featx[{backend}]'"
    if backend == "jax" and in_ci():
        pytest.fail(f"CI installs the dev extra, but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def tints(tmp_path_factory):
    work = tmp_path_factory.mktemp("backends")
    for c, name in enumerate(("red", "green", "blue")):
        for i in range(6):
            write_image(work / "data" / name / f"{name}{i}.jpg", tinted(40 + 10 * c + i, c, size=(36, 44)))
    return work


@pytest.fixture(scope="module")
def tensorflow_codes(tints):
    """The TensorFlow backend's codes (this process) for the same images, sorted by path."""
    from featx.extract import load_features

    assert _tf.backend() == "tensorflow"
    codes = load_features(tints / "data", "mobilenet_v2", cache_dir=tints / "cache-tf", engine="keras", split=False)
    return codes.X[np.argsort([str(p) for p in codes.paths])]


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~50 s on two idle cores; a loaded machine took 280 s
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_routes_run_on_another_backend_without_tensorflow(backend, tints, tensorflow_codes, tmp_path):
    _backend_or_skip(backend)
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(tints / "data", target_is_directory=True)
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "-1",
           # XLA's optimisation level 0 compiles MobileNetV2 in ~10 s less CPU time (JAX: 46 s instead of 67 s
           # for the whole child); the codes still must agree to 1e-4; scripts/gpu_check.sh runs the defaults
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "--xla_backend_optimization_level=0")}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(work)], capture_output=True, text=True, env=env,
                          timeout=850)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    print(backend, "CPU seconds per step:", result["cpu_seconds"])
    assert result["keras_backend"] == backend
    assert result["tensorflow_imported"] is False
    assert result["provenance"]["backend"] == backend and result["provenance"]["backend_version"]
    assert result["rows"] == 18 and set(result["predicted"]) <= {"red", "green", "blue"}
    assert result["finetune_epochs"] == 1 and result["model_keras"]
    info = result["info"]  # featx info on that backend: its devices, Keras as the engine, the converted-model folder
    assert info["backend"] == {"name": backend, "chosen_by": "KERAS_BACKEND"}
    assert info["devices"][0].startswith("CPU:0") and info["gpu"] is False
    assert info["engines"]["auto"] == "keras" and "converting needs KERAS_BACKEND=tensorflow" in info["engines"]["litert"]
    assert info["cache"]["configurations"] == 1 and info["cache"]["converted"] == 0
    codes = np.load(work / "codes.npy")
    assert codes.shape == tensorflow_codes.shape == (18, 1280)
    difference = float(np.abs(codes - tensorflow_codes).max())
    print(f"{backend} vs tensorflow: max |code difference| {difference:.2e}")
    assert difference <= 1e-4


def test_an_unknown_or_missing_backend_is_one_line(monkeypatch):
    monkeypatch.setattr(_tf, "backend", lambda: "theano")
    with pytest.raises(FeatxError, match=r"^KERAS_BACKEND: featx runs on tensorflow, jax, torch, not 'theano'"):
        _tf._check_backend("theano")
    monkeypatch.setattr(_tf, "package_version", lambda name: None)
    with pytest.raises(FeatxError, match=r"^KERAS_BACKEND: torch is not installed; run: pip install torch"):
        _tf._check_backend("torch")


def test_litert_conversion_names_tensorflow_on_another_backend(monkeypatch, tmp_path):
    from featx.config import ExtractorConfig
    from featx.engines import KerasEngine, litert_available, make_engine

    if not litert_available():
        pytest.skip("LiteRT is not installed: pip install 'featx[litert]'")
    monkeypatch.setattr(_tf, "backend", lambda: "jax")
    config = ExtractorConfig("mobilenet_v2")
    with pytest.raises(FeatxError, match=r"^engine: converting a network for the LiteRT engine needs TensorFlow as "
                                         r"the Keras backend \(KERAS_BACKEND=jax here\)"):
        make_engine(config, 32, "litert", cache_dir=tmp_path, gpu=False, model=object())
    # auto on another backend: Keras itself, no conversion attempted
    assert isinstance(make_engine(config, 32, "auto", cache_dir=tmp_path, gpu=False, model=object()), KerasEngine)
    monkeypatch.setattr(_tf, "package_version", lambda name: None)
    with pytest.raises(FeatxError, match="needs TensorFlow, which is not installed"):
        _tf.require_tensorflow("converting a network for the LiteRT engine")


def test_random_weights_are_keyed_per_backend(monkeypatch):
    from featx.config import ExtractorConfig

    tensorflow_key = ExtractorConfig("mobilenet_v2", weights=None).cache_key()
    trained = ExtractorConfig("mobilenet_v2").cache_key()
    assert tensorflow_key["weights"] == "random-seed0"  # the id caches made before backends existed carry
    monkeypatch.setattr(_tf, "backend", lambda: "jax")
    jax_key = ExtractorConfig("mobilenet_v2", weights=None).cache_key()
    assert jax_key["weights"] == "random-seed0-jax"  # JAX draws other random weights: another network
    assert ExtractorConfig("mobilenet_v2").cache_key() == trained  # the same file's weights: rows shared (parity)


def test_provenance_records_the_backend():
    recorded = _tf.versions("CPU")
    assert recorded["backend"] == _tf.backend() == "tensorflow"
    assert recorded["backend_version"] == recorded["tensorflow"] and recorded["device"] == "CPU"
