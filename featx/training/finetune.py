"""End-to-end fine-tuning: the route for data the cached codes do not fit.

The model is the study's: backbone -> (pooled tap) -> Dense(1024, relu) -> Dropout -> softmax
(:mod:`featx.training.networks`). The head is warm-started from a dense head trained on the cache
(``init_head``, or trained here first), so training starts from where the cheap route ended instead of from
random weights. BatchNormalization layers stay frozen and in inference mode throughout (the backbone is
called with ``training=False``), the standard recipe for fine-tuning on small data. Augmentation runs in the
input pipeline (:mod:`featx.augment`, Keras 1.2.2 semantics), so the saved model is the plain classifier.
The test split is the cached route's, so the runs log compares like with like. Recipes and unfreeze
policies: :mod:`featx.training.recipes`.

A validation split always exists: when the dataset's folders give none (``train/`` + ``test/``), a
stratified ``val_fraction`` of the training images is held out here (seeded), and the metrics say so.

The workflow is :func:`finetune`; its steps are :func:`plan_finetune`, :func:`finetune_split`,
:func:`warm_start`, :func:`train_classifier`, :func:`evaluate_classifier` and :func:`finetune_metrics`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from featx import _tf
from featx.augment import get_augmentation
from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone
from featx.bundle import Bundle, load_bundle, save_bundle
from featx.cache import default_cache_dir
from featx.datasets import SplitSpec
from featx.errors import FeatxError
from featx.extract import load_network_inputs
from featx.heads import make_head
from featx.modelmeta import ModelDescription
from featx.outputs import RunOutputs, RunResult
from featx.runs import history_logger
from featx.stats import accuracy_from_counts, accuracy_summary, format_accuracy
from featx.training.codes import LabelledCodes, labelled_codes
from featx.training.fit import fit_head
from featx.training.networks import batches, build_backbone, build_classifier, check_init_head, progress_bar
from featx.training.recipes import (Recipe, apply_unfreeze, default_policy, first_trainable_index, get_recipe,
                                    make_optimizer, one_tap)
from featx.vocabulary import SPLITS, one_value


@dataclass(frozen=True)
class FinetuneOptions:
    """Every option of :func:`finetune` but the data, backbone and tap, as one value.

    ``recipe`` names the starting settings (:data:`featx.training.recipes.RECIPES`); ``epochs``,
    ``batch_size``, ``learning_rate``, ``momentum`` (SGD only), ``warmup`` (head-only epochs), ``augment`` and
    ``patience`` override it when not None. ``unfreeze``: ``all``, ``none``, ``from:<tap|layer|index>`` or
    ``top:<N stages>`` (default per backbone). ``init_head``: a dense-head bundle to start from. ``progress``:
    a per-step bar on stderr (default: when stderr is a terminal).
    """

    unfreeze: str | None = None
    init_head: object = None
    recipe: str = "default"
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    momentum: float | None = None
    warmup: float | None = None
    augment: str | None = None
    patience: int | None = None
    class_weight: object = "balanced"
    weights: object = "imagenet"
    trust: bool = False
    progress: bool | None = None
    split: SplitSpec = field(default_factory=SplitSpec)

    @classmethod
    def from_keywords(cls, **keywords) -> "FinetuneOptions":
        split = SplitSpec.resolve(keywords.pop("split", None), keywords)
        known = {f.name for f in fields(cls)}
        unknown = set(keywords) - known
        if unknown:
            raise TypeError(f"finetune() got unexpected keyword arguments {', '.join(sorted(unknown))}")
        return cls(**keywords, split=split)


@dataclass
class FinetunePlan:
    """A checked fine-tune: the network, the recipe, the policy and (when given) the warm-start bundle."""

    backbone: str
    tap: str
    spec: object
    recipe: Recipe
    policy: str
    base: object  # the Keras backbone, input -> pooled tap
    augmentation: object
    options: FinetuneOptions
    given: Bundle | None = None


def plan_finetune(backbone: str, tap: str, options: FinetuneOptions) -> FinetunePlan:
    """Check every option, before anything is trained or written.

    Raises
    ------
    FeatxError
        An unknown recipe, backbone or tap, a value out of range, an ``unfreeze`` that names no layer, an
        ``init_head`` that is missing, no bundle, or not a dense head for this tap.
    """
    o = options
    spec = get_backbone(backbone)
    spec.tap(tap)
    recipe = get_recipe(o.recipe, epochs=o.epochs, batch_size=o.batch_size, learning_rate=o.learning_rate,
                        momentum=o.momentum, warmup=o.warmup, augment=o.augment, patience=o.patience)
    if o.class_weight not in (None, "none", "balanced"):
        raise FeatxError(f"expected balanced or none, got {o.class_weight!r}", param="class_weight")
    if o.init_head is not None and not Path(o.init_head).exists():
        raise FeatxError(f"{o.init_head} does not exist; give a bundle written by fit-head with the dense head",
                         param="init_head")
    policy = o.unfreeze or default_policy(backbone)
    base = build_backbone(spec, tap, o.weights)
    first_trainable_index(base, spec, policy)  # a mistyped --unfreeze fails here
    given = None
    if o.init_head is not None:  # a file that is no bundle, or not a dense head for this tap, fails before any work
        given = load_bundle(o.init_head, trust=o.trust)
        check_init_head(given, backbone, tap, int(base.output.shape[-1]))
    return FinetunePlan(backbone, tap, spec, recipe, policy, base, get_augmentation(recipe.augment), o, given)


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


def finetune_split(codes: LabelledCodes, split_spec: SplitSpec, echo) -> tuple[np.ndarray, bool]:
    """The stored split, with validation images carved from train when it has none: ``(split, carved)``."""
    names = np.asarray(codes.features.class_names)
    y_all = np.searchsorted(names, codes.y)
    split = carve_validation(codes.split, y_all, codes.features.keys, split_spec.val_fraction, split_spec.seed)
    carved = bool((split == "val").sum() != (codes.split == "val").sum())
    if carved:
        echo(f"no validation images in the split: {int((split == 'val').sum())} of the training images "
             f"(a stratified {split_spec.val_fraction:g}) are held out to stop on")
    return split, carved


def fit_init_head(codes: LabelledCodes, split, backbone: str, tap: str, weights, out_dir: Path, seed: int) -> Path:
    """A dense head on the codes of ``split == 'train'`` (early stopping on ``'val'``), saved as a bundle
    in ``out_dir`` with its metrics.json.  No runs-log row: it is a step of the fine-tune."""
    X = codes.features.matrix([tap])
    model = make_head("dense", random_state=seed)
    train, val = split == "train", split == "val"
    model.fit(X[train], codes.y[train], validation_data=(X[val], codes.y[val]) if val.any() else None)
    acc = {s: float((model.predict(X[split == s]) == codes.y[split == s]).mean()) if (split == s).any() else None
           for s in SPLITS}
    metrics = {"dataset": codes.name, "route": "cached", "backbone": backbone, "taps": [tap], "head": "dense",
               "split_id": codes.split_id, "val_carved_from_train": True,
               "n": {s: int((split == s).sum()) for s in SPLITS}, "accuracy": acc, "evaluated_on": "val",
               "classes_not_evaluated": sorted(set(codes.features.class_names) - set(codes.y[val].tolist()))}
    extractor = {"backbone": backbone, "weights": None if weights is None else str(weights),
                 "weights_id": codes.features.config["weights"], "taps": [tap], "pooling": "avg",
                 "dtype": "float32"}
    outputs = RunOutputs(codes.name, "cached", "init-head", out_dir)
    path = save_bundle(Bundle(model, extractor, list(codes.features.class_names), codes.split_id, metrics),
                       outputs.prepare() / "model.featx")
    outputs.write_metrics(metrics)
    return path


def warm_start(data, plan: FinetunePlan, codes: LabelledCodes, split, carved: bool, folder: Path,
               cache_dir: Path, out_dir, echo) -> tuple[Bundle, object]:
    """The dense head the classifier starts from: the given one, or one trained on the cached codes now.

    Returns ``(bundle, its path)``. When validation was carved from train, the head is trained on the
    remaining training images only: it must not have seen the held-out images, or validation would flatter
    the starting point. Otherwise fit-head trains it with ``refit=False``, for the same reason.
    """
    o = plan.options
    init_head = o.init_head
    if init_head is None and carved:
        echo("training the dense head on the cached codes of the remaining training images first "
             "(pass --init-head to reuse one)")
        init_head = fit_init_head(codes, split, plan.backbone, plan.tap, o.weights, folder / "init-head",
                                  o.split.seed)
    elif init_head is None:
        echo("training the dense head on the cached codes first (pass --init-head to reuse one)")
        init_head = fit_head(data, plan.backbone, [plan.tap], head="dense", weights=o.weights, cache_dir=cache_dir,
                             out_dir=Path(out_dir) / "init-head" if out_dir else None, split=o.split,
                             refit=False).bundle
    bundle = plan.given
    if bundle is None:  # the head trained above, on this run's own codes
        bundle = load_bundle(init_head, trust=o.trust)
        check_init_head(bundle, plan.backbone, plan.tap, int(plan.base.output.shape[-1]))
    return bundle, init_head


@dataclass
class TrainingLog:
    """What happened while training: Keras history, the warm start's check, interruption, time."""

    history: dict
    warmup_steps: int
    start_acc: float | None
    kept_warm_start: bool
    interrupted: bool
    seconds: float


