"""The study's from-scratch baselines: a one-layer and a six-layer CNN.

They show what transfer learning buys on small data.  Same split as the
cached route (stored by content), same augmentation, same outputs and runs
log; images are squashed to a small square (``size``, default 96) since
these networks learn everything from the few images given.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from featx import _tf
from featx.cache import default_cache_dir
from featx.datasets import discover, make_split
from featx.errors import FeatxError
from featx.extract import hash_files
from featx.fit import SPLITS, accuracy_summary
from featx.images import ImageError, center_crop_resize, load_image
from featx.runs import append_run, history_logger, plot_curves, runs_log_path

ARCHS = ("cnn1", "cnn6")


def build_baseline(arch: str, n_classes: int, size: int = 96, seed: int = 0, augment: bool = False):
    """cnn1: Conv32 -> MaxPool -> Dense1024 -> Dropout(0.5) -> softmax.
    cnn6: 2x Conv32, 2x Conv64, 2x Conv128, each pair pooled with dropout 0.25 -> Dense512 -> Dropout(0.5).

    Input: ``size`` x ``size`` x 3 raw 0-255 values (the network rescales).  Augmentation is not a layer:
    :func:`train_baseline` applies the study's (:data:`featx.augment.STUDY`) to the training batches;
    ``seed`` and ``augment`` are accepted for old callers and ignored.
    """
    keras = _tf.keras()
    L = keras.layers
    if arch not in ARCHS:
        raise FeatxError(f"expected one of {', '.join(ARCHS)}, got {arch!r}", param="arch")
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


def _load(paths, size):
    def one(p):
        return center_crop_resize(load_image(p, min_side=size), size, 1.0)

    with ThreadPoolExecutor(2) as pool:
        return np.stack(list(pool.map(one, paths)))


def train_baseline(data, arch: str = "cnn1", size: int = 96, epochs: int = 20, batch_size: int = 32,
                   learning_rate: float = 1e-4, patience: int = 5, class_weight="balanced", cache_dir=None,
                   out_dir=None, val_fraction=0.2, test_fraction=0.2, seed: int = 0, echo=print) -> dict:
    keras = _tf.keras()
    from sklearn.utils.class_weight import compute_class_weight

    if arch not in ARCHS:
        raise FeatxError(f"expected one of {', '.join(ARCHS)}, got {arch!r}", param="arch")
    cache_dir = Path(cache_dir or default_cache_dir())
    dataset = discover(data)
    if not dataset.labelled or len(dataset.class_names) < 2:
        raise FeatxError(f"{dataset.root}: a baseline needs at least 2 class folders")
    start = time.perf_counter()
    hashed = hash_files(dataset.paths)
    ok = [i for i, (k, _) in enumerate(hashed) if k is not None]
    paths, keys = [dataset.paths[i] for i in ok], [hashed[i][0] for i in ok]
    labels = dataset.labels[ok]
    given = dataset.splits[ok] if dataset.splits is not None else None
    made = make_split(keys, labels, given, val_fraction, test_fraction, seed, store=cache_dir,
                      class_names=dataset.class_names, paths=paths)
    split, sid = made.assignment, made.id
    for line in made.warnings():
        echo(f"featx: warning: {line}")
    good, images = [], []
    for i, p in enumerate(paths):
        try:
            images.append(_load([p], size)[0])
            good.append(i)
        except ImageError as exc:
            echo(f"skipped {exc}")
    images, labels, split = np.stack(images), labels[good], split[good]
    parts = {s: (images[split == s], labels[split == s]) for s in SPLITS}
    keras.utils.set_random_seed(seed)
    from featx.augment import STUDY
    from featx.finetune import batches

    core = build_baseline(arch, len(dataset.class_names), size)
    model = core  # the study's augmentation runs in the input pipeline, for training only
    model.compile(keras.optimizers.RMSprop(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    name = dataset.root.name
    out_dir = Path(out_dir or Path("featx-out") / f"{name}-{arch}")
    out_dir.mkdir(parents=True, exist_ok=True)
    has_val = len(parts["val"][1]) > 0
    callbacks = [history_logger(out_dir / "history.csv")]
    if has_val:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                       restore_best_weights=True))
    weights = None
    if class_weight == "balanced":
        w = compute_class_weight("balanced", classes=np.arange(len(dataset.class_names)), y=parts["train"][1])
        weights = {i: float(v) for i, v in enumerate(w)}
    fit_start = time.perf_counter()
    try:
        train = batches(*parts["train"], None, batch_size, True, seed, STUDY)
        val = batches(*parts["val"], None, batch_size, False, seed) if has_val else None
        history = model.fit(train, validation_data=val, epochs=epochs, class_weight=weights, callbacks=callbacks,
                            verbose=2 if echo is print else 0).history
    except KeyboardInterrupt:
        echo("interrupted: evaluating the model as it is")
        history = {}
    train_seconds = time.perf_counter() - fit_start
    core.save(out_dir / "model.keras")
    # how to feed the model, for featx predict (featx.finetune.predict_finetuned)
    (out_dir / "featx.json").write_text(json.dumps({"kind": "baseline", "arch": arch, "size": size,
                                                    "class_names": list(dataset.class_names), "split_id": sid},
                                                   indent=2))
    preds = {s: core.predict(parts[s][0], verbose=0).argmax(1) for s in SPLITS if len(parts[s][1])}
    acc = {s: float((preds[s] == parts[s][1]).mean()) if s in preds else None for s in SPLITS}
    eval_split = "test" if "test" in preds else "val"
    summaries = {s: accuracy_summary(parts[s][1], preds[s]) for s in preds}
    metrics = {"dataset": name, "arch": arch, "size": size, "split_id": sid,
               "n": {s: int(len(parts[s][1])) for s in SPLITS}, "accuracy": acc,
               "accuracy_text": {s: summaries[s]["text"] if s in summaries else "-" for s in SPLITS},
               "evaluated_on": eval_split,
               **({eval_split: {k: v for k, v in summaries[eval_split].items() if k != "text"}}
                  if eval_split in summaries else {}),
               "epochs_run": len(history.get("loss", [])), "train_seconds": train_seconds,
               "total_seconds": time.perf_counter() - start, "params": int(core.count_params())}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if history.get("loss"):
        plot_curves(history, out_dir / "curves.png", f"{name}: {arch} from scratch")
    append_run(runs_log_path(cache_dir), {
        "dataset": name, "route": "baseline", "backbone": arch, "taps": "", "head": arch, "split_id": sid,
        **{f"n_{s}": metrics["n"][s] for s in SPLITS}, **{f"{s}_acc": acc[s] for s in SPLITS},
        "extract_s": 0.0, "fit_s": metrics["total_seconds"], "output": str(out_dir / "model.keras"),
    })
    return {"metrics": metrics, "out_dir": out_dir, "model": core}
