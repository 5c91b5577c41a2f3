"""Former home of fine-tuning: thin re-exports for one release.

Import from :mod:`featx.training` (``finetune``), :mod:`featx.training.recipes`,
:mod:`featx.training.networks` and :mod:`featx.prediction` instead. Nothing in featx imports this module.
"""

from featx import training
from featx.compat import positional
from featx.modelmeta import META_FILE, read_model_meta
from featx.prediction.models import predict_finetuned
from featx.training.finetune import FinetuneOptions, carve_validation
from featx.training.networks import batches, build_backbone, build_classifier, build_model
from featx.training.recipes import (DEFAULT_POLICY, RECIPES, STUDY_POLICIES, Recipe, apply_unfreeze, default_policy,
                                    first_trainable_index, get_recipe, make_optimizer, one_tap)

finetune = positional(training.finetune, (
    "data", "backbone", "taps", "unfreeze", "init_head", "recipe", "epochs", "batch_size", "learning_rate", "momentum",
    "warmup", "augment", "class_weight", "patience", "weights", "cache_dir", "out_dir", "val_fraction", "test_fraction",
    "seed", "trust", "progress", "echo", "tap"))

__all__ = ["DEFAULT_POLICY", "META_FILE", "RECIPES", "STUDY_POLICIES", "FinetuneOptions", "Recipe", "apply_unfreeze",
           "batches", "build_backbone", "build_classifier", "build_model", "carve_validation", "default_policy",
           "finetune", "first_trainable_index", "get_recipe", "make_optimizer", "one_tap", "predict_finetuned",
           "read_model_meta"]
