"""The study's augmentation as Keras preprocessing layers, seeded.

Rotation up to 20 degrees, width/height shift 0.2, shear 0.2, zoom 0.2,
horizontal flip, border pixels repeated ('nearest') -- Keras's
ImageDataGenerator settings of the study, as layers.  They are geometric
only, so they act the same before or after value normalisation.
"""

from __future__ import annotations

import numpy as np

from featx import _tf

ROTATION_DEGREES = 20
SHIFT = 0.2
SHEAR = 0.2
ZOOM = 0.2


def augmentation_layers(seed: int = 0) -> list:
    keras = _tf.keras()
    L = keras.layers
    return [
        L.RandomRotation(ROTATION_DEGREES / 360, fill_mode="nearest", seed=seed, name="aug_rotate"),
        L.RandomTranslation(SHIFT, SHIFT, fill_mode="nearest", seed=seed + 1, name="aug_shift"),
        L.RandomShear(SHEAR, SHEAR, fill_mode="nearest", seed=seed + 2, name="aug_shear"),
        L.RandomZoom(ZOOM, fill_mode="nearest", seed=seed + 3, name="aug_zoom"),
        L.RandomFlip("horizontal", seed=seed + 4, name="aug_flip"),
    ]


def study_augmentation(seed: int = 0):
    """A ``keras.Sequential`` that augments in training and passes through at inference."""
    keras = _tf.keras()
    return keras.Sequential(augmentation_layers(seed), name="augmentation")


def augment_view(image: np.ndarray, seed: int, layers=None) -> np.ndarray:
    """One augmented view of one image, fixed by ``seed`` alone (not by batch order).

    Used for cached views: the same image and view number always give the
    same pixels, so a view's cache row is reproducible.
    """
    layers = layers or augmentation_layers()
    x = np.asarray(image, dtype=np.float32)[None]
    for i, layer in enumerate(layers):
        t = layer.get_random_transformation(x, training=True, seed=int(seed) * 8 + i)
        x = layer.transform_images(x, t, training=True)
    return np.clip(np.rint(np.asarray(x[0])), 0, 255).astype(np.uint8)
