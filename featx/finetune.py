"""End-to-end fine-tuning: the route for data the cached codes do not fit.

The model is the study's: backbone -> (pooled tap) -> Dense(1024, relu) ->
Dropout -> softmax.  The head is warm-started from a dense head trained on
the cache (``init_head``, or trained here first), so training starts from
where the cheap route ended instead of from random weights.
BatchNormalization layers stay frozen and in inference mode throughout (the
backbone is called with ``training=False``), the standard recipe for
fine-tuning on small data.  Augmentation runs in the input pipeline
(:mod:`featx.augment`, Keras 1.2.2 semantics), so the saved model is the
plain classifier.  The test split is the cached route's, so the runs log
compares like with like.

Two recipes (``recipe=``):

``default``
    converges in a few CPU epochs: a short head-only warm-up (a fraction of
    an epoch, Adam), then the top stages unfrozen (``top:2``) with AdamW and
    a cosine learning-rate decay, light augmentation (shifts and zoom of
    10 %, horizontal flip), early stopping on the validation split.
``study``
    the 2017 recipe: SGD at 1e-4 with momentum 0.9, constant rate, the
    study's augmentation, no warm-up.  It needs the study's hours of epochs.

A validation split always exists: when the dataset's folders give none
(``train/`` + ``test/``), a stratified ``val_fraction`` of the training
images is held out here (seeded), and the metrics say so.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from featx import _tf
from featx.augment import Augmentation, get_augmentation
from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone, pool, tap_output
from featx.bundle import load_bundle
from featx.cache import default_cache_dir
from featx.errors import FeatxError
from featx.extract import load_network_inputs
from featx.fit import SPLITS, accuracy_summary, fit_head, labelled_codes, prediction_dataset, prediction_table
from featx.runs import append_run, history_logger, plot_curves, runs_log_path
from featx.stats import format_accuracy

# The study: everything for VGG, from layer 94 for Inception/Xception.
STUDY_POLICIES = {"vgg16": "all", "vgg19": "all", "inception_v3": "from:94", "xception": "from:94"}
DEFAULT_POLICY = "top:2"
META_FILE = "featx.json"


def one_tap(taps) -> str:
    """The single tap a fine-tuned model reads: ``'stage4'`` or ``['stage4']`` -> ``'stage4'``."""
    taps = [taps] if isinstance(taps, str) else list(taps)
    if len(taps) != 1:
        raise FeatxError(f"fine-tuning reads one tap, got {', '.join(map(str, taps)) or 'none'}", param="taps")
    return taps[0]


def default_policy(backbone: str) -> str:
    return STUDY_POLICIES.get(backbone, DEFAULT_POLICY)


def _is_batchnorm(layer) -> bool:
    return type(layer).__name__ in ("BatchNormalization", "SyncBatchNormalization")


def first_trainable_index(base, spec, policy: str) -> int:
    """Index in ``base.layers`` of the first layer an unfreeze policy trains."""
    layers = base.layers
    if policy == "all":
        return 0
    if policy == "none":
        return len(layers)
    kind, _, arg = policy.partition(":")
    if kind == "from" and arg:
        if arg.lstrip("-").isdigit():
            index = int(arg)
            if not -len(layers) <= index < len(layers):
                raise FeatxError(f"layer {index} is out of range (the backbone has {len(layers)} layers)",
                                 param="unfreeze")
            return index % len(layers)
        names = [layer.name for layer in layers]
        if arg in spec.tap_names:
            tap = spec.tap(arg)
            target = layers[tap.layer].name if isinstance(tap.layer, int) else tap.layer
            return names.index(target) + 1  # the layers after the tap
        if arg in names:
            return names.index(arg)
        raise FeatxError(f"{arg!r} is neither a tap ({', '.join(spec.tap_names)}) nor a layer name",
                         param="unfreeze")
    if kind == "top" and arg.isdigit() and int(arg) >= 1:
        stages = [t for t in spec.taps if t.name.startswith("stage")]
        n = int(arg)
        if n >= len(stages):
            return 0
        boundary = stages[-(n + 1)]
        names = [layer.name for layer in layers]
        target = layers[boundary.layer].name if isinstance(boundary.layer, int) else boundary.layer
        return names.index(target) + 1
    raise FeatxError(f"expected all, none, from:<tap|layer|index> or top:<N stages>, got {policy!r}",
                     param="unfreeze")


def apply_unfreeze(base, spec, policy: str) -> list[str]:
    """Set ``trainable`` on the backbone's layers; returns the names now trainable.

    BatchNormalization layers stay frozen whatever the policy.
    """
    start = first_trainable_index(base, spec, policy)
    base.trainable = True
    trainable = []
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not _is_batchnorm(layer)
        if layer.trainable and layer.weights:
            trainable.append(layer.name)
    return trainable


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning recipe; every field can be overridden by the matching ``finetune`` argument.

    ``warmup``: head-only training before the backbone is unfrozen, in epochs (fractions allowed; 0: none).
    ``optimizer``: ``adamw`` (with ``weight_decay``) or ``sgd`` (with ``momentum``).
    ``schedule``: ``cosine`` (decays to 0 over the planned steps) or ``constant``.
    ``augment``: a preset of :mod:`featx.augment` (``light``, ``study``, ``none``).
    """

    name: str
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    schedule: str
    augment: str
    patience: int
    warmup: float = 0.0
    warmup_learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0


