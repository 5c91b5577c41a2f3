"""featx: cache CNN codes once, train classical heads on them in seconds."""

import os

# Quiet TensorFlow's C++ start-up chatter and pin Keras to TensorFlow unless the user chose.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
#: whether KERAS_BACKEND was set before featx was imported (``featx info`` says who chose the backend)
BACKEND_FROM_ENVIRONMENT = "KERAS_BACKEND" in os.environ
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# oneDNN kernels: 1.6x faster Keras forward passes here, codes equal to 5e-6
# (scripts/bench_onednn.py); TensorFlow leaves them off on some CPUs (AMD) unless asked.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

from featx.errors import FeatxError  # noqa: E402

__all__ = ["FeatxError", "__version__"]
