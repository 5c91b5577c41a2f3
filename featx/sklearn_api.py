"""``FeatureExtractor``: image paths in, CNN codes out, through the cache.

A scikit-learn transformer, so a backbone and a head compose::

    X, y = image_paths("photos/", return_labels=True)
    Pipeline([("codes", FeatureExtractor("mobilenet_v2")), ("head", LogisticRegression())]).fit(X, y)

and ``GridSearchCV`` can tune the head (or the tap) while every fold reads
codes from the cache instead of running the network again.  One row in, one
row out: folders are expanded only by :func:`image_paths`, never by ``transform``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone
from featx.datasets import discover
from featx.errors import FeatxError
from featx.extract import extractor_config, load_features


def image_paths(folder, return_labels: bool = False):
    """The image files of a dataset folder, in featx's stable order: the explicit way to turn a folder
    into rows for :class:`FeatureExtractor`.

    Parameters
    ----------
    folder : str or Path
        A folder of class folders (``folder/<class>/...``, or ``train/val/test`` above them), or of images.
    return_labels : bool
        Also return each image's class name (its folder), like scikit-learn's ``return_X_y``.

    Returns
    -------
    paths : ndarray of str, shape (n_images,)
    labels : ndarray of str, shape (n_images,)
        Only with ``return_labels``.

    Raises
    ------
    FeatxError
        No such folder, no images in it, or ``return_labels`` on a folder without class folders.
    """
    dataset = discover(folder)
    paths = np.asarray([str(p) for p in dataset.paths], dtype=object)
    if not return_labels:
        return paths
    if dataset.labels is None:
        raise FeatxError(f"{folder}: no class folders, so no labels; call image_paths({str(folder)!r}) "
                         "without return_labels")
    return paths, np.asarray(dataset.class_names, dtype=object)[dataset.labels].astype(str)


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Turn image file paths into pooled CNN codes of the chosen taps (concatenated).

    ``fit`` learns nothing from the data; it validates the parameters, as scikit-learn estimators do.
    Codes come from the cache; what is missing is extracted (and cached) first.

    Parameters
    ----------
    backbone : str
        A name from :func:`featx.backbones.registry.list_backbones`.
    taps : str or sequence of str
        The taps (layers) to read; several are concatenated in this order.
    pooling : {"avg", "max", "avgmax", "none"}
    dtype : {"float32", "float16"}
        Storage type in the cache; ``transform`` returns float32 either way.
    weights : "imagenet", None or path
        The backbone's weights (None: random, seeded).
    cache_dir : str or Path, optional
        The cache folder (default ``$FEATX_CACHE`` or ``./cache``).
    batch_size : int
        Images per network batch when codes are missing.

    Attributes
    ----------
    config_ : dict
        The extractor configuration (what keys the cache file).
    n_features_out_ : int or None
        Columns of ``transform``'s output (None for ``pooling="none"``: it depends on the image size).
    """

    def __init__(self, backbone=DEFAULT_BACKBONE, taps=("pre_logits",), pooling="avg", dtype="float32",
                 weights="imagenet", cache_dir=None, batch_size=32):
        self.backbone = backbone
        self.taps = taps
        self.pooling = pooling
        self.dtype = dtype
        self.weights = weights
        self.cache_dir = cache_dir
        self.batch_size = batch_size

    def _tap_list(self):
        return [self.taps] if isinstance(self.taps, str) else list(self.taps)

    def fit(self, X=None, y=None):
        """Validate the parameters (nothing is learnt from ``X``).

        Parameters
        ----------
        X, y : ignored

        Returns
        -------
        self

        Raises
        ------
        FeatxError
            An unknown backbone, tap, pooling or dtype, or a missing weights file; ``batch_size`` below 1.
        """
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise FeatxError(f"expected a whole number of 1 or more, got {self.batch_size!r}", param="batch_size")
        spec = get_backbone(self.backbone)
        taps = self._tap_list()
        if not taps:
            raise FeatxError("give at least one tap", param="taps")
        chosen = [spec.tap(t) for t in taps]
        self.config_ = extractor_config(self.backbone, self.pooling, self.dtype, self.weights)
        if self.pooling == "none":
            self.n_features_out_ = None  # depends on the map size; known after transform
        else:
            factor = 2 if self.pooling == "avgmax" else 1
            self.n_features_out_ = sum(t.channels * (1 if t.name in ("pre_logits", "logits") else factor)
                                       for t in chosen)
        return self

    def transform(self, X, progress=None):
        """The codes of each image in ``X``: one row per path, in order.

        Parameters
        ----------
        X : array-like of str or Path, shape (n_samples,) or (n_samples, 1)
            Image files.  A folder is an error: expand it with :func:`image_paths`.
        progress : bool or None
            A progress bar on stderr while missing codes are extracted; None (default): only when stderr
            is a terminal.

        Returns
        -------
        ndarray of float32, shape (n_samples, n_features_out_)

        Raises
        ------
        FeatxError
            A folder in ``X``, or images that cannot be read (the first is named).
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        """
        check_is_fitted(self, "config_")
        paths = [str(p) for p in np.asarray(X, dtype=object).ravel()]
        for i, p in enumerate(paths):
            if Path(p).is_dir():
                raise FeatxError(f"X[{i}] = {p!r} is a folder; FeatureExtractor takes one image file per row: "
                                 f"expand folders with featx.sklearn_api.image_paths({p!r})")
        if not paths:
            return np.zeros((0, self.n_features_out_ or 0), dtype=np.float32)
        feats = load_features(paths, self.backbone, self._tap_list(), self.pooling, self.cache_dir, self.dtype,
                              self.weights, batch_size=self.batch_size, progress=progress)
        if feats.failures:
            path, reason = feats.failures[0]
            raise FeatxError(f"{len(feats.failures)} image(s) could not be read, first {path}: {reason}")
        X_out = feats.matrix(self._tap_list())
        if len(X_out) != len(paths):
            raise FeatxError(f"expected {len(paths)} rows of codes, got {len(X_out)}")  # the contract, checked
        return np.asarray(X_out, dtype=np.float32)

    def get_feature_names_out(self, input_features=None):
        """``<backbone>_0 .. <backbone>_<d-1>``: names of ``transform``'s columns.

        Raises
        ------
        ValueError
            For ``pooling="none"`` (the width depends on the image size).
        """
        check_is_fitted(self, "config_")
        if self.n_features_out_ is None:
            raise ValueError("feature names are unknown for pooling='none'")
        return np.asarray([f"{self.backbone}_{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True
        tags.requires_fit = False
        return tags
