"""Former home of fit-head, predict and sweep: thin re-exports for one release.

Import from :mod:`featx.training` (``fit_head``, ``sweep``, ``labelled_codes``) and :mod:`featx.prediction`
(``predict``) instead. Nothing in featx imports this module.
"""

from featx.prediction import (PROBABILITY_FORMAT, bundle_proba, extractor_weights, predict, prediction_dataset,
                              prediction_table, seen_in_training, true_labels)
from featx.stats import accuracy_summary
from featx.training.codes import LabelledCodes, backbone_list, labelled_codes
from featx.training.fit import FitOptions, FitResult, fit_head
from featx.training.sweep import sweep
from featx.vocabulary import FUSE_MODES, SPLITS, TTA_MODES

__all__ = ["FUSE_MODES", "PROBABILITY_FORMAT", "SPLITS", "TTA_MODES", "FitOptions", "FitResult", "LabelledCodes",
           "accuracy_summary", "backbone_list", "bundle_proba", "extractor_weights", "fit_head", "labelled_codes",
           "predict", "prediction_dataset", "prediction_table", "seen_in_training", "sweep", "true_labels"]
