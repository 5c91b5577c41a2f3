"""The Keras networks the training routes build: backbone + dense head, the study's CNNs, their inputs.

Why one module: fine-tuning and the from-scratch baselines train Keras models on image batches the same
way (a seeded, re-augmented :func:`batches` pipeline, a per-epoch progress bar); the networks themselves
are built here and nowhere else. Everything imports Keras lazily (through :mod:`featx._tf`).
"""

from __future__ import annotations

import functools
import sys
import time

import numpy as np

from featx import _tf
from featx.augment import Augmentation
from featx.backbones.registry import pool, tap_output
from featx.errors import FeatxError
from featx.vocabulary import BASELINE_ARCHS, check_choice


def build_backbone(spec, tap: str = "pre_logits", weights="imagenet", pooling: str = "avg"):
    """The backbone as a Keras model from the image to the pooled ``tap``."""
    keras = _tf.keras()
    net = spec.build(weights)
    return keras.Model(net.input, pool(tap_output(net, spec.tap(tap)), pooling, tap), name="backbone")


def build_classifier(spec, base, n_classes: int, head=None):
    """``base`` (called with ``training=False``: BatchNorm in inference mode) + the dense head.

    ``head``: a fitted featx dense :class:`~featx.heads.Head` whose weights (and standardisation) are copied.
    """
    keras = _tf.keras()
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    x = base(inputs, training=False)  # BatchNorm in inference mode, whatever is trainable
    scaler, dense = head_parts(head, base.output.shape[-1], n_classes)
    if scaler is not None:
        # scale_**2, not var_: scikit-learn divides constant features by 1, not by ~0
        x = keras.layers.Normalization(mean=scaler.mean_, variance=scaler.scale_**2, name="head_scale")(x)
    x = keras.layers.Dense(1024 if dense is None else dense.hidden, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(0.5 if dense is None else dense.dropout, name="head_dropout")(x)
    out = keras.layers.Dense(n_classes, activation="softmax", name="head_softmax")(x)
    classifier = keras.Model(inputs, out, name=f"{spec.name}_finetuned")
    if dense is not None:
        # the dense head keeps its weights as numpy arrays (coefs_, intercepts_), not a Keras model
        classifier.get_layer("head_dense").set_weights([dense.coefs_[0], dense.intercepts_[0]])
        classifier.get_layer("head_softmax").set_weights([dense.coefs_[1], dense.intercepts_[1]])
    return classifier


def build_model(spec, n_classes: int, tap: str = "pre_logits", weights="imagenet", head=None, seed: int = 0,
                augment: bool = False, pooling: str = "avg"):
    """Backbone + dense head: ``(classifier, base)``.  (Augmentation is no longer a layer: see
    :class:`featx.augment.Augmentation`; ``augment`` and ``seed`` are accepted for old callers.)"""
    base = build_backbone(spec, tap, weights, pooling)
    return build_classifier(spec, base, n_classes, head), base


def head_parts(head, dim, n_classes):
    if head is None:
        return None, None
    steps = dict(head.pipeline_.steps)
    if head.kind != "dense" or set(steps) - {"scale", "clf"}:
        raise FeatxError("expected a bundle with a dense head on plain or standardised codes "
                         f"(got {head.kind} with steps {', '.join(steps)})", param="init_head")
    dense = steps["clf"]
    if dense.n_features_in_ != dim or len(dense.classes_) != n_classes:
        raise FeatxError(f"the head expects {dense.n_features_in_} inputs and {len(dense.classes_)} "
                         f"classes, the model gives {dim} and has {n_classes}", param="init_head")
    return steps.get("scale"), dense


def check_init_head(bundle, backbone: str, tap: str, dim: int) -> None:
    """A warm-start bundle must be a dense head on this backbone's ``tap`` codes (``dim`` wide)."""
    if bundle.extractor["backbone"] != backbone or bundle.extractor["taps"] != [tap]:
        raise FeatxError(f"the bundle is for {bundle.extractor['backbone']}/"
                         f"{'+'.join(bundle.extractor['taps'])}, not {backbone}/{tap}", param="init_head")
    if not hasattr(bundle.head, "pipeline_") or getattr(bundle.head, "kind", None) != "dense":
        raise FeatxError(f"expected a bundle with a dense head (fit-head --head dense), got "
                         f"{getattr(bundle.head, 'kind', type(bundle.head).__name__)}", param="init_head")
    head_parts(bundle.head, dim, len(bundle.head.classes_))


@functools.cache
def _batches_class():
    """Defined on first use: subclassing ``PyDataset`` needs Keras imported."""
    keras = _tf.keras()

    class Batches(keras.utils.PyDataset):
        """Normalised image batches for Keras, reshuffled and re-augmented each epoch (seeded).

        Image ``i`` in epoch ``e`` gets the view fixed by ``(seed, e, i)``, whatever the batch order.
        """

        def __init__(self, images, y, spec, batch_size, shuffle, seed, augmentation=None, n_classes=None):
            super().__init__()
            self.n_classes = n_classes
            self.images, self.y, self.spec = images, y, spec
            self.batch_size, self.shuffle = batch_size, shuffle
            self.augmentation = augmentation
            self.seed, self.epoch = int(seed), 0
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(y))
            if self.shuffle:
                self.rng.shuffle(self.order)

        def __len__(self):
            return int(np.ceil(len(self.y) / self.batch_size))

        def __getitem__(self, i):
            idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.images[idx]
            if self.augmentation is not None:
                seeds = [(self.seed * 1_000_003 + self.epoch * 100_003 + int(j)) % 2**32 for j in idx]
                x = self.augmentation.batch(x, seeds)
            x = x.astype(np.float32)
            y = self.y[idx] if self.n_classes is None else np.eye(self.n_classes, dtype=np.float32)[self.y[idx]]
            return (self.spec.normalize(x) if self.spec is not None else x), y

        def on_epoch_end(self):
            self.epoch += 1
            if self.shuffle:
                self.rng.shuffle(self.order)

    return Batches