def read_history(path: Path) -> dict:
    """``history.csv`` as Keras's ``History.history`` dict (empty when the file is missing or empty)."""
    import pandas as pd

    if not path.exists() or path.stat().st_size == 0:
        return {}
    frame = pd.read_csv(path)
    return {c: frame[c].tolist() for c in frame.columns if c != "epoch"}


def class_weights(plan: FinetunePlan, y_train: np.ndarray) -> dict | None:
    """Inverse-frequency weights per class index (``balanced``), else None."""
    if plan.options.class_weight != "balanced":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y_train)
    w = compute_class_weight("balanced", classes=present, y=y_train)
    return {int(c): float(v) for c, v in zip(present, w)}


def train_classifier(classifier, plan: FinetunePlan, parts: dict, n_classes: int, folder: Path, echo) -> TrainingLog:
    """Warm-up, unfreeze, train with early stopping; give the warm start back when it validates better.

    The warm start (the init head, before the warm-up) is a candidate too: when the epoch early stopping kept
    is less accurate on validation, the warm start is restored, so the route does not end below where it
    started (accuracy, not loss: an overconfident init head has a high loss but can be right). Ctrl-C keeps
    the best checkpoint so far.
    """
    keras = _tf.keras()
    recipe, spec, seed = plan.recipe, plan.spec, plan.options.split.seed
    checkpoint = folder / "best.weights.h5"
    has_val = len(parts["val"][1]) > 0
    weights_by_class = class_weights(plan, parts["train"][1])
    # label smoothing needs one-hot targets (Keras's sparse loss has no smoothing); built-in losses only,
    # so that keras.models.load_model reads model.keras back without custom objects
    one_hot = n_classes if recipe.label_smoothing else None
    train = batches(*parts["train"], spec, recipe.batch_size, True, seed, plan.augmentation, one_hot)
    val = batches(*parts["val"], spec, max(32, recipe.batch_size), False, seed, None, one_hot) if has_val else None
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing) if one_hot else \
        keras.losses.SparseCategoricalCrossentropy()
    n_train, steps = len(parts["train"][1]), len(train)
    start = time.perf_counter()
    log = TrainingLog({}, int(math.ceil(recipe.warmup * steps)) if recipe.warmup else 0, None, False, False, 0.0)
    start_weights = None
    try:
        if has_val:
            classifier.compile(loss=loss, metrics=["accuracy"])
            log.start_acc = float(classifier.evaluate(val, verbose=0)[1])
            start_weights = classifier.get_weights()
        if log.warmup_steps:
            apply_unfreeze(plan.base, spec, "none")
            classifier.compile(keras.optimizers.Adam(recipe.warmup_learning_rate), loss, metrics=["accuracy"])
            echo(f"warm-up: the head alone for {log.warmup_steps} step{'' if log.warmup_steps == 1 else 's'} "
                 f"({log.warmup_steps * recipe.batch_size} images)")
            bar = progress_bar(n_train, recipe.batch_size, 1, echo, plan.options.progress, "warm-up")
            classifier.fit(train, epochs=1, steps_per_epoch=log.warmup_steps, class_weight=weights_by_class,
                           callbacks=[bar], verbose=0)
        trainable = apply_unfreeze(plan.base, spec, plan.policy)
        classifier.compile(make_optimizer(recipe, recipe.epochs * steps), loss, metrics=["accuracy"])
        callbacks = [history_logger(folder / "history.csv"),
                     progress_bar(n_train, recipe.batch_size, recipe.epochs, echo, plan.options.progress, "epoch")]
        if has_val:
            callbacks += [
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=recipe.patience, restore_best_weights=True),
                keras.callbacks.ModelCheckpoint(str(checkpoint), monitor="val_loss", save_best_only=True,
                                                save_weights_only=True),
            ]
        echo(f"fine-tuning {plan.backbone} ({recipe.name} recipe, {plan.policy}: {len(trainable)} layers with "
             f"weights train) on {n_train} images, {recipe.epochs} epochs at most, {steps} steps each")
        log.history = classifier.fit(train, validation_data=val, epochs=recipe.epochs, class_weight=weights_by_class,
                                     callbacks=callbacks, verbose=0).history
        if has_val and log.history.get("val_loss"):
            tuned_acc = float(classifier.evaluate(val, verbose=0)[1])
            if tuned_acc < log.start_acc:
                classifier.set_weights(start_weights)
                log.kept_warm_start = True
                echo(f"validation accuracy {tuned_acc:.3f} after fine-tuning is below the warm start's "
                     f"{log.start_acc:.3f}: keeping the warm start")
    except KeyboardInterrupt:
        log.interrupted = True
        echo("interrupted: keeping the best checkpoint so far")
        log.history = read_history(folder / "history.csv")
        if checkpoint.exists():
            classifier.load_weights(checkpoint)
    log.seconds = time.perf_counter() - start
    return log


