"""``FeatureExtractor``: image paths in, CNN codes out, through the cache.

A scikit-learn transformer, so a backbone and a head compose::

    Pipeline([("codes", FeatureExtractor("mobilenet_v2")), ("head", LogisticRegression())])

and ``GridSearchCV`` can tune the head (or the tap) while every fold reads
codes from the cache instead of running the network again.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone
from featx.errors import FeatxError
from featx.extract import extractor_config, load_features


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Turn image file paths into pooled CNN codes of the chosen taps (concatenated).

    Parameters mirror ``featx extract``.  ``fit`` learns nothing from the data;
    it validates the parameters, as scikit-learn estimators do.
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
        spec = get_backbone(self.backbone)
        taps = self._tap_list()
        chosen = [spec.tap(t) for t in taps]
        self.config_ = extractor_config(self.backbone, self.pooling, self.dtype, self.weights)
        if self.pooling == "none":
            self.n_features_out_ = None  # depends on the map size; known after transform
        else:
            factor = 2 if self.pooling == "avgmax" else 1
            self.n_features_out_ = sum(t.channels * (1 if t.name in ("pre_logits", "logits") else factor)
                                       for t in chosen)
        return self

    def transform(self, X):
        check_is_fitted(self, "config_")
        paths = [str(p) for p in np.asarray(X, dtype=object).ravel()]
        feats = load_features(paths, self.backbone, self._tap_list(), self.pooling, self.cache_dir, self.dtype,
                              self.weights, batch_size=self.batch_size, progress=False)
        if feats.failures:
            path, reason = feats.failures[0]
            raise FeatxError(f"{len(feats.failures)} image(s) could not be read, first {path}: {reason}")
        return feats.X(self._tap_list())

    def get_feature_names_out(self, input_features=None):
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
