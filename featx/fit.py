"""Heads on cached codes, end to end: split, fit, evaluate, save, log, predict, sweep.

This is the cached route of the study: ``fit_head`` extracts whatever codes
are missing (usually nothing: the backbone ran once), splits the dataset the
same way every time, trains a head in seconds and writes a bundle, metrics,
a confusion matrix and a runs-log row.  ``predict`` rebuilds the extractor
from a bundle alone.  ``sweep`` fits a linear head on every tap.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone
from featx.bundle import Bundle, load_bundle, save_bundle
from featx.cache import default_cache_dir
from featx.datasets import Dataset, Split, discover, from_paths
from featx.errors import FeatxError
from featx.extract import Features, load_features
from featx.heads import make_head
from featx.runs import append_run, plot_confusion, plot_sweep, runs_log_path

SPLITS = ("train", "val", "test")


@dataclass
class LabelledCodes:
    """Codes of a labelled dataset with its stored split."""

    features: Features
    y: np.ndarray  # class names
    split: np.ndarray
    split_id: str
    extract_seconds: float
    name: str  # the dataset folder's name, for outputs and the runs log
    split_report: Split | None = None  # leakage and label conflicts found while splitting

    def part(self, name: str, taps=None, with_views: bool = False):
        """Codes and labels of one split; ``with_views`` adds every augmented view as a row."""
        mask = self.split == name
        X, y = self.features.X(taps)[mask], self.y[mask]
        if with_views and self.features.views:
            V = self.features.X_views(taps)[mask]  # (n, K, d)
            X = np.concatenate([X, V.reshape(-1, V.shape[-1])])
            y = np.concatenate([y, np.repeat(y, V.shape[1])])
        return X, y


def labelled_codes(data, backbone=DEFAULT_BACKBONE, taps=("pre_logits",), pooling="avg", dtype="float32",
                   weights="imagenet", cache_dir=None, val_fraction=0.2, test_fraction=0.2, seed=0, views=0,
                   **extract_options) -> LabelledCodes:
    cache_dir = Path(cache_dir or default_cache_dir())
    dataset = data if isinstance(data, Dataset) else discover(data)
    if not dataset.labelled:
        raise FeatxError(f"{dataset.root}: no class folders; training needs DATA/<class>/<images>")
    if len(dataset.class_names) < 2:
        empty = dataset.empty_folders
        raise FeatxError(
            f"{dataset.root}: found 1 class ({dataset.class_names[0]!r}); a classifier needs at least 2 class folders"
            + (f" (left out, holding no images: {', '.join(empty)})" if empty else "")
        )
    start = time.perf_counter()
    feats = load_features(dataset, backbone, taps, pooling, cache_dir, dtype, weights, views=views,
                          val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, **extract_options)
    seconds = time.perf_counter() - start
    if feats.split is None:
        first = f" (first: {feats.failures[0][0]}: {feats.failures[0][1]})" if feats.failures else ""
        raise FeatxError(f"{dataset.root}: none of its {len(dataset)} images could be decoded{first}")
    for line in feats.split_report.warnings():
        print(f"featx: warning: {line}", file=sys.stderr)
    y = np.asarray(feats.class_names, dtype=object)[feats.labels].astype(str)
    return LabelledCodes(feats, y, feats.split, feats.split_id, seconds, Path(dataset.root).resolve().name,
                         feats.split_report)


@dataclass
class FitResult:
    bundle: Path
    metrics: dict
    out_dir: Path
    report: str


def _accuracy(model, X, y):
    return float((model.predict(X) == y).mean()) if len(y) else None


def fit_head(data, backbone=DEFAULT_BACKBONE, taps=("pre_logits",), head="logistic", pooling="avg",
             dtype="float32", weights="imagenet", cache_dir=None, out_dir=None, class_weight=None, l2=None,
             standardize=None, pca=None, val_fraction=0.2, test_fraction=0.2, seed=0, head_params=None,
             views=0, **extract_options) -> FitResult:
    """Train ``head`` on the cached codes of ``data`` and write its outputs.

    ``views``: also train on that many cached augmented views of each training
    image (validation and test stay clean images).
    """
    from sklearn.metrics import classification_report

    cache_dir = Path(cache_dir or default_cache_dir())
    model = make_head(head, class_weight=class_weight, l2=l2, standardize=standardize, pca=pca,
                      random_state=seed, **(head_params or {}))
    model._pipeline(2, 2)  # validate the head's options before any extraction
    taps = [taps] if isinstance(taps, str) else list(taps)
    codes = labelled_codes(data, backbone, taps, pooling, dtype, weights, cache_dir, val_fraction, test_fraction,
                           seed, views=views, **extract_options)
    parts = {s: codes.part(s) for s in SPLITS}
    Xv, yv = parts["val"]
    yte = parts["test"][1]
    Xtr, ytr = codes.part("train", with_views=True)
    start = time.perf_counter()
    model.fit(Xtr, ytr, validation_data=(Xv, yv) if len(yv) else None)
    fit_seconds = time.perf_counter() - start

    eval_split = "test" if len(yte) else "val"
    Xe, ye = parts[eval_split]
    pred = model.predict(Xe) if len(ye) else np.array([])
    report = classification_report(ye, pred, labels=codes.features.class_names, zero_division=0,
                                   output_dict=True) if len(ye) else {}
    dataset_name = codes.name
    metrics = {
        "dataset": dataset_name,
        "backbone": backbone, "taps": taps, "head": head, "pooling": pooling, "views": views,
        "split_id": codes.split_id,
        "n": {s: int(len(parts[s][1])) for s in SPLITS},
        "accuracy": {s: _accuracy(model, *parts[s]) for s in SPLITS},
        "evaluated_on": eval_split,
        "per_class": {c: {"precision": report[c]["precision"], "recall": report[c]["recall"],
                          "support": int(report[c]["support"])} for c in codes.features.class_names} if report else {},
        "fit_seconds": fit_seconds,
        "extract_seconds": codes.extract_seconds,
        "skipped_images": [[str(p), r] for p, r in codes.features.failures],
        "leakage": codes.split_report.leakage,
        "label_conflicts": codes.split_report.label_conflicts,
    }
    label = head + (f"+views{views}" if views else "")
    out_dir = Path(out_dir or Path("featx-out") / f"{dataset_name}-{backbone}-{'+'.join(taps)}-{label}")
    out_dir.mkdir(parents=True, exist_ok=True)
    extractor = {"backbone": backbone, "weights": None if weights is None else str(weights),
                 "weights_id": codes.features.config["weights"], "taps": taps, "pooling": pooling, "dtype": dtype}
    bundle_path = save_bundle(Bundle(model, extractor, list(codes.features.class_names), codes.split_id, metrics),
                              out_dir / "model.featx")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if len(ye):
        plot_confusion(ye, pred, codes.features.class_names, out_dir / "confusion.png",
                       f"{dataset_name}: {backbone}/{'+'.join(taps)}/{head} ({eval_split})")
    append_run(runs_log_path(cache_dir), {
        "dataset": dataset_name, "route": "cached", "backbone": backbone, "taps": "+".join(taps), "head": label,
        "split_id": codes.split_id, **{f"n_{s}": metrics["n"][s] for s in SPLITS},
        **{f"{s}_acc": metrics["accuracy"][s] for s in SPLITS},
        "extract_s": codes.extract_seconds, "fit_s": fit_seconds, "output": str(bundle_path),
    })
    return FitResult(bundle_path, metrics, out_dir, _report_text(metrics))


def _report_text(m: dict) -> str:
    acc = m["accuracy"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"{m['dataset']}: {m['backbone']}/{'+'.join(m['taps'])} -> {m['head']} head"
        f"{' on ' + str(m['views']) + ' augmented views too' if m.get('views') else ''} "
        f"(split {m['split_id']}: {m['n']['train']} train, {m['n']['val']} val, {m['n']['test']} test)",
        f"accuracy: train {fmt(acc['train'])}  val {fmt(acc['val'])}  test {fmt(acc['test'])}",
        f"fit {m['fit_seconds']:.2f}s (codes ready in {m['extract_seconds']:.1f}s)",
    ]
    if m["per_class"]:
        lines.append(f"  {'per class (' + m['evaluated_on'] + ')':<24} {'precision':>9} {'recall':>7} {'support':>8}")
        for c, r in m["per_class"].items():
            lines.append(f"  {c[:24]:<24} {r['precision']:9.3f} {r['recall']:7.3f} {r['support']:8d}")
    return "\n".join(lines)


# ---- prediction ---------------------------------------------------------------------------

def extractor_weights(bundle: Bundle, weights=None):
    """The weights to rebuild a bundle's extractor with, checked against the bundle."""
    ext = bundle.extractor
    spec = get_backbone(ext["backbone"])
    chosen = weights if weights is not None else ext["weights"]
    if chosen not in (None, "imagenet") and not Path(chosen).is_file():
        raise FeatxError(f"the bundle's backbone {spec.name} needs the weights file {chosen}, which is missing; "
                         "pass --weights FILE")
    found = spec.weights_id(chosen)
    if found != ext["weights_id"]:
        raise FeatxError(
            f"the bundle was trained on {spec.name} weights {ext['weights_id']}, but {chosen or 'random init'} gives "
            f"{found}: the codes would not match; pass the original file with --weights"
        )
    return chosen