def evaluate_classifier(classifier, spec, parts: dict) -> tuple[dict, dict, dict]:
    """Predictions on every non-empty split: ``(accuracy, correct, predicted class indices)`` per split."""
    acc, correct, preds = {}, {}, {}
    for s in SPLITS:
        Xs, ys = parts[s]
        if len(ys):
            preds[s] = classifier.predict(batches(Xs, ys, spec, 32, False, 0), verbose=0).argmax(1)
            correct[s] = int((preds[s] == ys).sum())
            acc[s] = correct[s] / len(ys)
        else:
            acc[s], correct[s] = None, 0
    return acc, correct, preds


def finetune_metrics(plan: FinetunePlan, codes: LabelledCodes, parts: dict, carved: bool, log: TrainingLog,
                     evaluated: tuple, init_head, total_seconds: float) -> dict:
    """``metrics.json`` of a fine-tune (:data:`featx.outputs.METRICS_SCHEMA` plus the route's own keys)."""
    acc, correct, preds = evaluated
    trainable = [layer.name for layer in plan.base.layers if layer.trainable and layer.weights]
    eval_split = "test" if len(parts["test"][1]) else "val"
    metrics = {
        "dataset": codes.name, "route": "finetune", "backbone": plan.backbone, "taps": [plan.tap], "tap": plan.tap,
        "unfreeze": plan.policy, "recipe": plan.recipe.name,
        "settings": {k: v for k, v in plan.recipe.__dict__.items() if k != "name"},
        "augmentation": plan.augmentation.id,
        "trainable_layers": len(trainable), "split_id": codes.split_id, "val_carved_from_train": carved,
        "n": {s: int(len(parts[s][1])) for s in SPLITS}, "accuracy": acc,
        "accuracy_text": {s: format_accuracy(correct[s], len(parts[s][1])) for s in SPLITS},
        "epochs_run": len(log.history.get("loss", [])), "warmup_steps": log.warmup_steps,
        "warm_start_val_accuracy": log.start_acc, "kept_warm_start": log.kept_warm_start,
        "train_seconds": log.seconds, "total_seconds": total_seconds, "interrupted": log.interrupted,
        "init_head": str(init_head),
        "evaluated_on": eval_split,
    }
    if len(parts["val"][1]) and eval_split == "test":  # the figure early stopping watched, said as what it is
        metrics["validation"] = accuracy_from_counts(int(correct["val"]), len(parts["val"][1]), "val")
    if eval_split in preds:  # as fit-head saves it: accuracy, correct, n, interval95, smallest_class, warning
        names = sorted(codes.features.class_names)  # parts hold indices into the sorted class names
        summary = accuracy_summary(parts[eval_split][1], preds[eval_split], kind=eval_split, classes=range(len(names)))
        summary["classes_missing"] = [names[i] for i in summary["classes_missing"]]
        metrics[eval_split] = {k: v for k, v in summary.items() if k != "text"}
    metrics["classes_not_evaluated"] = metrics[eval_split]["classes_missing"] if eval_split in preds else \
        sorted(codes.features.class_names)
    return metrics


