"""End-to-end fine-tuning: the route for data the cached codes do not fit.

The model is the study's: backbone -> (pooled tap) -> Dense(1024, relu) ->
Dropout -> softmax, with the study's augmentation in front (active only in
training).  The head is warm-started from a dense head trained on the cache
(``init_head``, or trained here first), so training starts from where the
cheap route ended instead of from random weights.  BatchNormalization layers
stay frozen and in inference mode throughout (the backbone is called with
``training=False``), the standard recipe for fine-tuning on small data.
The test split is the cached route's, so the runs log compares like with like.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np

from featx import _tf
from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone, pool, tap_output
from featx.bundle import load_bundle
from featx.cache import default_cache_dir
from featx.errors import FeatxError
from featx.extract import load_network_inputs
from featx.fit import SPLITS, fit_head, labelled_codes, prediction_dataset, prediction_table
from featx.runs import append_run, history_logger, plot_curves, runs_log_path

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
                raise FeatxError(f"--unfreeze: layer {index} is out of range (the backbone has {len(layers)} layers)")
            return index % len(layers)
        names = [layer.name for layer in layers]
        if arg in spec.tap_names:
            tap = spec.tap(arg)
            target = layers[tap.layer].name if isinstance(tap.layer, int) else tap.layer
            return names.index(target) + 1  # the layers after the tap
        if arg in names:
            return names.index(arg)
        raise FeatxError(f"--unfreeze: {arg!r} is neither a tap ({', '.join(spec.tap_names)}) nor a layer name")
    if kind == "top" and arg.isdigit() and int(arg) >= 1:
        stages = [t for t in spec.taps if t.name.startswith("stage")]
        n = int(arg)
        if n >= len(stages):
            return 0
        boundary = stages[-(n + 1)]
        names = [layer.name for layer in layers]
        target = layers[boundary.layer].name if isinstance(boundary.layer, int) else boundary.layer
        return names.index(target) + 1
    raise FeatxError(f"--unfreeze: expected all, none, from:<tap|layer|index> or top:<N stages>, got {policy!r}")


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


def build_model(spec, n_classes: int, tap: str = "pre_logits", weights="imagenet", head=None, seed: int = 0,
                augment: bool = True, pooling: str = "avg"):
    """Backbone + dense head; ``head`` is a fitted featx dense :class:`~featx.heads.Head` to start from."""
    from featx.augment import study_augmentation

    keras = _tf.keras()
    net = spec.build(weights)
    base = keras.Model(net.input, pool(tap_output(net, spec.tap(tap)), pooling, tap), name="backbone")
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
    if not augment:
        return classifier, base
    # augmentation in front, for training only; the classifier alone is what gets saved
    # (Keras cannot reload RandomShear's saved config, and it is the identity at inference anyway)
    train_in = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    model = keras.Model(train_in, classifier(study_augmentation(seed)(train_in)), name=f"{spec.name}_finetune")
    return model, base


def _head_parts(head, dim, n_classes):
    if head is None:
        return None, None
    steps = dict(head.pipeline_.steps)
    if head.kind != "dense" or set(steps) - {"scale", "clf"}:
        raise FeatxError("--init-head: expected a bundle with a dense head on plain or standardised codes "
                         f"(got {head.kind} with steps {', '.join(steps)})")
    dense = steps["clf"]
    if dense.n_features_in_ != dim or len(dense.classes_) != n_classes:
        raise FeatxError(f"--init-head: the head expects {dense.n_features_in_} inputs and {len(dense.classes_)} "
                         f"classes, the model gives {dim} and has {n_classes}")
    return steps.get("scale"), dense


@functools.cache
def _batches_class():
    """Defined on first use: subclassing ``PyDataset`` needs Keras imported."""
    keras = _tf.keras()

    class Batches(keras.utils.PyDataset):
        """Normalised image batches for Keras, reshuffled each epoch (seeded)."""

        def __init__(self, images, y, spec, batch_size, shuffle, seed):
            super().__init__()
            self.images, self.y, self.spec = images, y, spec
            self.batch_size, self.shuffle = batch_size, shuffle
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(y))
            self.on_epoch_end()

        def __len__(self):
            return int(np.ceil(len(self.y) / self.batch_size))

        def __getitem__(self, i):
            idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
            return self.spec.normalize(self.images[idx]), self.y[idx]

        def on_epoch_end(self):
            if self.shuffle:
                self.rng.shuffle(self.order)

    return Batches


def batches(images, y, spec, batch_size: int, shuffle: bool = False, seed: int = 0):
    return _batches_class()(images, y, spec, batch_size, shuffle, seed)


def finetune(data, backbone: str = DEFAULT_BACKBONE, taps=("pre_logits",), unfreeze: str | None = None,
             init_head=None, epochs: int = 10, batch_size: int = 16, learning_rate: float = 1e-4,
             momentum: float = 0.9, class_weight="balanced", patience: int = 3, weights="imagenet",
             cache_dir=None, out_dir=None, val_fraction=0.2, test_fraction=0.2, seed: int = 0,
             trust: bool = False, echo=print, tap=None) -> dict:
    """Fine-tune ``backbone`` end to end on ``data``; writes model.keras, history, curves, metrics.

    ``taps``: the one tap the head reads (a name or a one-name list, as elsewhere in featx);
    ``tap=`` is its old spelling, accepted for one release.
    """
    if tap is not None:
        import warnings

        warnings.warn("finetune(tap=...) is now finetune(taps=...)", FutureWarning, stacklevel=2)
        taps = tap
    tap = one_tap(taps)
    keras = _tf.keras()
    from sklearn.utils.class_weight import compute_class_weight

    spec = get_backbone(backbone)
    policy = unfreeze or default_policy(backbone)
    cache_dir = Path(cache_dir or default_cache_dir())
    start = time.perf_counter()
    if init_head is None:
        echo("training the dense head on the cached codes first (pass --init-head to reuse one)")
        init_head = fit_head(data, backbone, [tap], head="dense", weights=weights, cache_dir=cache_dir,
                             out_dir=Path(out_dir) / "init-head" if out_dir else None,
                             val_fraction=val_fraction, test_fraction=test_fraction, seed=seed).bundle
    bundle = load_bundle(init_head, trust=trust)
    if bundle.extractor["backbone"] != backbone or bundle.extractor["taps"] != [tap]:
        raise FeatxError(f"--init-head: the bundle is for {bundle.extractor['backbone']}/"
                         f"{'+'.join(bundle.extractor['taps'])}, not {backbone}/{tap}")
    codes = labelled_codes(data, backbone, [tap], weights=weights, cache_dir=cache_dir, val_fraction=val_fraction,
                           test_fraction=test_fraction, seed=seed)
    class_names = list(bundle.head.classes_)
    y = np.searchsorted(class_names, codes.y)
    images = load_network_inputs(spec, codes.features.paths)
    parts = {s: (images[codes.split == s], y[codes.split == s]) for s in SPLITS}

    model, base = build_model(spec, len(class_names), tap, weights, bundle.head, seed)
    trainable = apply_unfreeze(base, spec, policy)
    model.compile(keras.optimizers.SGD(learning_rate, momentum=momentum), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    dataset_name = codes.name
    out_dir = Path(out_dir or Path("featx-out") / f"{dataset_name}-{backbone}-finetune")
    out_dir.mkdir(parents=True, exist_ok=True)
    best = out_dir / "model.keras"
    checkpoint = out_dir / "best.weights.h5"
    has_val = len(parts["val"][1]) > 0
    callbacks = [history_logger(out_dir / "history.csv")]
    if has_val:
        callbacks += [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(str(checkpoint), monitor="val_loss", save_best_only=True,
                                            save_weights_only=True),
        ]
    weights_by_class = None
    if class_weight == "balanced":
        w = compute_class_weight("balanced", classes=np.arange(len(class_names)), y=parts["train"][1])
        weights_by_class = {i: float(v) for i, v in enumerate(w)}
    echo(f"fine-tuning {backbone} ({policy}: {len(trainable)} layers with weights train) on "
         f"{len(parts['train'][1])} images, {epochs} epochs at most")
    train = batches(*parts["train"], spec, batch_size, True, seed)
    val = batches(*parts["val"], spec, batch_size, False, seed) if has_val else None
    fit_start = time.perf_counter()
    interrupted = False
    try:
        history = model.fit(train, validation_data=val, epochs=epochs, class_weight=weights_by_class,
                            callbacks=callbacks, verbose=2 if echo is print else 0)
        history = history.history
    except KeyboardInterrupt:
        interrupted = True
        echo("interrupted: keeping the best checkpoint so far")
        history = _read_history(out_dir / "history.csv")
        if checkpoint.exists():
            model.load_weights(checkpoint)
    train_seconds = time.perf_counter() - fit_start
    classifier = model.get_layer(f"{spec.name}_finetuned")
    classifier.save(best)  # the best weights (EarlyStopping restored them), without the augmentation
    checkpoint.unlink(missing_ok=True)

    acc = {}
    for s in SPLITS:
        Xs, ys = parts[s]
        acc[s] = float((classifier.predict(batches(Xs, ys, spec, 32, False, 0), verbose=0).argmax(1) == ys).mean()) \
            if len(ys) else None
    metrics = {
        "dataset": dataset_name, "backbone": backbone, "tap": tap, "unfreeze": policy,
        "trainable_layers": len(trainable), "split_id": codes.split_id,
        "n": {s: int(len(parts[s][1])) for s in SPLITS}, "accuracy": acc,
        "epochs_run": len(history.get("loss", [])), "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start, "interrupted": interrupted,
        "init_head": str(init_head),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / META_FILE).write_text(json.dumps({"backbone": backbone, "class_names": class_names, "tap": tap,
                                                 "split_id": codes.split_id}, indent=2))
    if history.get("loss"):
        plot_curves(history, out_dir / "curves.png", f"{dataset_name}: fine-tune {backbone} ({policy})")
    append_run(runs_log_path(cache_dir), {
        "dataset": dataset_name, "route": "finetune", "backbone": backbone, "taps": tap, "head": f"dense/{policy}",
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


def predict_finetuned(model_path, images, top=None, out=None, batch_size: int = 32):
    """Predictions of a fine-tuned ``model.keras`` (its featx.json says the backbone and classes)."""
    keras = _tf.keras()
    model_path = Path(model_path)
    meta_path = model_path.with_name(META_FILE)
    if not model_path.exists() or not meta_path.exists():
        raise FeatxError(f"{model_path}: expected a model.keras written by featx finetune, with {META_FILE} beside it")
    meta = json.loads(meta_path.read_text())
    spec = get_backbone(meta["backbone"])
    model = keras.models.load_model(model_path)
    dataset = prediction_dataset(images)
    from featx.preprocess import load_for_network
    from featx.images import ImageError

    paths, batches, failures, labels = [], [], [], []
    for i, p in enumerate(dataset.paths):
        try:
            batches.append(load_for_network(spec, p))
            paths.append(p)
            labels.append(dataset.class_names[dataset.labels[i]] if dataset.labels is not None else None)
        except ImageError as exc:
            failures.append((p, str(exc)))
    known = dataset.labels is not None and set(dataset.class_names) <= set(map(str, meta["class_names"]))
    proba = np.concatenate([model.predict(spec.normalize(np.stack(batches[i : i + batch_size])), verbose=0)
                            for i in range(0, len(batches), batch_size)]) if batches else np.zeros((0, 1))
    table = prediction_table(paths, proba.astype(np.float64), meta["class_names"], top, out,
                             true_labels=labels if known else None)
    table.attrs["failures"] = failures
    return table
