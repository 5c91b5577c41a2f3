"""Former home of the from-scratch baselines: thin re-exports for one release.

Import from :mod:`featx.training` (``train_baseline``) and :mod:`featx.training.networks`
(``build_baseline``) instead. Nothing in featx imports this module.
"""

from featx import training
from featx.compat import positional
from featx.training.baselines import BaselineOptions
from featx.training.networks import build_baseline
from featx.vocabulary import BASELINE_ARCHS as ARCHS

train_baseline = positional(training.train_baseline, (
    "data", "arch", "size", "epochs", "batch_size", "learning_rate", "patience", "class_weight", "cache_dir", "out_dir",
    "val_fraction", "test_fraction", "seed", "echo"))

__all__ = ["ARCHS", "BaselineOptions", "build_baseline", "train_baseline"]