def predict(bundle, images, top: int | None = None, out=None, cache_dir=None, trust: bool = False,
            weights=None, tta="none", **extract_options):
    """Class probabilities for ``images`` as a DataFrame, one row per image read; CSV at ``out``.

    Parameters
    ----------
    bundle : str, Path or Bundle
        A ``model.featx`` from ``fit_head``, or a ``model.keras`` from ``finetune``.
    images : list of str or Path, or Dataset
        Image files and folders.  One folder of class folders (a labelled dataset) adds the
        ``true_label`` column when its class names are all classes of the model.
    top : int, optional
        Also give the 2nd..``top``-th classes and their probabilities (``1 <= top <= n_classes``).
    out : str or Path, optional
        Write the table there as CSV (probabilities with :data:`PROBABILITY_FORMAT`).
    tta : {"none", "views"}
        ``"views"``: average over the image and its cached augmented views (as many as the head was
        trained with, else 4).  ``True``/``False`` are read as ``"views"``/``"none"``.

    Returns
    -------
    pandas.DataFrame
        Columns ``file``, ``id`` (file name without suffix, the study's file id), ``predicted``,
        ``probability`` (float64 in [0, 1]), ``true_label`` (labelled folder only), ``top2``,
        ``top2_prob`` .. (when ``top`` is given), then one ``p_<class>`` per class.
        ``attrs["failures"]`` lists ``(path, reason)`` for images that could not be read.

    Raises
    ------
    FeatxError
        A bundle that cannot be loaded, ``top`` or ``tta`` out of range, missing weights.
    """
    tta = {True: "views", False: "none", None: "none"}.get(tta, tta)
    if tta not in ("none", "views"):
        raise FeatxError(f"expected 'none' or 'views', got {tta!r}", param="tta")
    if not isinstance(bundle, Bundle) and str(bundle).endswith(".keras"):
        from featx.finetune import predict_finetuned

        return predict_finetuned(bundle, images, top=top, out=out)
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, trust=trust)
    ext = bundle.extractor
    if top is not None and not 1 <= top <= len(bundle.class_names):
        raise FeatxError(f"expected 1..{len(bundle.class_names)}, got {top}", param="top")
    dataset = prediction_dataset(images)
    views = (bundle.metrics.get("views") or 4) if tta == "views" else 0
    feats = load_features(dataset, ext["backbone"], ext["taps"], ext["pooling"], cache_dir, ext["dtype"],
                          extractor_weights(bundle, weights), views=views, **extract_options)
    classes = np.asarray(bundle.head.classes_)
    proba = bundle.predict_proba(feats.X(ext["taps"])) if feats.paths else np.zeros((0, len(classes)))
    if views and feats.paths:
        V = feats.X_views(ext["taps"])
        per_view = bundle.predict_proba(V.reshape(-1, V.shape[-1])).reshape(len(proba), views, -1)
        proba = (proba + per_view.sum(axis=1)) / (views + 1)
    table = prediction_table(feats.paths, proba, classes, top, out, true_labels=true_labels(feats, classes))
    table.attrs["failures"] = feats.failures
    return table


