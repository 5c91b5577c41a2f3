"""Training: the three routes that turn a labelled dataset into a saved model, and the layer sweep.

Modules, each with one job: :mod:`~featx.training.codes` (labelled codes with the stored split),
:mod:`~featx.training.fit` (``fit_head``, the cached route) with :mod:`~featx.training.fit_text` (its
console report), :mod:`~featx.training.sweep` (a head per tap), :mod:`~featx.training.recipes` (fine-tuning
recipes and unfreeze policies), :mod:`~featx.training.networks` (the Keras networks and their input
pipeline), :mod:`~featx.training.finetune` and :mod:`~featx.training.baselines`. Every route writes through
:class:`featx.outputs.RunOutputs` and returns a :class:`featx.outputs.RunResult`. Training never imports
prediction.
"""

from featx.datasets import SplitSpec
from featx.training.baselines import BaselineOptions, train_baseline
from featx.training.codes import LabelledCodes, backbone_list, labelled_codes
from featx.training.finetune import FinetuneOptions, finetune
from featx.training.fit import FitOptions, fit_head
from featx.training.sweep import sweep

__all__ = ["BaselineOptions", "FinetuneOptions", "FitOptions", "LabelledCodes", "SplitSpec", "backbone_list",
           "finetune", "fit_head", "labelled_codes", "sweep", "train_baseline"]
