"""The study's augmentation: Keras 1.2.2 ``ImageDataGenerator.random_transform``, in numpy.

The study ran Keras 1.2.2 with ``rotation_range=20, width_shift_range=0.2,
height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
horizontal_flip=True, fill_mode='nearest'``.  Keras 3 no longer ships that
class, and its layers differ (``RandomShear`` shears along both axes,
``RandomZoom`` keeps the aspect ratio), so the transform is rebuilt here
from Keras 1.2.2's formulas, in (row, column) pixel coordinates:

- rotation ``theta`` = uniform(-rotation, rotation) degrees;
- shift ``tx`` = uniform(-height_shift, height_shift) * rows,
  ``ty`` = uniform(-width_shift, width_shift) * columns;
- shear ``s`` = uniform(-shear, shear) **radians**, along one axis:
  ``[[1, -sin s, 0], [0, cos s, 0], [0, 0, 1]]``
  (Keras 2.1.3 later switched the unit to degrees);
- zoom ``zx, zy`` = uniform(1 - zoom, 1 + zoom), drawn independently for
  rows and columns (the aspect ratio changes);
- ``M = R @ T @ S @ Z``, moved to act about Keras's centre
  ``(rows / 2 + 0.5, columns / 2 + 0.5)``; each output pixel ``o`` reads the
  input at ``M @ o`` with nearest-neighbour interpolation (scipy's
  ``affine_transform(order=0)``) and border pixels repeated (``'nearest'``);
- then a horizontal flip with probability 1/2.

The random draws happen in Keras's order (a parameter whose range is 0
draws nothing), from ``numpy.random.RandomState(seed)``, so a seed fixes
the view exactly and the same seed given to Keras 1.2.2's global
``np.random`` gives the same parameters.  No TensorFlow, no scipy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Augmentation:
    """One ``ImageDataGenerator`` setting (Keras 1.2.2 semantics).

    Parameters
    ----------
    rotation : float
        Maximum rotation in degrees (``rotation_range``).
    width_shift, height_shift : float
        Maximum shift as a fraction of the width / height.
    shear : float
        Maximum shear angle in radians (``shear_range``), along one axis.
    zoom : float
        Zoom factors are drawn per axis from ``[1 - zoom, 1 + zoom]``
        (values above 1 show more of the image, smaller).
    horizontal_flip : bool
        Mirror left-right with probability 1/2.
    """

    rotation: float = 0.0
    width_shift: float = 0.0
    height_shift: float = 0.0
    shear: float = 0.0
    zoom: float = 0.0
    horizontal_flip: bool = False

    @property
    def id(self) -> str:
        """A short stable name of the setting, for cache configurations."""
        p = asdict(self)
        return "keras122:" + ",".join(f"{k}={p[k]:g}" if not isinstance(p[k], bool) else f"{k}={int(p[k])}"
                                      for k in sorted(p))

    def random_params(self, rng: np.random.RandomState, rows: int, cols: int) -> dict:
        """Draw one transform, in Keras 1.2.2's order; returns theta (radians), tx, ty (pixels), shear
        (radians), zx, zy and flip."""
        theta = np.pi / 180 * rng.uniform(-self.rotation, self.rotation) if self.rotation else 0.0
        tx = rng.uniform(-self.height_shift, self.height_shift) * rows if self.height_shift else 0.0
        ty = rng.uniform(-self.width_shift, self.width_shift) * cols if self.width_shift else 0.0
        shear = rng.uniform(-self.shear, self.shear) if self.shear else 0.0
        zx, zy = rng.uniform(1 - self.zoom, 1 + self.zoom, 2) if self.zoom else (1.0, 1.0)
        flip = bool(rng.random_sample() < 0.5) if self.horizontal_flip else False
        return {"theta": float(theta), "tx": float(tx), "ty": float(ty), "shear": float(shear),
                "zx": float(zx), "zy": float(zy), "flip": flip}

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        """One view of ``image`` (H x W x C, any dtype), fixed by ``seed``; same shape and dtype."""
        image = np.asarray(image)
        rng = np.random.RandomState(int(seed) % 2**32)
        params = self.random_params(rng, image.shape[0], image.shape[1])
        return apply_params(image, params)

    def batch(self, images: np.ndarray, seeds) -> np.ndarray:
        """``images`` (N x H x W x C), one view each, image ``i`` fixed by ``seeds[i]``."""
        return np.stack([self(im, s) for im, s in zip(images, seeds)]) if len(images) else np.asarray(images)


def transform_matrix(params: dict, rows: int, cols: int) -> np.ndarray:
    """The 3x3 matrix mapping output (row, col, 1) to input coordinates, about Keras 1.2.2's centre."""
    c, s = np.cos(params["theta"]), np.sin(params["theta"])
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    shift = np.array([[1, 0, params["tx"]], [0, 1, params["ty"]], [0, 0, 1]])
    sh = params["shear"]
    shear = np.array([[1, -np.sin(sh), 0], [0, np.cos(sh), 0], [0, 0, 1]])
    zoom = np.array([[params["zx"], 0, 0], [0, params["zy"], 0], [0, 0, 1]])
    m = rotation @ shift @ shear @ zoom
    o_r, o_c = rows / 2 + 0.5, cols / 2 + 0.5
    offset = np.array([[1, 0, o_r], [0, 1, o_c], [0, 0, 1]])
    reset = np.array([[1, 0, -o_r], [0, 1, -o_c], [0, 0, 1]])
    return offset @ m @ reset


