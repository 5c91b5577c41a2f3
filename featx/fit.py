"""Former home of fit-head, predict and sweep: thin re-exports for one release.

Import from :mod:`featx.training` (``fit_head``, ``sweep``, ``labelled_codes``) and :mod:`featx.prediction`
(``predict``) instead. Nothing in featx imports this module.
"""

from featx import training
from featx.compat import positional
from featx.prediction import (PROBABILITY_FORMAT, bundle_proba, extractor_weights, predict, prediction_dataset,
                              prediction_table, seen_in_training, true_labels)
from featx.stats import accuracy_summary
from featx.training.codes import LabelledCodes, backbone_list
from featx.training.fit import FitOptions, FitResult
from featx.vocabulary import FUSE_MODES, SPLITS, TTA_MODES

fit_head = positional(training.fit_head, (
    "data", "backbone", "taps", "head", "pooling", "dtype", "weights", "cache_dir", "out_dir", "class_weight", "l2",
    "standardize", "pca", "val_fraction", "test_fraction", "seed", "head_params", "views", "refit", "fuse", "tta",
    "budget", "recipe"))
labelled_codes = positional(training.labelled_codes, (
    "data", "backbone", "taps", "pooling", "dtype", "weights", "cache_dir", "val_fraction", "test_fraction", "seed",
    "views", "flip"))
sweep = positional(training.sweep, (
    "data", "backbone", "taps", "head", "pooling", "dtype", "weights", "cache_dir", "out_dir", "val_fraction",
    "test_fraction", "seed"))

__all__ = ["FUSE_MODES", "PROBABILITY_FORMAT", "SPLITS", "TTA_MODES", "FitOptions", "FitResult", "LabelledCodes",
           "accuracy_summary", "backbone_list", "bundle_proba", "extractor_weights", "fit_head", "labelled_codes",
           "predict", "prediction_dataset", "prediction_table", "seen_in_training", "sweep", "true_labels"]
