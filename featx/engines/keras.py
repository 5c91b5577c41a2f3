"""The Keras engine: the backbone's feature model run by Keras (TensorFlow).

The reference every other engine is checked against, and the engine for GPUs
(with the mixed-precision option).
"""

from __future__ import annotations

import numpy as np


class KerasEngine:
    """Runs ``config``'s Keras feature model.

    Parameters
    ----------
    config : ExtractorConfig
    model : keras.Model, optional
        An already built feature model (default: built from ``config``, which
        imports TensorFlow).

    ``run(batch)`` takes ``(B, S, S, 3)`` uint8 RGB (any B) and returns
    ``{tap: (B, d) array}``; normalisation happens here.
    """

    name = "keras"
    batch_size = None  # any

    def __init__(self, config, model=None):
        from featx import _tf
        from featx.preprocess import available_cores

        self.config = config
        self.model = model if model is not None else config.feature_model()
        # cores it keeps busy while a batch runs: all of them on a CPU, one feeding thread on a GPU
        self.threads = 1 if _tf.gpu_available() else available_cores()

    def run(self, batch: np.ndarray) -> dict:
        out = self.model.predict_on_batch(self.config.spec.normalize(batch))
        return {t: np.asarray(out[t]) for t in self.config.taps}
