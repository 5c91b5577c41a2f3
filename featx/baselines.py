"""Former home of the from-scratch baselines: thin re-exports for one release.

Import from :mod:`featx.training` (``train_baseline``) and :mod:`featx.training.networks`
(``build_baseline``) instead. Nothing in featx imports this module.
"""

from featx.training.baselines import BaselineOptions, train_baseline
from featx.training.networks import build_baseline
from featx.vocabulary import BASELINE_ARCHS as ARCHS

__all__ = ["ARCHS", "BaselineOptions", "build_baseline", "train_baseline"]