def apply_params(image: np.ndarray, params: dict) -> np.ndarray:
    """Warp ``image`` (H x W x C) by ``params`` (see :meth:`Augmentation.random_params`): nearest
    neighbour, borders repeated, then the flip."""
    rows, cols = image.shape[:2]
    m = transform_matrix(params, rows, cols)
    if np.allclose(m, np.eye(3)):
        out = image
    else:
        r, c = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
        src_r = m[0, 0] * r + m[0, 1] * c + m[0, 2]
        src_c = m[1, 0] * r + m[1, 1] * c + m[1, 2]
        # scipy's order-0 spline rounds with floor(x + 0.5); mode 'nearest' clamps to the border
        ir = np.clip(np.floor(src_r + 0.5), 0, rows - 1).astype(np.intp)
        ic = np.clip(np.floor(src_c + 0.5), 0, cols - 1).astype(np.intp)
        out = image[ir, ic]
    if params["flip"]:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


# The study's setting (Keras 1.2.2 ImageDataGenerator arguments of the 2017 code).
STUDY = Augmentation(rotation=20, width_shift=0.2, height_shift=0.2, shear=0.2, zoom=0.2, horizontal_flip=True)
# The default fine-tuning recipe's lighter setting: small shifts and zoom, and the flip.
LIGHT = Augmentation(width_shift=0.1, height_shift=0.1, zoom=0.1, horizontal_flip=True)
NONE = Augmentation()
PRESETS = {"study": STUDY, "light": LIGHT, "none": NONE}


def get_augmentation(name: str) -> Augmentation:
    """``study``, ``light`` or ``none``; raises :class:`~featx.errors.FeatxError` otherwise."""
    from featx.errors import FeatxError

    try:
        return PRESETS[name]
    except KeyError:
        raise FeatxError(f"expected one of {', '.join(PRESETS)}, got {name!r}", param="augment") from None


def augmentation_layers(seed: int = 0) -> Augmentation:
    """The study's augmentation, as passed to :func:`augment_view` (name kept for its callers)."""
    return STUDY


def augment_view(image: np.ndarray, seed: int, layers: Augmentation | None = None) -> np.ndarray:
    """One augmented view of one image (H x W x 3 uint8), fixed by ``seed`` alone (not by batch order).

    Used for cached views: the same image and view number always give the
    same pixels, so a view's cache row is reproducible.  ``layers``: the
    :class:`Augmentation` (default the study's).
    """
    aug = layers if isinstance(layers, Augmentation) else STUDY
    return aug(np.asarray(image, dtype=np.uint8), seed)