#: One format for probabilities, in the CSV file and on the screen.
PROBABILITY_FORMAT = "%.6f"


def prediction_dataset(images) -> Dataset:
    """The images to predict: one folder is discovered (its class folders become labels); anything else
    is a list of files and folders, unlabelled.

    Parameters
    ----------
    images : str, Path, list of them, or Dataset

    Returns
    -------
    Dataset
        ``labels`` set only when ``images`` is one folder of class folders.
    """
    if isinstance(images, Dataset):
        return images
    if isinstance(images, (str, Path)):
        images = [images]
    images = list(images)
    if len(images) == 1 and Path(images[0]).is_dir():
        return discover(images[0])
    return from_paths(images)


def true_labels(features, classes):
    """Class name per row of ``features`` when its dataset is labelled with classes the model knows,
    else ``None`` (folder names that are not the model's classes are not labels)."""
    if features.labels is None or not set(features.class_names) <= {str(c) for c in classes}:
        return None
    return np.asarray(features.class_names, dtype=object)[features.labels].astype(str)


def prediction_table(paths, proba, classes, top=None, out=None, true_labels=None):
    """The study's predictions table, one row per image.

    Parameters
    ----------
    paths : list of str or Path, length n
    proba : ndarray, shape (n, n_classes), float
        Class probabilities, rows summing to 1, columns in the order of ``classes``.
    classes : sequence of str, length n_classes
    top : int, optional
        Add ``top2``/``top2_prob`` .. ``topK``/``topK_prob`` (``top1`` is ``predicted``).
    out : str or Path, optional
        Also write the table as CSV there (probabilities with :data:`PROBABILITY_FORMAT`).
    true_labels : sequence of str, length n, optional
        Adds the ``true_label`` column, right after ``probability``.

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    classes = np.asarray(classes)
    rows = np.arange(len(proba))
    order = np.argsort(-proba, axis=1)
    table = pd.DataFrame({
        "file": [str(p) for p in paths],
        "id": [Path(p).stem for p in paths],
        "predicted": classes[order[:, 0]] if len(proba) else [],
        "probability": proba[rows, order[:, 0]] if len(proba) else [],
    })
    if true_labels is not None:
        table["true_label"] = list(true_labels)
    for k in range(1, min(top or 0, len(classes))):
        table[f"top{k + 1}"] = classes[order[:, k]]
        table[f"top{k + 1}_prob"] = proba[rows, order[:, k]]
    for j, c in enumerate(classes):
        table[f"p_{c}"] = proba[:, j]
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False, float_format=PROBABILITY_FORMAT)
    return table


# ---- layer sweep --------------------------------------------------------------------------

def sweep(data, backbone=DEFAULT_BACKBONE, taps=None, head="logistic", pooling="avg", dtype="float32",
          weights="imagenet", cache_dir=None, out_dir=None, val_fraction=0.2, test_fraction=0.2, seed=0,
          **extract_options):
    """A linear head on every tap (one extraction pass), same split: accuracy by depth."""
    import pandas as pd

    spec = get_backbone(backbone)
    taps = list(taps or spec.tap_names)
    codes = labelled_codes(data, backbone, taps, pooling, dtype, weights, cache_dir, val_fraction, test_fraction,
                           seed, **extract_options)
    rows = []
    for tap in taps:
        model = make_head(head, random_state=seed)
        (Xtr, ytr), (Xv, yv), (Xte, yte) = (codes.part(s, [tap]) for s in SPLITS)
        start = time.perf_counter()
        model.fit(Xtr, ytr, validation_data=(Xv, yv) if len(yv) else None)
        rows.append({"tap": tap, "stride": spec.tap(tap).stride, "dim": Xtr.shape[1],
                     "val_acc": _accuracy(model, Xv, yv), "test_acc": _accuracy(model, Xte, yte),
                     "fit_s": time.perf_counter() - start})
    table = pd.DataFrame(rows)
    dataset_name = codes.name
    out_dir = Path(out_dir or Path("featx-out") / f"{dataset_name}-{backbone}-sweep")
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "sweep.csv", index=False, float_format="%.4f")
    plot_sweep(table, out_dir / "sweep.png", f"{dataset_name}: {head} head on each tap of {backbone}")
    table.attrs.update(out_dir=out_dir, split_id=codes.split_id, dataset=dataset_name)
    return table
