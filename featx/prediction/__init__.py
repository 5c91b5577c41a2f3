"""Prediction: a saved model (``model.featx`` bundle or featx ``model.keras``) applied to any images.

Modules, each with one job: :mod:`~featx.prediction.inputs` (what to predict and its labels),
:mod:`~featx.prediction.bundles` (a bundle's extractors and head), :mod:`~featx.prediction.models`
(``model.keras`` + ``featx.json``), :mod:`~featx.prediction.table` (the study's CSV),
:mod:`~featx.prediction.workflow` (the ``predict`` workflow). Prediction never imports training.
"""

from featx.prediction.bundles import bundle_proba, extractor_weights, seen_in_training
from featx.prediction.inputs import prediction_dataset, true_labels
from featx.prediction.models import KerasModel, load_keras_model, predict_finetuned, predict_keras
from featx.prediction.workflow import predict
from featx.prediction.table import PROBABILITY_FORMAT, prediction_table

__all__ = ["PROBABILITY_FORMAT", "KerasModel", "bundle_proba", "extractor_weights", "load_keras_model", "predict",
           "predict_finetuned", "predict_keras", "prediction_dataset", "prediction_table", "seen_in_training",
           "true_labels"]
