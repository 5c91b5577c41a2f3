"""The Keras backend, imported only when needed: quiet import, GPU detection, version strings.

featx's networks are plain Keras 3 models, so they run on whichever backend
Keras is set to (``KERAS_BACKEND``: ``tensorflow``, the default featx sets,
``jax`` or ``torch``).  Only the active backend is imported: with
``KERAS_BACKEND=jax`` or ``torch`` nothing of featx imports TensorFlow except
the one step that needs it, converting a network for the LiteRT engine
(:func:`require_tensorflow` names it in a one-line error when it is absent).

Importing a backend costs seconds and hundreds of megabytes, so featx's
LiteRT path never does: :func:`gpu_available` answers "no" without it when
the machine shows no sign of an NVIDIA GPU (no ``/dev/nvidia*`` device node,
no ``libcuda`` the loader can find) and asks the active backend only when
there is such a sign (``tf.config``, ``jax.devices()`` or ``torch.cuda``), so
a GPU is never missed; :func:`versions` reads installed package metadata
instead of importing the packages.

TensorFlow's C++ runtime logs (oneDNN notices, "could not find cuda drivers",
a failed ``cuInit`` on machines without a GPU) and JAX's "no CUDA jaxlib"
notice are written before any log level applies, so they would precede every
featx message.  They are routed to /dev/null while the backend initialises;
Python exceptions still propagate.  Set ``FEATX_TF_LOGS=1`` to see them.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import sys

from featx.errors import FeatxError

#: the Keras 3 backends featx runs on, the default first
BACKENDS = ("tensorflow", "jax", "torch")

#: backend -> the distributions whose versions describe it (provenance, ``featx info``)
BACKEND_PACKAGES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}


def _flush_stderr() -> None:
    """Flush Python's stderr before fd 2 moves; a replaced or closed ``sys.stderr`` is not an error here."""
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass


@contextlib.contextmanager
def stderr_silenced():
    """Route file descriptor 2 to /dev/null inside the block (C++ runtime chatter)."""
    if os.environ.get("FEATX_TF_LOGS") == "1":
        yield
        return
    _flush_stderr()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        _flush_stderr()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_stderr_silenced = stderr_silenced  # older name, kept for callers outside this module's owner


def backend() -> str:
    """The active Keras backend's name, without importing Keras.

    ``KERAS_BACKEND`` (``import featx`` sets ``tensorflow`` unless the user chose); once Keras is imported,
    the backend it actually loaded.
    """
    keras_module = sys.modules.get("keras")
    if keras_module is not None and hasattr(keras_module, "backend"):
        return keras_module.backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow").strip().lower()


def _check_backend(name: str) -> None:
    """A one-line error for an unknown backend or one whose package is not installed."""
    if name not in BACKENDS:
        raise FeatxError(f"featx runs on {', '.join(BACKENDS)}, not {name!r}; set KERAS_BACKEND to one of them",
                         param="KERAS_BACKEND")
    package = BACKEND_PACKAGES[name][0]
    if package_version(package) is None:
        raise FeatxError(f"{name} is not installed; run: pip install {package} (or choose another backend "
                         "with KERAS_BACKEND)", param="KERAS_BACKEND")


@functools.cache
def keras():
    """The ``keras`` module on the active backend, that backend initialised and its devices probed.

    Raises
    ------
    FeatxError
        ``KERAS_BACKEND`` names an unknown backend or one that is not installed.
    """
    name = backend()
    _check_backend(name)
    with stderr_silenced():
        import keras as _keras

        if name == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # triggers cuInit (and its error) now
        else:
            _tensorflow_left_alone()
        if os.environ.get("FEATX_TF32") != "1":
            full_float32(name)
        _keras.ops.add(_keras.ops.convert_to_tensor(0.0), 1.0)  # first op: device initialisation logs
    return _keras