RECIPES = {
    # chosen from measurements on cifar10_3k and flowers5 (scripts/bench_finetune.py; README)
    "default": Recipe("default", epochs=6, batch_size=32, learning_rate=1e-4, optimizer="adamw", schedule="cosine",
                      augment="light", patience=2, warmup=0.25, weight_decay=1e-4, label_smoothing=0.1),
    # Keras 1.2.2 study: SGD(lr=1e-4, momentum=0.9), ImageDataGenerator as in featx.augment.STUDY
    "study": Recipe("study", epochs=10, batch_size=16, learning_rate=1e-4, optimizer="sgd", schedule="constant",
                    augment="study", patience=3, momentum=0.9),
}


def get_recipe(name: str, **overrides) -> Recipe:
    """The named recipe with the given fields replaced (``None`` values are ignored).

    Raises
    ------
    FeatxError
        For an unknown recipe name or a value out of range (names the option).
    """
    if name not in RECIPES:
        raise FeatxError(f"expected one of {', '.join(RECIPES)}, got {name!r}", param="recipe")
    recipe = replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
    checks = [("epochs", recipe.epochs >= 1, "a positive number of epochs"),
              ("batch_size", recipe.batch_size >= 1, "a positive batch size"),
              ("learning_rate", recipe.learning_rate > 0, "a positive learning rate"),
              ("warmup", recipe.warmup >= 0, "0 or more epochs of head-only warm-up"),
              ("patience", recipe.patience >= 0, "0 or more epochs"),
              ("momentum", 0 <= recipe.momentum < 1, "a momentum in [0, 1)"),
              ("optimizer", recipe.optimizer in ("adamw", "sgd"), "adamw or sgd"),
              ("schedule", recipe.schedule in ("cosine", "constant"), "cosine or constant")]
    for field_name, ok, what in checks:
        if not ok:
            raise FeatxError(f"expected {what}, got {getattr(recipe, field_name)!r}", param=field_name)
    get_augmentation(recipe.augment)
    return recipe


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
    scaler, dense = _head_parts(head, base.output.shape[-1], n_classes)
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


def _head_parts(head, dim, n_classes):
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