def finetune(data, backbone: str = DEFAULT_BACKBONE, taps=("pre_logits",), *, cache_dir=None, out_dir=None,
             echo=print, options: FinetuneOptions | None = None, tap=None, **keywords) -> RunResult:
    """Fine-tune ``backbone`` end to end on ``data``; writes model.keras, history, curves, metrics.

    Parameters
    ----------
    data : str or Path
        A labelled dataset folder (class folders, or train/val/test folders of class folders).
    taps : str or list of one str
        The one tap the head reads (``tap=`` is its old spelling, accepted for one release).
    cache_dir, out_dir : path, optional
        The cache and the output folder (default ``featx-out/<dataset>-<backbone>-finetune``).
    echo : callable
        Where progress lines go (``print``).
    options : FinetuneOptions, optional
        Every other option as one value, or its fields as keywords: ``unfreeze``, ``init_head``, ``recipe``,
        ``epochs``, ``batch_size``, ``learning_rate``, ``momentum``, ``warmup``, ``augment``,
        ``class_weight``, ``patience``, ``weights``, ``trust``, ``progress``, and the split's
        ``val_fraction``, ``test_fraction``, ``seed``.

    Returns
    -------
    RunResult
        ``model`` (path of model.keras), ``metrics`` (also in metrics.json), ``out_dir``.

    Raises
    ------
    FeatxError
        For a bad option (unknown recipe, ``--unfreeze`` that names no layer, a value out of range),
        before anything is trained or written.
    """
    if tap is not None:
        warnings.warn("finetune(tap=...) is now finetune(taps=...)", FutureWarning, stacklevel=2)
        taps = tap
    options = one_value(options, FinetuneOptions, keywords) if options is not None else \
        FinetuneOptions.from_keywords(**keywords)
    start = time.perf_counter()
    plan = plan_finetune(backbone, one_tap(taps), options)
    cache_dir = Path(cache_dir or default_cache_dir())
    codes = labelled_codes(data, backbone, [plan.tap], weights=options.weights, cache_dir=cache_dir,
                           split=options.split)
    split, carved = finetune_split(codes, options.split, echo)
    outputs = RunOutputs(codes.name, "finetune", f"{backbone}-finetune", out_dir, cache_dir)
    bundle, init_head = warm_start(data, plan, codes, split, carved, outputs.folder, cache_dir, out_dir, echo)
    class_names = list(bundle.head.classes_)
    y = np.searchsorted(class_names, codes.y)
    images = load_network_inputs(plan.spec, codes.features.paths)
    parts = {s: (images[split == s], y[split == s]) for s in SPLITS}
    _tf.keras().utils.set_random_seed(options.split.seed)
    classifier = build_classifier(plan.spec, plan.base, len(class_names), bundle.head)
    folder = outputs.prepare()
    log = train_classifier(classifier, plan, parts, len(class_names), folder, echo)
    classifier.save(folder / "model.keras")  # the best weights (EarlyStopping restored them)
    (folder / "best.weights.h5").unlink(missing_ok=True)
    evaluated = evaluate_classifier(classifier, plan.spec, parts)
    metrics = finetune_metrics(plan, codes, parts, carved, log, evaluated, init_head, time.perf_counter() - start)
    outputs.write_metrics(metrics)
    outputs.write_description(ModelDescription("finetune", tuple(class_names), codes.split_id,
                                               backbone=backbone, tap=plan.tap))
    outputs.plot_curves(log.history, f"{codes.name}: fine-tune {backbone} ({plan.recipe.name}, {plan.policy})")
    outputs.log_run(metrics, head=f"dense/{plan.policy}/{plan.recipe.name}", output=folder / "model.keras",
                    extract_s=codes.extract_seconds, fit_s=metrics["total_seconds"])
    return RunResult(folder / "model.keras", metrics, folder)