def full_float32(name: str) -> None:
    """float32 means float32 on a GPU too: no TensorFloat-32 in convolutions and matrix products.

    On Ampere and later GPUs each backend may compute float32 convolutions and products with 10-bit
    mantissas (TF32): TensorFlow's ``enable_tensor_float_32_execution`` is on by default, PyTorch's cuDNN
    ``allow_tf32`` is on, JAX's default matmul precision is not ``highest``.  Codes computed so differ from a
    CPU's by about 1e-3, ten times featx's parity tolerance (``PARITY_ATOL``, 1e-4), and rows from a GPU
    could not share a cache with rows from a CPU.  featx turns TF32 off on every backend; speed on a GPU is
    the mixed-precision option's job (part of the cache key).  ``FEATX_TF32=1`` keeps each backend's default.
    No effect on a CPU.
    """
    if name == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
    elif name == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    elif name == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def _tensorflow_left_alone() -> None:
    """Keep Keras from importing TensorFlow on another backend.

    Keras 3 imports TensorFlow whenever it is installed, whatever the backend: to seed it
    (``keras.utils.set_random_seed``) and to recognise its objects when saving a model
    (``keras.src.saving.serialization_lib``).  While TensorFlow is not imported no TensorFlow object can
    exist, so Keras's lazy handle on it (``keras.src.utils.module_utils.tensorflow``, as of Keras 3.15) is
    told it is unavailable.  A Keras without that handle is left as it is; the JAX subprocess test
    (``tests/test_backends.py``) fails if TensorFlow gets imported all the same.
    """
    if "tensorflow" in sys.modules:
        return
    try:
        from keras.src.utils import module_utils

        module_utils.tensorflow._available = False
    except (ImportError, AttributeError):
        pass


def require_tensorflow(what: str) -> None:
    """Raise a one-line error unless TensorFlow is installed and is Keras's backend.

    ``what``: the step that needs it, e.g. ``"converting a network for the LiteRT engine"``.  TensorFlow is
    needed for exactly that (``tf.lite``); everything else runs on any backend.

    Raises
    ------
    FeatxError
        TensorFlow is not installed, or another backend is active.
    """
    if package_version("tensorflow") is None:
        raise FeatxError(f"{what} needs TensorFlow, which is not installed; run: pip install tensorflow, "
                         "or use --engine keras", param="engine")
    if backend() != "tensorflow":
        raise FeatxError(f"{what} needs TensorFlow as the Keras backend (KERAS_BACKEND={backend()} here); "
                         "run it once with KERAS_BACKEND=tensorflow, or use --engine keras", param="engine")


def gpu_sign() -> bool:
    """Whether this machine shows any sign of an NVIDIA GPU, without importing TensorFlow.

    True when an ``/dev/nvidia*`` device node exists or the dynamic loader can
    find ``libcuda``; False when ``CUDA_VISIBLE_DEVICES`` hides every device
    (empty or ``-1``).  A sign is not proof: :func:`gpu_available` confirms it.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/nvidiactl"):
        return True
    import ctypes.util

    return ctypes.util.find_library("cuda") is not None


def devices() -> list[str]:
    """The devices the active backend sees, as ``"KIND:index description"`` strings (imports the backend).

    TensorFlow: ``tf.config.list_physical_devices``; JAX: ``jax.devices()``; PyTorch: the CPU plus each
    ``torch.cuda`` device.  Accelerators are ``GPU:i`` whatever the backend calls them.
    """
    name = backend()
    keras()  # quiet import first
    if name == "tensorflow":
        import tensorflow as tf

        return [f"{d.device_type}:{i} {d.name}" for kind in ("CPU", "GPU")
                for i, d in enumerate(tf.config.list_physical_devices(kind))]
    if name == "jax":
        import jax

        return [f"{'CPU' if d.platform == 'cpu' else 'GPU'}:{d.id} {getattr(d, 'device_kind', d.platform)}"
                for d in jax.devices()]
    import torch

    gpus = [f"GPU:{i} cuda {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return ["CPU:0 cpu", *gpus]


@functools.cache
def gpu_available() -> bool:
    """Whether the active Keras backend would run on a GPU here.

    Imports the backend only when :func:`gpu_sign` says there may be one; then asks it (``tf.config``,
    ``jax.devices()``, ``torch.cuda``).
    """
    if not gpu_sign():
        return False
    keras()  # quiet import first
    if backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return any(d.startswith("GPU:") for d in devices())


def package_version(name: str) -> str | None:
    """An installed distribution's version from its metadata (no import); None when absent."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions(device: str | None = None) -> dict:
    """Provenance strings, no imports: the Keras backend and its version, keras, tensorflow and
    ai-edge-litert versions, and the device.

    ``device``: "CPU" or "GPU" when the caller knows where the network ran;
    by default :func:`gpu_available` decides.  ``backend_version`` is the backend's main package's
    version (``jax``, ``torch``, ``tensorflow``), None when it is not installed.
    """
    name = backend()
    main = BACKEND_PACKAGES.get(name, (name,))[0]
    return {"keras": package_version("keras"), "tensorflow": package_version("tensorflow"),
            "litert": package_version("ai-edge-litert"), "backend": name, "backend_version": package_version(main),
            "device": device or ("GPU" if gpu_available() else "CPU")}