def _check_init_head(bundle, backbone: str, tap: str, dim: int) -> None:
    """A warm-start bundle must be a dense head on this backbone's ``tap`` codes (``dim`` wide)."""
    if bundle.extractor["backbone"] != backbone or bundle.extractor["taps"] != [tap]:
        raise FeatxError(f"the bundle is for {bundle.extractor['backbone']}/"
                         f"{'+'.join(bundle.extractor['taps'])}, not {backbone}/{tap}", param="init_head")
    if not hasattr(bundle.head, "pipeline_") or getattr(bundle.head, "kind", None) != "dense":
        raise FeatxError(f"expected a bundle with a dense head (fit-head --head dense), got "
                         f"{getattr(bundle.head, 'kind', type(bundle.head).__name__)}", param="init_head")
    _head_parts(bundle.head, dim, len(bundle.head.classes_))


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
            import sys

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


def carve_validation(split: np.ndarray, y: np.ndarray, keys, val_fraction: float, seed: int) -> np.ndarray:
    """A copy of ``split`` where a stratified, seeded ``val_fraction`` of the ``train`` images is ``val``
    (only when there is no ``val`` image yet).  The images are ordered by content key first, so the
    listing order does not matter.  Classes too small to give a validation image stay in train."""
    split = np.asarray(split).copy()
    if (split == "val").any() or val_fraction <= 0:
        return split
    train = np.flatnonzero(split == "train")
    if len(train) < 2:
        return split
    train = train[np.argsort(np.asarray(keys, dtype=object)[train].astype(str), kind="stable")]
    rng = np.random.default_rng(seed)
    for c in np.unique(y[train]):
        members = train[y[train] == c]
        k = int(round(val_fraction * len(members)))
        if len(members) >= 2 and k >= 1:
            split[rng.permutation(members)[: min(k, len(members) - 1)]] = "val"
    return split


def _fit_init_head(codes, split, backbone, tap, weights, out_dir: Path, seed: int) -> Path:
    """A dense head on the codes of ``split == 'train'`` (early stopping on ``'val'``), saved as a bundle
    in ``out_dir``; its metrics.json beside it.  No runs-log row: it is a step of the fine-tune."""
    from featx.bundle import Bundle, save_bundle
    from featx.heads import make_head

    X = codes.features.X([tap])
    model = make_head("dense", random_state=seed)
    train, val = split == "train", split == "val"
    model.fit(X[train], codes.y[train], validation_data=(X[val], codes.y[val]) if val.any() else None)
    acc = {s: float((model.predict(X[split == s]) == codes.y[split == s]).mean()) if (split == s).any() else None
           for s in SPLITS}
    metrics = {"dataset": codes.name, "backbone": backbone, "taps": [tap], "head": "dense",
               "split_id": codes.split_id, "val_carved_from_train": True,
               "n": {s: int((split == s).sum()) for s in SPLITS}, "accuracy": acc}
    extractor = {"backbone": backbone, "weights": None if weights is None else str(weights),
                 "weights_id": codes.features.config["weights"], "taps": [tap], "pooling": "avg",
                 "dtype": "float32"}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_bundle(Bundle(model, extractor, list(codes.features.class_names), codes.split_id, metrics),
                       out_dir / "model.featx")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return path


def _optimizer(recipe: Recipe, steps: int):
    keras = _tf.keras()
    lr = recipe.learning_rate
    if recipe.schedule == "cosine":
        # a linear ramp over the first tenth (Adam's first steps are its largest), then cosine to 0
        ramp = max(1, steps // 10)
        lr = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, steps - ramp), warmup_target=lr,
                                                    warmup_steps=ramp)
    if recipe.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=recipe.weight_decay)
    return keras.optimizers.SGD(lr, momentum=recipe.momentum)