def batches(images, y, spec, batch_size: int, shuffle: bool = False, seed: int = 0,
            augmentation: Augmentation | None = None, n_classes: int | None = None):
    """A Keras ``PyDataset`` of ``(float32 images, labels)``, normalised for ``spec`` (raw 0-255 when ``spec``
    is None); ``augmentation`` (an :class:`~featx.augment.Augmentation`) applied on the fly; labels one-hot
    when ``n_classes`` is given."""
    return _batches_class()(images, y, spec, batch_size, shuffle, seed, augmentation, n_classes)


@functools.cache
def _progress_class():
    keras = _tf.keras()

    class Progress(keras.callbacks.Callback):
        """A tqdm bar per epoch: images/s, ETA, running loss and accuracy; one summary line per epoch."""

        def __init__(self, n_images, batch_size, epochs, echo, enabled, label):
            super().__init__()
            self.n, self.batch_size, self.epochs = n_images, batch_size, epochs
            self.echo, self.enabled, self.label = echo, enabled, label
            self.bar, self.seen, self.started = None, 0, 0.0

        def on_epoch_begin(self, epoch, logs=None):
            from tqdm import tqdm

            self.seen, self.started = 0, time.perf_counter()
            total = self.n if self.params.get("steps") is None else min(self.n, self.params["steps"] * self.batch_size)
            self.bar = tqdm(total=total, unit="img", desc=f"{self.label} {epoch + 1}/{self.epochs}",
                            file=sys.stderr, dynamic_ncols=True, leave=False,
                            disable=None if self.enabled is None else not self.enabled)

        def on_train_batch_end(self, batch, logs=None):
            step = min(self.batch_size, self.bar.total - self.seen)
            self.seen += step
            self.bar.update(step)
            if logs:
                self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.3f}",
                                     acc=f"{logs.get('accuracy', float('nan')):.3f}", refresh=False)

        def on_epoch_end(self, epoch, logs=None):
            self.bar.close()
            logs = logs or {}
            seconds = time.perf_counter() - self.started
            val = (f"  val loss {logs['val_loss']:.3f} acc {logs['val_accuracy']:.3f}"
                   if "val_loss" in logs else "")
            self.echo(f"{self.label} {epoch + 1}/{self.epochs}: {seconds:.0f}s ({self.seen / max(seconds, 1e-9):.1f} "
                      f"img/s)  loss {logs.get('loss', float('nan')):.3f} acc {logs.get('accuracy', float('nan')):.3f}"
                      f"{val}")

    return Progress


def progress_bar(n_images: int, batch_size: int, epochs: int, echo, enabled, label: str):
    """A Keras callback: a tqdm bar per epoch (images/s, ETA, running loss and accuracy), one line per epoch.

    ``enabled``: True, False, or None (when stderr is a terminal); ``echo``: where the epoch lines go.
    """
    return _progress_class()(n_images, batch_size, epochs, echo, enabled, label)


def build_baseline(arch: str, n_classes: int, size: int = 96, seed: int = 0, augment: bool = False):
    """cnn1: Conv32 -> MaxPool -> Dense1024 -> Dropout(0.5) -> softmax.
    cnn6: 2x Conv32, 2x Conv64, 2x Conv128, each pair pooled with dropout 0.25 -> Dense512 -> Dropout(0.5).

    Input: ``size`` x ``size`` x 3 raw 0-255 values (the network rescales).  Augmentation is not a layer:
    :func:`train_baseline` applies the study's (:data:`featx.augment.STUDY`) to the training batches;
    ``seed`` and ``augment`` are accepted for old callers and ignored.
    """
    keras = _tf.keras()
    L = keras.layers
    check_choice(arch, BASELINE_ARCHS, "arch")
    inputs = keras.Input((size, size, 3), name="image")
    x = L.Rescaling(1 / 255.0, name="rescale")(inputs)
    if arch == "cnn1":
        x = L.Conv2D(32, 3, activation="relu", name="conv1")(x)
        x = L.MaxPooling2D(2, name="pool1")(x)
        x = L.Flatten(name="flatten")(x)
        x = L.Dense(1024, activation="relu", name="dense")(x)
        x = L.Dropout(0.5, name="dropout")(x)
    else:
        for block, filters in enumerate((32, 64, 128), start=1):
            x = L.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}a")(x)
            x = L.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}b")(x)
            x = L.MaxPooling2D(2, name=f"pool{block}")(x)
            x = L.Dropout(0.25, name=f"dropout{block}")(x)
        x = L.Flatten(name="flatten")(x)
        x = L.Dense(512, activation="relu", name="dense")(x)
        x = L.Dropout(0.5, name="dropout")(x)
    outputs = L.Dense(n_classes, activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name=arch)
