"""featx: cache CNN codes once, train classical heads on them in seconds."""

import os

# Quiet TensorFlow's C++ start-up chatter and pin Keras to TensorFlow unless the user chose.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

from featx.errors import FeatxError  # noqa: E402

__all__ = ["FeatxError", "__version__"]