def finetune(data, backbone: str = DEFAULT_BACKBONE, taps=("pre_logits",), unfreeze: str | None = None,
             init_head=None, recipe: str = "default", epochs: int | None = None, batch_size: int | None = None,
             learning_rate: float | None = None, momentum: float | None = None, warmup: float | None = None,
             augment: str | None = None, class_weight="balanced", patience: int | None = None, weights="imagenet",
             cache_dir=None, out_dir=None, val_fraction=0.2, test_fraction=0.2, seed: int = 0,
             trust: bool = False, progress: bool | None = None, echo=print, tap=None) -> dict:
    """Fine-tune ``backbone`` end to end on ``data``; writes model.keras, history, curves, metrics.

    Parameters
    ----------
    data : str or Path
        A labelled dataset folder (class folders, or train/val/test folders of class folders).
    taps : str or list of one str
        The one tap the head reads (``tap=`` is its old spelling, accepted for one release).
    recipe : {'default', 'study'}
        The starting settings (:data:`RECIPES`); ``epochs``, ``batch_size``, ``learning_rate``,
        ``momentum`` (SGD only), ``warmup`` (head-only epochs), ``augment`` and ``patience`` override it.
    unfreeze : str, optional
        ``all``, ``none``, ``from:<tap|layer|index>`` or ``top:<N stages>``; default per backbone
        (:func:`default_policy`).
    init_head : path, optional
        A dense-head bundle from fit-head to start from; default: one is trained on the cache first,
        into ``out_dir/init-head``.
    progress : bool, optional
        Per-step progress bar (images/s, ETA) on stderr; default: when stderr is a terminal.

    Returns
    -------
    dict
        ``model`` (path of model.keras), ``metrics`` (also in metrics.json), ``out_dir``.

    Raises
    ------
    FeatxError
        For a bad option (unknown recipe, ``--unfreeze`` that names no layer, a value out of range),
        before anything is trained or written.
    """
    if tap is not None:
        import warnings

        warnings.warn("finetune(tap=...) is now finetune(taps=...)", FutureWarning, stacklevel=2)
        taps = tap
    tap = one_tap(taps)
    keras = _tf.keras()
    from sklearn.utils.class_weight import compute_class_weight

    start = time.perf_counter()
    # every option is checked before anything is trained or written
    spec = get_backbone(backbone)
    spec.tap(tap)
    plan = get_recipe(recipe, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, momentum=momentum,
                      warmup=warmup, augment=augment, patience=patience)
    if class_weight not in (None, "none", "balanced"):
        raise FeatxError(f"expected balanced or none, got {class_weight!r}", param="class_weight")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise FeatxError(f"expected a fraction in [0, 1), got {f}", param=name)
    if init_head is not None and not Path(init_head).exists():
        raise FeatxError(f"{init_head} does not exist; give a bundle written by fit-head with the dense head",
                         param="init_head")
    policy = unfreeze or default_policy(backbone)
    base = build_backbone(spec, tap, weights)
    first_trainable_index(base, spec, policy)  # a mistyped --unfreeze fails here
    given = None
    if init_head is not None:  # a file that is no bundle, or not a dense head for this tap, fails before any work
        given = load_bundle(init_head, trust=trust)
        _check_init_head(given, backbone, tap, int(base.output.shape[-1]))
    augmentation = get_augmentation(plan.augment)
    cache_dir = Path(cache_dir or default_cache_dir())

    codes = labelled_codes(data, backbone, [tap], weights=weights, cache_dir=cache_dir, val_fraction=val_fraction,
                           test_fraction=test_fraction, seed=seed)
    names = np.asarray(codes.features.class_names)
    y_all = np.searchsorted(names, codes.y)
    split = carve_validation(codes.split, y_all, codes.features.keys, val_fraction, seed)
    val_carved = bool((split == "val").sum() != (codes.split == "val").sum())
    if val_carved:
        echo(f"no validation images in the split: {int((split == 'val').sum())} of the training images "
             f"(a stratified {val_fraction:g}) are held out to stop on")
    if init_head is None and val_carved:
        # the head must not have seen the held-out images, or validation would flatter the starting point
        echo("training the dense head on the cached codes of the remaining training images first "
             "(pass --init-head to reuse one)")
        init_head = _fit_init_head(codes, split, backbone, tap, weights, Path(out_dir or Path("featx-out") /
                                   f"{codes.name}-{backbone}-finetune") / "init-head", seed)
    elif init_head is None:
        echo("training the dense head on the cached codes first (pass --init-head to reuse one)")
        # refit=False: early stopping below judges on the validation images, which the head must not have seen
        init_head = fit_head(data, backbone, [tap], head="dense", weights=weights, cache_dir=cache_dir,
                             out_dir=Path(out_dir) / "init-head" if out_dir else None,
                             val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, refit=False).bundle
    bundle = given
    if bundle is None:  # the head trained above, on this run's own codes
        bundle = load_bundle(init_head, trust=trust)
        _check_init_head(bundle, backbone, tap, int(base.output.shape[-1]))
    class_names = list(bundle.head.classes_)
    y = np.searchsorted(class_names, codes.y)
    images = load_network_inputs(spec, codes.features.paths)
    parts = {s: (images[split == s], y[split == s]) for s in SPLITS}

    keras.utils.set_random_seed(seed)
    classifier = build_classifier(spec, base, len(class_names), bundle.head)
    dataset_name = codes.name
    out_dir = Path(out_dir or Path("featx-out") / f"{dataset_name}-{backbone}-finetune")
    out_dir.mkdir(parents=True, exist_ok=True)
    best = out_dir / "model.keras"
    checkpoint = out_dir / "best.weights.h5"
    has_val = len(parts["val"][1]) > 0
    weights_by_class = None
    if class_weight == "balanced":
        w = compute_class_weight("balanced", classes=np.unique(parts["train"][1]), y=parts["train"][1])
        weights_by_class = {int(c): float(v) for c, v in zip(np.unique(parts["train"][1]), w)}
    # label smoothing needs one-hot targets (Keras's sparse loss has no smoothing); built-in losses only,
    # so that keras.models.load_model reads model.keras back without custom objects
    one_hot = len(class_names) if plan.label_smoothing else None
    train = batches(*parts["train"], spec, plan.batch_size, True, seed, augmentation, one_hot)
    val = batches(*parts["val"], spec, max(32, plan.batch_size), False, seed, None, one_hot) if has_val else None
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=plan.label_smoothing) if one_hot else \
        keras.losses.SparseCategoricalCrossentropy()
    n_train, steps = len(parts["train"][1]), len(train)
    fit_start = time.perf_counter()
    interrupted = kept_warm_start = False
    start_acc = start_weights = None
    history: dict = {}
    warmup_steps = int(math.ceil(plan.warmup * steps)) if plan.warmup else 0
    try:
        # the warm start (the init head, before the warm-up) is a candidate too: when the epoch early stopping
        # kept is less accurate on validation, the warm start is given back, so the route does not end below
        # where it started (accuracy, not loss: an overconfident init head has a high loss but can be right)
        if has_val:
            classifier.compile(loss=loss, metrics=["accuracy"])
            start_acc = float(classifier.evaluate(val, verbose=0)[1])
            start_weights = classifier.get_weights()
        if warmup_steps:
            apply_unfreeze(base, spec, "none")
            classifier.compile(keras.optimizers.Adam(plan.warmup_learning_rate), loss, metrics=["accuracy"])
            echo(f"warm-up: the head alone for {warmup_steps} step{'' if warmup_steps == 1 else 's'} "
                 f"({warmup_steps * plan.batch_size} images)")
            bar = _progress_class()(n_train, plan.batch_size, 1, echo, progress, "warm-up")
            classifier.fit(train, epochs=1, steps_per_epoch=warmup_steps, class_weight=weights_by_class,
                           callbacks=[bar], verbose=0)
        trainable = apply_unfreeze(base, spec, policy)
        classifier.compile(_optimizer(plan, plan.epochs * steps), loss, metrics=["accuracy"])
        callbacks = [history_logger(out_dir / "history.csv"),
                     _progress_class()(n_train, plan.batch_size, plan.epochs, echo, progress, "epoch")]
        if has_val:
            callbacks += [
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=plan.patience, restore_best_weights=True),
                keras.callbacks.ModelCheckpoint(str(checkpoint), monitor="val_loss", save_best_only=True,
                                                save_weights_only=True),
            ]
        echo(f"fine-tuning {backbone} ({plan.name} recipe, {policy}: {len(trainable)} layers with weights train) "
             f"on {n_train} images, {plan.epochs} epochs at most, {steps} steps each")
        history = classifier.fit(train, validation_data=val, epochs=plan.epochs, class_weight=weights_by_class,
                                 callbacks=callbacks, verbose=0).history
        if has_val and history.get("val_loss"):
            tuned_acc = float(classifier.evaluate(val, verbose=0)[1])
            if tuned_acc < start_acc:
                classifier.set_weights(start_weights)
                kept_warm_start = True
                echo(f"validation accuracy {tuned_acc:.3f} after fine-tuning is below the warm start's "
                     f"{start_acc:.3f}: keeping the warm start")
    except KeyboardInterrupt:
        interrupted = True
        echo("interrupted: keeping the best checkpoint so far")
        history = _read_history(out_dir / "history.csv")
        if checkpoint.exists():
            classifier.load_weights(checkpoint)
    train_seconds = time.perf_counter() - fit_start
    trainable = [layer.name for layer in base.layers if layer.trainable and layer.weights]
    classifier.save(best)  # the best weights (EarlyStopping restored them)
    checkpoint.unlink(missing_ok=True)

    acc, correct, preds = {}, {}, {}
    for s in SPLITS:
        Xs, ys = parts[s]
        if len(ys):
            preds[s] = classifier.predict(batches(Xs, ys, spec, 32, False, 0), verbose=0).argmax(1)
            correct[s] = int((preds[s] == ys).sum())
            acc[s] = correct[s] / len(ys)
        else:
            acc[s], correct[s] = None, 0
    eval_split = "test" if len(parts["test"][1]) else "val"
    metrics = {
        "dataset": dataset_name, "backbone": backbone, "taps": [tap], "tap": tap, "unfreeze": policy,
        "recipe": plan.name,
        "settings": {k: v for k, v in plan.__dict__.items() if k != "name"}, "augmentation": augmentation.id,
        "trainable_layers": len(trainable), "split_id": codes.split_id, "val_carved_from_train": val_carved,
        "n": {s: int(len(parts[s][1])) for s in SPLITS}, "accuracy": acc,
        "accuracy_text": {s: format_accuracy(correct[s], len(parts[s][1])) for s in SPLITS},
        "epochs_run": len(history.get("loss", [])), "warmup_steps": warmup_steps,
        "warm_start_val_accuracy": start_acc, "kept_warm_start": kept_warm_start, "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start, "interrupted": interrupted,
        "init_head": str(init_head),
        "evaluated_on": eval_split,
    }
    if eval_split in preds:  # as fit-head saves it: accuracy, correct, n, interval95, smallest_class, warning
        summary = accuracy_summary(parts[eval_split][1], preds[eval_split])
        metrics[eval_split] = {k: v for k, v in summary.items() if k != "text"}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / META_FILE).write_text(json.dumps({"kind": "finetune", "backbone": backbone,
                                                 "class_names": class_names, "tap": tap,
                                                 "split_id": codes.split_id}, indent=2))
    if history.get("loss"):
        plot_curves(history, out_dir / "curves.png", f"{dataset_name}: fine-tune {backbone} ({plan.name}, {policy})")
    append_run(runs_log_path(cache_dir), {
        "dataset": dataset_name, "route": "finetune", "backbone": backbone, "taps": tap,
        "head": f"dense/{policy}/{plan.name}",
        "split_id": codes.split_id, **{f"n_{s}": metrics["n"][s] for s in SPLITS},
        **{f"{s}_acc": acc[s] for s in SPLITS}, "extract_s": codes.extract_seconds,
        "fit_s": metrics["total_seconds"], "output": str(best),
    })
    return {"model": best, "metrics": metrics, "out_dir": out_dir}


