"""TensorFlow, only when it is needed: quiet import, GPU detection, version strings.

Importing TensorFlow costs seconds and hundreds of megabytes, so featx's
LiteRT path never does: :func:`gpu_available` answers "no" without it when
the machine shows no sign of an NVIDIA GPU (no ``/dev/nvidia*`` device node,
no ``libcuda`` the loader can find) and asks TensorFlow only when there is
such a sign, so a GPU is never missed; :func:`versions` reads installed
package metadata instead of importing the packages.

TensorFlow's C++ runtime logs (oneDNN notices, "could not find cuda drivers",
a failed ``cuInit`` on machines without a GPU) are written before its log
level applies, so they would precede every featx message.  They are routed to
/dev/null while TensorFlow initialises; Python exceptions still propagate.
Set ``FEATX_TF_LOGS=1`` to see them.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import sys


@contextlib.contextmanager
def stderr_silenced():
    """Route file descriptor 2 to /dev/null inside the block (C++ runtime chatter)."""
    if os.environ.get("FEATX_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_stderr_silenced = stderr_silenced  # older name, kept for callers outside this module's owner


@functools.cache
def keras():
    """The ``keras`` module, TensorFlow initialised and its devices probed."""
    with stderr_silenced():
        import keras as _keras
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # triggers cuInit (and its error) now
        tf.constant(0.0) + 1.0  # first op: device initialisation logs
    return _keras


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


@functools.cache
def gpu_available() -> bool:
    """Whether TensorFlow would run on a GPU here; imports TensorFlow only when :func:`gpu_sign` says so."""
    if not gpu_sign():
        return False
    keras()  # quiet import first
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def package_version(name: str) -> str | None:
    """An installed distribution's version from its metadata (no import); None when absent."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions(device: str | None = None) -> dict:
    """Provenance strings: keras, tensorflow and ai-edge-litert versions and the device, no imports.

    ``device``: "CPU" or "GPU" when the caller knows where the network ran;
    by default :func:`gpu_available` decides.
    """
    return {"keras": package_version("keras"), "tensorflow": package_version("tensorflow"),
            "litert": package_version("ai-edge-litert"),
            "device": device or ("GPU" if gpu_available() else "CPU")}
