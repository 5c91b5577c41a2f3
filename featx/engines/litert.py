"""The LiteRT engine: the feature model converted once to a TFLite flatbuffer.

On a CPU the forward pass is the whole cost of extraction, and TensorFlow's
own TFLite converter plus the LiteRT interpreter (XNNPACK kernels) run the
very same network about twice as fast as Keras here.  So featx converts each
feature model once, stores it in the cache folder (``<cache>/engines``) under
a name derived from the extractor configuration, and uses it only after a
parity check: a fixed probe batch through Keras and through LiteRT must agree
to ``PARITY_ATOL`` on every tap, else featx warns once and stays on Keras.
Rows from either engine are interchangeable because of that check.

The converted graph takes uint8 RGB and normalises inside (the backbone's
normalisation is affine per channel: a cast, a multiply and an add), so the
pipeline hands the interpreter the decoded pixels as they are.  Once the
model and its parity record exist, this module runs with numpy and the
LiteRT interpreter only: TensorFlow is imported to convert, never to run.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from featx import _tf
from featx.engines import calibration as calibrations
from featx.errors import FeatxError

PARITY_ATOL = 1e-4
#: int8 parity: every probe image's codes must keep at least this cosine similarity to float32's, on every tap.
#: Measured (docs/int8.md): calibrated on 100 real photos, mobilenet_v2 on 64 held-out ants_bees photos
#: min 0.956, mean 0.974; calibrated on blank images min 0.20.  0.9 passes the first with room, fails the second.
INT8_MIN_COSINE = 0.9
FORMAT = 3  # 2: uint8 input, normalisation inside the graph; 3: any batch size
TYPICAL_CONVERT_SECONDS = "15-30 s"
PROBE_SIZE = 4  # images in the parity probe
TEMP_PREFIX = "tmp-convert-"  # <cache>/engines/tmp-convert-<pid>-XXXX: a conversion's working folder
STALE_TEMP_SECONDS = 6 * 3600  # a working folder this old is a killed run's, whatever its name


def litert_available() -> bool:
    """Whether the LiteRT interpreter (``ai-edge-litert``) is installed (no import)."""
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None


class LiteRTEngine:
    """A converted feature model.

    Parameters
    ----------
    path : Path
        The ``.tflite`` file.
    batch_size : int, optional
        The batch size to plan for (default: the model's own); another size is
        accepted too, at the cost of re-planning the interpreter.
    threads : int, optional
        Interpreter threads (default: the cores available).
    normalize : callable, optional
        For float-input models only: uint8 batch -> network input values.

    ``run(batch)`` takes ``(B, S, S, 3)`` uint8 RGB and returns
    ``{tap: (B, d) float32}`` (fresh arrays, safe to keep).
    """

    name = "litert"

    def __init__(self, path: Path, batch_size: int | None = None, threads: int | None = None, normalize=None):
        from ai_edge_litert.interpreter import Interpreter

        from featx.preprocess import available_cores

        self.path = Path(path)
        self.threads = threads or available_cores()
        with _tf.stderr_silenced():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
            runner = self.interpreter.get_signature_runner()
            inputs = runner.get_input_details()
            outputs = runner.get_output_details()
            del runner
            detail = inputs["image"]
            self._input = detail["index"]
            self.input_dtype = np.dtype(detail["dtype"])
            self.input_shape = tuple(int(v) for v in detail["shape"][1:])
            self._outputs = {name: d["index"] for name, d in outputs.items()}
            self.normalize = normalize if self.input_dtype != np.uint8 else None
            self.batch_size = None
            self._plan(batch_size or int(detail["shape"][0]))
            self.run(np.zeros((self.batch_size, *self.input_shape), np.uint8))  # the delegate logs on the first call

    def _plan(self, batch_size: int) -> None:
        if batch_size != self.batch_size:
            self.interpreter.resize_tensor_input(self._input, [batch_size, *self.input_shape])
            self.interpreter.allocate_tensors()
            self.batch_size = batch_size

    def run(self, batch: np.ndarray) -> dict:
        self._plan(len(batch))
        if self.normalize is not None:
            batch = self.normalize(batch)
        self.interpreter.set_tensor(self._input, np.ascontiguousarray(batch, dtype=self.input_dtype))
        self.interpreter.invoke()
        return {name: self.interpreter.get_tensor(index) for name, index in self._outputs.items()}  # copies


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def converted_path(cache_dir, config) -> Path:
    """Where ``config``'s converted model lives: ``<cache_dir>/engines/<backbone>-<digest>.tflite``
    (one file for every batch size)."""
    key = json.dumps([config.cache_key(), sorted(config.taps), FORMAT], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    precision = "" if getattr(config, "precision", "float32") == "float32" else f"{config.precision}-"
    return Path(cache_dir) / "engines" / f"{config.backbone}-{precision}{digest}.tflite"


def probe_batch(spec, batch_size: int) -> np.ndarray:
    """A fixed batch of smooth random pictures, ``(batch_size, S, S, 3)`` uint8."""
    import cv2

    rng = np.random.default_rng(1234)
    return np.stack([cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (spec.input_size,) * 2,
                                interpolation=cv2.INTER_CUBIC) for _ in range(batch_size)])


def affine_normalization(spec):
    """``spec.normalize`` as ``x[..., order] * scale + offset``, or None when it is not per-channel affine.

    Returns
    -------
    (order, scale, offset) : (list of 3 ints, (3,) float32, (3,) float32), or None
    """
    normalize = spec.normalize
    zero = np.asarray(normalize(np.zeros((1, 1, 1, 3), np.float32)), np.float64).reshape(3)
    order, scale = [0, 1, 2], np.zeros(3)
    for c in range(3):
        unit = np.zeros((1, 1, 1, 3), np.float32)
        unit[..., c] = 255.0
        delta = np.asarray(normalize(unit), np.float64).reshape(3) - zero
        moved = np.flatnonzero(np.abs(delta) > 1e-9)
        if len(moved) != 1:
            return None
        order[moved[0]] = c
        scale[moved[0]] = delta[moved[0]] / 255.0
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 4, 4, 3)).astype(np.float32)
    expected = np.asarray(normalize(x.copy()), np.float64)
    if sorted(order) != [0, 1, 2] or np.abs(x[..., order] * scale + zero - expected).max() > 1e-4:
        return None
    return order, scale.astype(np.float32), zero.astype(np.float32)


def convert(model, spec, path: Path, calibration: np.ndarray | None = None) -> Path:
    """Keras feature model -> SavedModel -> TFLite flatbuffer at ``path`` (atomically; imports TensorFlow).

    The graph takes ``(any, S, S, 3)`` uint8 and normalises inside when the
    backbone's normalisation is per-channel affine; else it takes normalised float32.

    Parameters
    ----------
    calibration : ndarray of shape (N, S, S, 3), uint8, optional
        Given: full-integer (int8) quantization, TensorFlow's post-training recipe
        (``optimizations=[DEFAULT]`` plus a representative dataset: these images, one at a time,
        in order), float32 in and out; ops without an int8 kernel stay float32.  The converter's
        calibration is deterministic in its input, so the same images give the same bytes.
        None: the float32 graph, unchanged.
    """
    keras = _tf.keras()
    import tensorflow as tf

    size = spec.input_size
    affine = affine_normalization(spec)
    if affine is not None:
        order, scale, offset = affine
        reorder = order != [0, 1, 2]
        rescale = not (np.all(scale == 1.0) and np.all(offset == 0.0))  # the model normalises itself
        scale_t, offset_t = tf.constant(scale), tf.constant(offset)

        def endpoint(image):
            x = tf.cast(image, tf.float32)
            if reorder:
                x = tf.gather(x, order, axis=-1)
            if rescale:
                x = x * scale_t + offset_t
            return model(x, training=False)

        signature = tf.TensorSpec((None, size, size, 3), tf.uint8, name="image")
    else:
        def endpoint(image):
            return model(image, training=False)

        signature = tf.TensorSpec((None, size, size, 3), tf.float32, name="image")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(path.parent)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", endpoint, input_signature=[signature])
        with _tf.stderr_silenced():
            archive.write_out(tmp + "/saved", verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp + "/saved")
            if calibration is not None:
                as_input = (lambda x: x) if affine is not None else \
                    (lambda x: np.asarray(spec.normalize(x.astype(np.float32)), np.float32))
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = lambda: ([as_input(image[None])] for image in calibration)
            blob = converter.convert()
        part = Path(tmp) / "model.tflite"
        part.write_bytes(blob)
        os.replace(part, path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temp(folder: Path, now: float | None = None) -> list:
    """Remove the working folders that killed conversions left in ``folder`` (``<cache>/engines``).

    A conversion works in ``tmp-convert-<pid>-XXXX`` and removes it when it ends, even on an error;
    a process killed outright (SIGKILL, out of memory, power) cannot, and the folder -- a SavedModel,
    tens of MB -- stayed forever.  A folder is stale when its process is gone, or, for the former
    unnamed ``tmpXXXX`` folders and a pid since reused, when it is older than ``STALE_TEMP_SECONDS``
    (no conversion takes hours).  A live conversion's folder is never touched.

    Returns
    -------
    list of Path
        The folders removed.
    """
    import shutil

    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith("tmp") or not entry.is_dir():
            continue
        parts = entry.name[len(TEMP_PREFIX):].split("-", 1) if entry.name.startswith(TEMP_PREFIX) else []
        pid = int(parts[0]) if parts and parts[0].isdigit() else None
        try:
            old = now - entry.stat().st_mtime > STALE_TEMP_SECONDS
        except OSError:
            continue
        if (pid is not None and pid != os.getpid() and not _alive(pid)) or old:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def min_cosine(reference: dict, other: dict) -> dict:
    """tap -> the smallest cosine similarity between a row of ``reference`` and the same row of ``other``
    (1 for two zero rows, 0 for one)."""
    out = {}
    for t in reference:
        a, b = np.asarray(reference[t], np.float64), np.asarray(other[t], np.float64)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        cos = np.where(na * nb > 0, (a * b).sum(1) / np.maximum(na * nb, 1e-300), (na == nb).astype(float))
        out[t] = float(cos.min())
    return out


def max_difference(a: dict, b: dict) -> dict:
    return {t: float(np.abs(np.asarray(a[t], np.float64) - np.asarray(b[t], np.float64)).max()) for t in a}


def usual_convert_seconds(folder: Path, backbone: str | None = None) -> str:
    """How long conversions of ``backbone`` took here before (median of its stored records), else the
    typical range.  Only the same backbone counts: a larger network converts more slowly."""
    times = []
    for record in Path(folder).glob(f"{backbone}-*.json" if backbone else "*.json"):
        try:
            record = json.loads(record.read_text())
            times.append(float(record["total_seconds"] if "total_seconds" in record else record["convert_seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return f"about {statistics.median(times):.0f} s here before" if times else f"usually {TYPICAL_CONVERT_SECONDS}"


def _record(path: Path):
    record_path = path.with_suffix(".json")
    try:
        return json.loads(record_path.read_text()) if record_path.exists() else None
    except (OSError, ValueError):
        return None


def is_converted(config, cache_dir) -> bool:
    """Whether a converted model for ``config`` exists in ``cache_dir`` and passed its parity check."""
    path = converted_path(cache_dir, config)
    record = _record(path)
    return bool(record and record.get("parity_ok") and path.exists())


def _discard(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if "no space left on device" in text.lower():  # TensorFlow's own errors carry no errno
        return "no space left on device"
    return f"{type(exc).__name__}: {text.splitlines()[0][:120]}" if text else type(exc).__name__


def _say(msg: str) -> None:
    print(f"featx: {msg}", file=sys.stderr, flush=True)


def load_or_convert(config, batch_size: int, cache_dir, build_model, warn, threads: int | None = None,
                    announce=None):
    """The checked LiteRT engine for ``config``, converting it first when needed.

    Parameters
    ----------
    config : ExtractorConfig
    batch_size : int
        The batch size the engine will mostly be given (it plans for it).
    cache_dir : path
        The cache folder; converted models live in ``cache_dir/engines``.
    build_model : callable
        Returns the Keras feature model (called only to convert and check).
    warn : callable(str)
        Receives one-line warnings.
    announce : callable(str), optional
        Receives progress lines (default: printed to stderr).

    Returns
    -------
    LiteRTEngine, or a KerasEngine when the parity check failed (now or before).
    """
    from featx.engines.keras import KerasEngine

    announce = announce or _say
    spec = config.spec
    path = converted_path(cache_dir, config)
    record_path = path.with_suffix(".json")
    record = _record(path)
    if record and path.exists() and record.get("sha256") == file_sha256(path):
        if not record.get("parity_ok"):
            warn(f"the LiteRT model failed its parity check before ({record.get('max_diff')}); using Keras")
            return KerasEngine(config, build_model())
        return LiteRTEngine(path, batch_size, threads, normalize=spec.normalize)
    if path.exists() or record:
        warn(f"{path.name}: converted model is missing, damaged or stale; converting again")
    announce(f"converting {config.backbone} ({', '.join(config.taps)}) for the LiteRT engine, once for this "
             f"configuration ({usual_convert_seconds(path.parent, config.backbone)}); it is stored in {path.parent}")
    began = time.perf_counter()
    model = build_model()
    keras_engine = KerasEngine(config, model)
    # a converted model that cannot be stored (disk full, read-only, permissions, or TensorFlow failing
    # to write its SavedModel) is not fatal: Keras computes the same codes
    try:
        start = time.perf_counter()
        convert(model, spec, path)
        seconds = time.perf_counter() - start
        candidate = LiteRTEngine(path, PROBE_SIZE, threads, normalize=spec.normalize)
        probe = probe_batch(spec, PROBE_SIZE)
        diff = max_difference(keras_engine.run(probe), candidate.run(probe))
        ok = all(d <= PARITY_ATOL for d in diff.values())
        total = time.perf_counter() - began
        record = {"sha256": file_sha256(path), "parity_ok": ok, "max_diff": diff, "atol": PARITY_ATOL,
                  "convert_seconds": seconds, "total_seconds": total, "config": config.cache_key(),
                  "taps": list(config.taps),
                  "probe_size": PROBE_SIZE, "format": FORMAT, "input": str(candidate.input_dtype)}
        _write_record(record_path, record)
    except Exception as exc:  # noqa: BLE001 - any failure to convert or store: stay on Keras
        _discard(path, record_path)
        warn(f"cannot store the converted LiteRT model in {path.parent} ({_reason(exc)}); using Keras")
        return keras_engine
    if not ok:
        warn(f"LiteRT and Keras disagree by {max(diff.values()):.2e} (> {PARITY_ATOL}) on the probe batch; "
             "using Keras")
        return keras_engine
    announce(f"converted in {total:.0f} s; LiteRT matches Keras to {max(diff.values()):.1e} on every tap")
    candidate._plan(batch_size)
    return candidate


def load_or_convert_int8(config, batch_size: int, cache_dir, build_model, calibration=None,
                         threads: int | None = None, announce=None):
    """The checked int8 LiteRT engine for ``config`` (``precision="int8"``), converting it first when needed.

    The int8 model is ``config``'s network quantized by :func:`convert` with ``calibration``'s images.  It is
    used only after its parity check: on the calibration's probe images, every tap's codes must keep a cosine
    similarity of at least ``INT8_MIN_COSINE`` to the float32 network's.  There is no fallback: int8 is
    a different configuration (its own cache), so a failed check or a failed conversion is an error.

    Parameters
    ----------
    config : ExtractorConfig
        ``precision="int8"`` with its ``calibration`` id set.
    calibration : featx.engines.calibration.Calibration, optional
        The images the id names; default: the one stored in ``cache_dir/engines`` under that id.

    Raises
    ------
    FeatxError
        The calibration is unknown here, its images changed, the conversion failed, or the parity
        check failed (now, or before for this very model).
    """
    from featx.engines.keras import KerasEngine

    announce = announce or _say
    spec = config.spec
    path = converted_path(cache_dir, config)
    record = _record(path)
    if record and path.exists() and record.get("sha256") == file_sha256(path):
        if not _int8_passes(record):  # judged against today's bound, not the one it was converted under
            raise FeatxError(_int8_failure(record, path))
        return LiteRTEngine(path, batch_size, threads)
    calibration = calibration or calibrations.load(Path(cache_dir) / "engines", config.calibration)
    if calibration is None or calibration.id != config.calibration:
        raise FeatxError(f"int8: the model calibrated as {config.calibration} is not in {path.parent}, nor the "
                         "record of its calibration images; extract its training data with --precision int8 "
                         "into this cache first", param="precision")
    calibration.save(Path(cache_dir) / "engines")
    announce(f"converting {config.backbone} ({', '.join(config.taps)}) to int8 for the LiteRT engine, calibrated "
             f"on {len(calibration.keys)} images (calibration {calibration.id}), once for this configuration; "
             f"it is stored in {path.parent}")
    began = time.perf_counter()
    images, probe = calibration.images(spec), calibration.probe(spec)
    model = build_model()
    try:
        convert(model, spec, path, images)
    except Exception as exc:  # noqa: BLE001 - there is no float fallback for int8: say why, keep nothing
        _discard(path, path.with_suffix(".json"))
        raise FeatxError(f"int8: cannot convert or store the model in {path.parent} ({_reason(exc)})") from None
    candidate = LiteRTEngine(path, len(probe), threads)
    cosine = min_cosine(KerasEngine(config, model).run(probe), candidate.run(probe))
    ok = all(c >= INT8_MIN_COSINE for c in cosine.values())
    record = {"sha256": file_sha256(path), "parity_ok": ok, "precision": "int8", "min_cosine": cosine,
              "bound": INT8_MIN_COSINE, "calibration": calibration.id, "calibration_images": len(calibration.keys),
              "probe_keys": list(calibration.probe_keys), "total_seconds": time.perf_counter() - began,
              "config": config.cache_key(), "taps": list(config.taps), "format": FORMAT,
              "input": str(candidate.input_dtype)}
    _write_record(path.with_suffix(".json"), record)
    if not ok:
        raise FeatxError(_int8_failure(record, path))
    announce(f"converted in {record['total_seconds']:.0f} s; int8 codes keep a cosine of at least "
             f"{min(cosine.values()):.3f} to float32's on the probe images (bound {INT8_MIN_COSINE})")
    candidate._plan(batch_size)
    return candidate


def _int8_passes(record: dict) -> bool:
    cosine = record.get("min_cosine")
    return bool(isinstance(cosine, dict) and cosine and min(cosine.values()) >= INT8_MIN_COSINE)


def _int8_failure(record: dict, path: Path) -> str:
    worst = min(record.get("min_cosine", {"?": float("nan")}).items(), key=lambda kv: kv[1])
    return (f"int8: {path.name} fails its parity check: tap {worst[0]}'s codes keep a cosine of only {worst[1]:.3f} "
            f"to float32's on the probe images (bound {INT8_MIN_COSINE}); its calibration "
            f"{record.get('calibration')} is unfit; use --precision float32")


def _write_record(record_path: Path, record: dict) -> None:
    tmp = record_path.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, record_path)
    finally:
        tmp.unlink(missing_ok=True)