def _read_history(path: Path) -> dict:
    import pandas as pd

    if not path.exists() or path.stat().st_size == 0:
        return {}
    frame = pd.read_csv(path)
    return {c: frame[c].tolist() for c in frame.columns if c != "epoch"}


def read_model_meta(model_path) -> dict:
    """The ``featx.json`` beside a ``model.keras`` that featx wrote, checked.

    Returns
    -------
    dict
        With ``kind`` ("finetune" or "baseline"), ``class_names`` (list of str), and ``backbone``
        (finetune) or ``size`` (baseline).

    Raises
    ------
    FeatxError
        The model or its featx.json is missing, not JSON, or lacks what its kind needs.
    """
    model_path = Path(model_path)
    meta_path = model_path.with_name(META_FILE)
    if not model_path.is_file() or not meta_path.is_file():
        raise FeatxError(f"{model_path}: expected a model.keras written by featx finetune or baseline, "
                         f"with {META_FILE} beside it")
    try:
        meta = json.loads(meta_path.read_text())
        meta["kind"] = meta.get("kind", "finetune")
        meta["class_names"] = [str(c) for c in meta["class_names"]]
        if meta["kind"] == "finetune":
            get_backbone(meta["backbone"])
        elif meta["kind"] == "baseline":
            meta["size"] = int(meta["size"])
        else:
            raise ValueError(f"unknown model kind {meta['kind']!r} (expected finetune or baseline)")
    except (ValueError, KeyError, AttributeError, TypeError, FeatxError) as exc:
        raise FeatxError(f"{meta_path}: not a featx model description ({exc}); it is written beside "
                         "model.keras by featx finetune and baseline") from None
    return meta


