"""Import Keras/TensorFlow once, without TensorFlow's start-up noise on stderr.

TensorFlow's C++ runtime logs (oneDNN notices, "could not find cuda drivers",
a failed ``cuInit`` on machines without a GPU) are written before its log
level applies, so they would precede every featx message.  They are routed to
/dev/null while TensorFlow initialises; Python exceptions still propagate.
Set ``FEATX_TF_LOGS=1`` to see them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys


@contextlib.contextmanager
def _stderr_silenced():
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


@functools.cache
def keras():
    """The ``keras`` module, TensorFlow initialised and its devices probed."""
    with _stderr_silenced():
        import keras as _keras
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # triggers cuInit (and its error) now
        tf.constant(0.0) + 1.0  # first op: device initialisation logs
    return _keras


def gpu_available() -> bool:
    keras()  # quiet import first
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
