"""A ``model.keras`` that featx wrote (fine-tuned or from scratch), loaded with what it needs to be fed.

Why one loader: ``predict`` and ``serve`` both read such models; the ``featx.json`` beside the file
(:mod:`featx.modelmeta`) says how images become its input: a fine-tuned backbone takes the backbone's own
resizing and normalisation; a baseline takes the centre square resized to ``size``, raw 0-255 values
(the network rescales them itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx import _tf
from featx.backbones.registry import get_backbone
from featx.extract import load_network_inputs
from featx.images import ImageError, center_crop_resize, load_image
from featx.errors import FeatxError
from featx.modelcheck import check_loaded, check_model_file
from featx.modelmeta import ModelDescription
from featx.prediction.inputs import check_top, folder_notes, prediction_dataset
from featx.prediction.table import prediction_table


@dataclass
class KerasModel:
    """A loaded ``model.keras`` with its description.

    ``load(path)`` gives one image as the network's uint8 input ``(size, size, 3)``; ``prepare(batch)`` turns
    a uint8 batch ``(n, size, size, 3)`` into the float32 the model takes; ``proba(batch)`` gives
    ``(n, n_classes)`` float64 probabilities.
    """

    path: Path
    description: ModelDescription
    model: object

    @property
    def class_names(self) -> list:
        return list(self.description.class_names)

    def load(self, path) -> np.ndarray:
        d = self.description
        if d.kind == "baseline":
            return center_crop_resize(load_image(path, min_side=d.size), d.size, 1.0)
        return load_network_inputs(get_backbone(d.backbone), [path], workers=1)[0]

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        if self.description.kind == "baseline":
            return batch.astype(np.float32)
        return get_backbone(self.description.backbone).normalize(batch)

    def proba(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(self.prepare(batch)), dtype=np.float64)


def load_keras_model(model_path, compile: bool = False, description: ModelDescription | None = None,
                     trust: bool = False) -> KerasModel:
    """Read ``featx.json`` and check the model file against it (:mod:`featx.modelcheck`: zip, layer sizes,
    estimated memory, outputs, input side, signature) before Keras reads anything; then load it in Keras's
    safe mode (no code-bearing layers) and check what was built.

    ``description``: the file's description when the caller has already read it (it is not read again);
    ``trust``: load a model featx did not sign for this user (``--trust-bundle``); the size checks still apply.

    Raises
    ------
    FeatxError
        The model or its featx.json is missing, unreadable, out of range, inconsistent, or unsigned (one line).
    """
    description = description or ModelDescription.read(model_path)
    check_model_file(model_path, description, trust=trust)
    try:
        model = _tf.keras().models.load_model(Path(model_path), compile=compile, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - whatever Keras raises on a bad file is one line here
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FeatxError(f"{model_path}: Keras cannot load this model ({type(exc).__name__}: {detail})") from None
    check_loaded(model_path, model, description)
    return KerasModel(Path(model_path), description, model)


def predict_keras(model_path, images, top=None, out=None, batch_size: int = 32, trust: bool = False):
    """Predictions of a ``model.keras`` written by featx ``finetune`` or ``baseline``.

    Returns the DataFrame of :func:`featx.prediction.table.prediction_table`; ``attrs["failures"]``
    lists ``(path, reason)`` for images that could not be read.

    Raises
    ------
    FeatxError
        When the model or its featx.json is missing, unreadable or refused (:func:`load_keras_model`; ``trust``
        as there), or ``top`` is out of range.
    """
    description = ModelDescription.read(model_path)  # kind is "baseline" or "finetune", checked there
    class_names = list(description.class_names)
    check_top(top, len(class_names))
    loaded = load_keras_model(model_path, description=description, trust=trust)
    dataset = prediction_dataset(images)
    paths, decoded, failures, labels = [], [], [], []
    for i, p in enumerate(dataset.paths):
        try:
            decoded.append(loaded.load(p))
            paths.append(p)
            labels.append(dataset.class_names[dataset.labels[i]] if dataset.labels is not None else None)
        except ImageError as exc:
            failures.append((p, str(exc)))
    known = dataset.labels is not None and set(dataset.class_names) <= set(map(str, class_names))
    proba = np.concatenate([loaded.model.predict(loaded.prepare(np.stack(decoded[i : i + batch_size])), verbose=0)
                            for i in range(0, len(decoded), batch_size)]) if decoded \
        else np.zeros((0, len(class_names)))
    table = prediction_table(paths, proba.astype(np.float64), class_names, top, out,
                             true_labels=labels if known else None)
    table.attrs["failures"] = failures
    table.attrs["notes"] = folder_notes(dataset)
    return table


#: The former name (featx.finetune.predict_finetuned).
predict_finetuned = predict_keras
