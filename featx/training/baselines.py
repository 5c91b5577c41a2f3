"""The study's from-scratch baselines: a one-layer and a six-layer CNN (:func:`featx.training.networks.build_baseline`).

They show what transfer learning buys on small data.  Same split as the cached route (stored by content),
same augmentation, same outputs and runs log; images are squashed to a small square (``size``, default 96)
since these networks learn everything from the few images given.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx import _tf
from featx.augment import STUDY
from featx.cache import default_cache_dir
from featx.datasets import SplitSpec, check_classes, discover, make_split
from featx.errors import FeatxError
from featx.extract import hash_files
from featx.images import ImageError, center_crop_resize, load_image
from featx.modelmeta import ModelDescription
from featx.outputs import RunOutputs, RunResult
from featx.runs import history_logger
from featx.stats import accuracy_summary
from featx.training.networks import batches, build_baseline
from featx.vocabulary import BASELINE_ARCHS, SPLITS, check_choice, one_value


@dataclass(frozen=True)
class BaselineOptions:
    """How a baseline trains: input side, epochs, batch, RMSprop's rate, early-stopping patience, weights."""

    size: int = 96
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-4
    patience: int = 5
    class_weight: object = "balanced"
    split: SplitSpec = field(default_factory=SplitSpec)


def load_squares(paths, size: int) -> np.ndarray:
    """The centre square of each image resized to ``size``: (n, size, size, 3) uint8 (ImageError on a bad file)."""
    def one(p):
        return center_crop_resize(load_image(p, min_side=size), size, 1.0)

    with ThreadPoolExecutor(2) as pool:
        return np.stack(list(pool.map(one, paths)))


@dataclass
class BaselineData:
    """The decoded images of a labelled dataset with the stored split (the cached route's, by content)."""

    name: str
    class_names: list
    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    split_id: str

    def parts(self) -> dict:
        return {s: (self.images[self.split == s], self.labels[self.split == s]) for s in SPLITS}


def baseline_data(data, options: BaselineOptions, cache_dir: Path, echo) -> BaselineData:
    """Hash, split (stored, as fit-head does) and decode the dataset; an undecodable image is skipped and named."""
    dataset = discover(data)
    if not dataset.labelled or len(dataset.class_names) < 2:
        raise FeatxError(f"{dataset.root}: a baseline needs at least 2 class folders")
    for line in check_classes(dataset):
        echo(f"featx: warning: {line}")
    hashed = hash_files(dataset.paths)
    ok = [i for i, (k, _) in enumerate(hashed) if k is not None]
    paths, keys = [dataset.paths[i] for i in ok], [hashed[i][0] for i in ok]
    labels = dataset.labels[ok]
    given = dataset.splits[ok] if dataset.splits is not None else None
    s = options.split
    made = make_split(keys, labels, given, s.val_fraction, s.test_fraction, s.seed, store=cache_dir,
                      class_names=dataset.class_names, paths=paths)
    for line in made.warnings():
        echo(f"featx: warning: {line}")
    good, images = [], []
    for i, p in enumerate(paths):
        try:
            images.append(load_squares([p], options.size)[0])
            good.append(i)
        except ImageError as exc:
            echo(f"skipped {exc}")
    return BaselineData(dataset.root.name, list(dataset.class_names), np.stack(images), labels[good],
                        made.assignment[good], made.id)


def train_network(model, parts: dict, n_classes: int, options: BaselineOptions, folder: Path, echo) -> dict:
    """RMSprop on the study's augmented batches, early stopping on validation; Ctrl-C evaluates as it is."""
    keras = _tf.keras()
    model.compile(keras.optimizers.RMSprop(options.learning_rate), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    has_val = len(parts["val"][1]) > 0
    callbacks = [history_logger(folder / "history.csv")]
    if has_val:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=options.patience,
                                                       restore_best_weights=True))
    weights = None
    if options.class_weight == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        w = compute_class_weight("balanced", classes=np.arange(n_classes), y=parts["train"][1])
        weights = {i: float(v) for i, v in enumerate(w)}
    seed = options.split.seed
    try:
        train = batches(*parts["train"], None, options.batch_size, True, seed, STUDY)
        val = batches(*parts["val"], None, options.batch_size, False, seed) if has_val else None
        return model.fit(train, validation_data=val, epochs=options.epochs, class_weight=weights,
                         callbacks=callbacks, verbose=2 if echo is print else 0).history
    except KeyboardInterrupt:
        echo("interrupted: evaluating the model as it is")
        return {}