def predict_finetuned(model_path, images, top=None, out=None, batch_size: int = 32):
    """Predictions of a ``model.keras`` written by featx ``finetune`` or ``baseline``.

    The ``featx.json`` beside it says how to feed it: a fine-tuned backbone
    (``kind: finetune``, the backbone's own resizing and normalisation) or a
    from-scratch baseline (``kind: baseline``, the centre square resized to
    ``size``, raw 0-255 values: the network rescales them itself).

    Returns the DataFrame of :func:`featx.fit.prediction_table`; ``attrs["failures"]``
    lists ``(path, reason)`` for images that could not be read.

    Raises
    ------
    FeatxError
        When the model or its featx.json is missing or unreadable.
    """
    from featx.images import ImageError, center_crop_resize, load_image

    keras = _tf.keras()
    model_path = Path(model_path)
    meta = read_model_meta(model_path)  # kind is "baseline" or "finetune", checked there
    class_names = meta["class_names"]
    if meta["kind"] == "baseline":
        size = meta["size"]

        def load(p):
            return center_crop_resize(load_image(p, min_side=size), size, 1.0)

        def prepare(batch):
            return batch.astype(np.float32)
    else:
        spec = get_backbone(meta["backbone"])

        def load(p):
            return load_network_inputs(spec, [p], workers=1)[0]

        prepare = spec.normalize
    if top is not None and not 1 <= top <= len(class_names):
        raise FeatxError(f"expected 1..{len(class_names)}, got {top}", param="top")
    model = keras.models.load_model(model_path, compile=False)
    dataset = prediction_dataset(images)
    paths, loaded, failures, labels = [], [], [], []
    for i, p in enumerate(dataset.paths):
        try:
            loaded.append(load(p))
            paths.append(p)
            labels.append(dataset.class_names[dataset.labels[i]] if dataset.labels is not None else None)
        except ImageError as exc:
            failures.append((p, str(exc)))
    known = dataset.labels is not None and set(dataset.class_names) <= set(map(str, class_names))
    proba = np.concatenate([model.predict(prepare(np.stack(loaded[i : i + batch_size])), verbose=0)
                            for i in range(0, len(loaded), batch_size)]) if loaded else np.zeros((0, len(class_names)))
    table = prediction_table(paths, proba.astype(np.float64), class_names, top, out,
                             true_labels=labels if known else None)
    table.attrs["failures"] = failures
    return table
