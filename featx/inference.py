"""Inference engines: the same feature model run by Keras or by LiteRT.

On a CPU the forward pass is the whole cost of extraction, and TensorFlow's
own TFLite converter plus the LiteRT interpreter (XNNPACK kernels) run the
very same network two to three times faster than Keras here.  So featx
converts each feature model once, stores it next to the cache under a name
derived from the extractor configuration, and uses it only after a parity
check: a fixed probe batch through Keras and through LiteRT must agree to
``PARITY_ATOL`` on every tap, else featx warns once and stays on Keras.  Rows
from either engine are interchangeable because of that check, so the engine is
recorded in the cache's provenance but is not part of its key.

``auto`` picks LiteRT when it is installed (``pip install featx[litert]``) and
no GPU is visible; on a GPU, Keras (with its mixed-precision option) is faster.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from featx import _tf
from featx.errors import FeatxError

ENGINES = ("auto", "keras", "litert")
PARITY_ATOL = 1e-4
FORMAT = 1


def litert_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None


class KerasEngine:
    name = "keras"

    def __init__(self, model):
        self.model = model

    def run(self, batch: np.ndarray) -> dict:
        return {k: np.asarray(v) for k, v in self.model.predict_on_batch(batch).items()}


class LiteRTEngine:
    """A converted feature model; inputs must have the batch size it was converted for."""

    name = "litert"

    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        with _tf._stderr_silenced():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or os.cpu_count() or 1)
            self.runner = self.interpreter.get_signature_runner()
            shape = self.runner.get_input_details()["image"]["shape"]
            self.run(np.zeros(shape, np.float32))  # the delegate is created (and logs) on the first call

    def run(self, batch: np.ndarray) -> dict:
        out = self.runner(image=np.ascontiguousarray(batch, dtype=np.float32))
        return {k: np.array(v) for k, v in out.items()}  # copies: the interpreter reuses its buffers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def converted_path(cache_dir, config: dict, taps, batch_size: int) -> Path:
    key = json.dumps([config, sorted(taps), batch_size, FORMAT], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / "engines" / f"{config['backbone']}-b{batch_size}-{digest}.tflite"


def probe_batch(spec, batch_size: int) -> np.ndarray:
    """A fixed batch of smooth random pictures, normalised for ``spec``."""
    import cv2

    rng = np.random.default_rng(1234)
    images = [cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (spec.input_size,) * 2,
                         interpolation=cv2.INTER_CUBIC) for _ in range(batch_size)]
    return spec.normalize(np.stack(images))


def convert(model, batch_size: int, size: int, path: Path) -> Path:
    """Keras feature model -> SavedModel -> TFLite flatbuffer at ``path`` (atomically)."""
    keras = _tf.keras()
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", lambda image: model(image, training=False),
                             input_signature=[tf.TensorSpec((batch_size, size, size, 3), tf.float32, name="image")])
        with _tf._stderr_silenced():
            archive.write_out(tmp + "/saved", verbose=False)
            blob = tf.lite.TFLiteConverter.from_saved_model(tmp + "/saved").convert()
        part = Path(tmp) / "model.tflite"
        part.write_bytes(blob)
        os.replace(part, path)
    return path


def max_difference(a: dict, b: dict) -> dict:
    return {t: float(np.abs(np.asarray(a[t], np.float64) - np.asarray(b[t], np.float64)).max()) for t in a}


def _discard(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def make_engine(spec, taps, build_model, config: dict, batch_size: int, engine: str = "auto", cache_dir=None,
                gpu: bool | None = None, warn=None):
    """The engine to extract with.  ``build_model()`` makes the Keras feature model (only called
    when Keras runs, or to convert and check a LiteRT model)."""
    if engine not in ENGINES:
        raise FeatxError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "litert" and not litert_available():
        raise FeatxError("--engine litert: LiteRT is not installed; run: pip install ai-edge-litert")
    use_litert = engine == "litert" or (
        engine == "auto" and litert_available() and not (gpu if gpu is not None else _tf.gpu_available()))
    if not use_litert or cache_dir is None:
        return KerasEngine(build_model())
    warn = warn or (lambda msg: print(f"featx: warning: {msg}", file=sys.stderr))
    path = converted_path(cache_dir, config, taps, batch_size)
    record_path = path.with_suffix(".json")
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    if record and path.exists() and record.get("sha256") == _sha256(path):
        if not record.get("parity_ok"):
            warn(f"the LiteRT model failed its parity check before ({record.get('max_diff')}); using Keras")
            return KerasEngine(build_model())
        return LiteRTEngine(path)
    if path.exists() or record:
        warn(f"{path.name}: converted model is missing, damaged or stale; converting again")
    model = build_model()
    # --- issue 17: a converted model that cannot be stored (disk full, read-only, permissions,
    # or TensorFlow failing to write its SavedModel) is not fatal: extraction stays on Keras.
    try:
        start = time.perf_counter()
        convert(model, batch_size, spec.input_size, path)
        seconds = time.perf_counter() - start
        candidate = LiteRTEngine(path)
        probe = probe_batch(spec, batch_size)
        diff = max_difference(KerasEngine(model).run(probe), candidate.run(probe))
        ok = all(d <= PARITY_ATOL for d in diff.values())
        record = {"sha256": _sha256(path), "parity_ok": ok, "max_diff": diff, "atol": PARITY_ATOL,
                  "convert_seconds": seconds, "config": config, "taps": list(taps), "batch_size": batch_size}
        tmp = record_path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(record, indent=2))
            os.replace(tmp, record_path)
        finally:
            tmp.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 - any failure to convert or store: Keras computes the same codes
        _discard(path, record_path)
        text = str(exc).strip()
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror.lower()
        elif "no space left on device" in text.lower():  # TensorFlow's own errors carry no errno
            reason = "no space left on device"
        else:
            reason = f"{type(exc).__name__}: {text.splitlines()[0][:120]}" if text else type(exc).__name__
        warn(f"cannot store the converted LiteRT model in {path.parent} ({reason}); using Keras")
        return KerasEngine(model)
    # --- end issue 17
    if not ok:
        warn(f"LiteRT and Keras disagree by {max(diff.values()):.2e} (> {PARITY_ATOL}) on the probe batch; "
             "using Keras")
        return KerasEngine(model)
    return candidate