def baseline_metrics(arch: str, data: BaselineData, model, parts: dict, options: BaselineOptions, history: dict,
                     train_seconds: float, total_seconds: float) -> dict:
    """``metrics.json`` of a baseline (:data:`featx.outputs.METRICS_SCHEMA` plus the route's own keys)."""
    preds = {s: model.predict(parts[s][0], verbose=0).argmax(1) for s in SPLITS if len(parts[s][1])}
    acc = {s: float((preds[s] == parts[s][1]).mean()) if s in preds else None for s in SPLITS}
    eval_split = "test" if "test" in preds else "val"
    summaries = {s: accuracy_summary(parts[s][1], preds[s], kind=s, classes=range(len(data.class_names))) for s in preds}
    for summary in summaries.values():
        summary["classes_missing"] = [data.class_names[i] for i in summary["classes_missing"]]
    return {"dataset": data.name, "route": "baseline", "backbone": arch, "taps": [], "arch": arch,
            "size": options.size, "split_id": data.split_id,
            "n": {s: int(len(parts[s][1])) for s in SPLITS}, "accuracy": acc,
            "accuracy_text": {s: summaries[s]["text"] if s in summaries else "-" for s in SPLITS},
            "evaluated_on": eval_split,
            "classes_not_evaluated": summaries[eval_split]["classes_missing"] if eval_split in summaries
            else list(data.class_names),
            **({eval_split: {k: v for k, v in summaries[eval_split].items() if k != "text"}}
               if eval_split in summaries else {}),
            **({"validation": summaries["val"]} if "val" in summaries and eval_split == "test" else {}),
            "epochs_run": len(history.get("loss", [])), "train_seconds": train_seconds,
            "total_seconds": total_seconds, "params": int(model.count_params())}


def train_baseline(data, arch: str = "cnn1", *, cache_dir=None, out_dir=None, echo=print,
                   options: BaselineOptions | None = None, **keywords) -> RunResult:
    """Train the study's ``arch`` CNN from scratch on ``data``, on the cached route's split.

    Parameters
    ----------
    data : str or Path
        A labelled dataset folder.
    arch : {"cnn1", "cnn6"}
    cache_dir, out_dir : path, optional
        The cache (its split store and runs log) and the output folder (default ``featx-out/<dataset>-<arch>``).
    options : BaselineOptions, optional
        Or its fields as keywords: ``size``, ``epochs``, ``batch_size``, ``learning_rate``, ``patience``,
        ``class_weight``, and the split's ``val_fraction``, ``test_fraction``, ``seed``.

    Returns
    -------
    RunResult
        ``model`` (path of model.keras, with featx.json beside it), ``metrics``, ``out_dir``.

    Raises
    ------
    FeatxError
        An unknown arch, or fewer than 2 class folders.
    """
    if options is None:
        split = SplitSpec.resolve(keywords.pop("split", None), keywords)
        options = BaselineOptions(**keywords, split=split)
    else:
        options = one_value(options, BaselineOptions, keywords)
    check_choice(arch, BASELINE_ARCHS, "arch")
    cache_dir = Path(cache_dir or default_cache_dir())
    start = time.perf_counter()
    loaded = baseline_data(data, options, cache_dir, echo)
    parts = loaded.parts()
    _tf.keras().utils.set_random_seed(options.split.seed)
    model = build_baseline(arch, len(loaded.class_names), options.size)
    outputs = RunOutputs(loaded.name, "baseline", arch, out_dir, cache_dir)
    folder = outputs.prepare()
    fit_start = time.perf_counter()
    history = train_network(model, parts, len(loaded.class_names), options, folder, echo)
    train_seconds = time.perf_counter() - fit_start
    model.save(folder / "model.keras")
    # how to feed the model, for featx predict (featx.prediction.models)
    outputs.write_description(ModelDescription("baseline", tuple(loaded.class_names), loaded.split_id, arch=arch,
                                               size=options.size))
    metrics = baseline_metrics(arch, loaded, model, parts, options, history, train_seconds,
                               time.perf_counter() - start)
    outputs.write_metrics(metrics)
    outputs.plot_curves(history, f"{loaded.name}: {arch} from scratch")
    outputs.log_run(metrics, head=arch, output=folder / "model.keras", extract_s=0.0, fit_s=metrics["total_seconds"])
    return RunResult(folder / "model.keras", metrics, folder)
