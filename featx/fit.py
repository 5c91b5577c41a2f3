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
from featx.datasets import Dataset, Split, discover, from_paths, load_split
from featx.errors import FeatxError
from featx.extract import Features, load_features
from featx.heads import fit_with_copies
from featx.selection import BlockHead, make_head, select_head
from featx.stats import format_accuracy, small_test_warning, wilson_interval
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
                   flip=False, **extract_options) -> LabelledCodes:
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
                          val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, flip=flip,
                          **extract_options)
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
    selection: object = None  # featx.selection.SelectionResult for --head auto


def _accuracy(model, X, y):
    return float((model.predict(X) == y).mean()) if len(y) else None


TTA_MODES = ("none", "flip", "views")
FUSE_MODES = ("concat", "mean")


def backbone_list(backbone) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (order kept, repeats dropped)."""
    names = backbone.split(",") if isinstance(backbone, str) else list(backbone)
    names = list(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    if not names:
        raise FeatxError("give at least one backbone name", param="backbone")
    for n in names:
        get_backbone(n)
    return names


def _common_rows(codes_list):
    """Row indices into each backbone's codes for the images every backbone could read, in the first's order."""
    if len(codes_list) == 1:
        return [np.arange(len(codes_list[0].y))]
    index = [{k: i for i, k in enumerate(c.features.keys)} for c in codes_list]
    keys = [k for k in codes_list[0].features.keys if all(k in ix for ix in index[1:])]
    return [np.asarray([ix[k] for k in keys], dtype=int) for ix in index]


def accuracy_summary(y_true, y_pred) -> dict:
    """Accuracy with its 95% Wilson interval, test-set size and the small-test warning, as saved in metrics."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = int(len(y_true))
    correct = int((y_true == y_pred).sum())
    low, high = wilson_interval(correct, n)
    per_class_min = int(np.unique(y_true, return_counts=True)[1].min()) if n else 0
    return {"accuracy": correct / n if n else None, "correct": correct, "n": n, "interval95": [low, high],
            "smallest_class": per_class_min, "text": format_accuracy(correct, n),
            "warning": small_test_warning(n, per_class_min)}


def fit_head(data, backbone=DEFAULT_BACKBONE, taps=("pre_logits",), head="logistic", pooling="avg",
             dtype="float32", weights="imagenet", cache_dir=None, out_dir=None, class_weight=None, l2=None,
             standardize=None, pca=None, val_fraction=0.2, test_fraction=0.2, seed=0, head_params=None,
             views=0, refit: bool = True, fuse: str = "concat", tta: str = "none", budget=None,
             recipe: str = "default", **extract_options) -> FitResult:
    """Train ``head`` on the cached codes of ``data``, evaluate it once on test, and write its outputs.

    Parameters
    ----------
    backbone : str or list of str
        One backbone, or several (``"a,b"``): their codes are concatenated (``fuse="concat"``) or one head
        per backbone is trained and their probabilities averaged (``fuse="mean"``).
    head : str
        ``logistic``, ``linear_svm``, ``rbf_svm``, ``knn``, ``dense`` or ``auto`` (cross-validated selection
        within ``budget`` seconds, :func:`featx.selection.select_head`).
    refit : bool
        Default True: once validation has chosen (C, a dense head's epochs; for auto the cross-validation
        over train+val chooses), the final model is trained on train+val, as ``GridSearchCV(refit=True)``.
        False: the final model is the one trained on train alone.
    tta : {"none", "flip", "views"}
        ``flip``: train on each image and its mirror and average both at prediction (one cached view);
        ``views``: train on ``views`` (default 4) cached augmented views too and average them at prediction.
    recipe : {"default", "study"}
        The dense head's settings: featx's measured defaults, or the study's exactly (raw codes, 20 epochs).
    views : int
        Also train on that many cached augmented views of each training image (single heads only:
        ``head="auto"`` selects and refits on the clean images, and the flipped ones with ``tta="flip"``).

    Returns
    -------
    FitResult
        Bundle path, metrics (also in ``metrics.json``: row counts of the final fit, test accuracy with
        its 95% Wilson interval and size), output folder, printable report.

    Raises
    ------
    FeatxError
        Unknown head, backbone, tap, fuse or tta value; a dataset with fewer than 2 classes.
    """
    from sklearn.metrics import classification_report

    cache_dir = Path(cache_dir or default_cache_dir())
    if tta not in TTA_MODES:
        raise FeatxError(f"expected one of {', '.join(TTA_MODES)}, got {tta!r}", param="tta")
    if fuse not in FUSE_MODES:
        raise FeatxError(f"expected one of {', '.join(FUSE_MODES)}, got {fuse!r}", param="fuse")
    if tta == "views":
        views = views or 4
    backbones = backbone_list(backbone)
    if views:
        # augmented views are copies of one backbone's codes for one head: no other route trains on them
        other = ("--head auto (its search runs on the images)" if head == "auto" else
                 "--tta flip" if tta == "flip" else
                 "several backbones" if len(backbones) > 1 else None)
        if other:
            raise FeatxError(f"augmented views train one backbone's named head; they do not combine with {other}: "
                             f"drop --views / --tta views, or use one backbone and a named head", param="views")
    params = dict(head_params or {})
    if recipe != "default":
        params["recipe"] = recipe
    model = make_head(head, class_weight=class_weight, l2=l2, standardize=standardize, pca=pca,
                      random_state=seed, **params)
    model.check_params()  # validate the head's options before any extraction
    taps = [taps] if isinstance(taps, str) else list(taps)
    flip = tta == "flip"
    codes_list = [labelled_codes(data, b, taps, pooling, dtype, weights, cache_dir, val_fraction, test_fraction,
                                 seed, views=views, flip=flip, **extract_options) for b in backbones]
    codes = codes_list[0]
    rows = _common_rows(codes_list)
    y_all, split = codes.y[rows[0]], codes.split[rows[0]]
    names, clean, flipped = [], {}, {}
    for b, c, r in zip(backbones, codes_list, rows):
        for t in taps:
            name = t if len(backbones) == 1 else f"{b}/{t}"
            names.append(name)
            clean[name] = c.features.codes[t][r]
            if flip:
                flipped[name] = c.features.flipped[t][r]
    if fuse == "mean" and len(names) == 1:
        print("featx: warning: --fuse mean averages one head per backbone (or tap); with one backbone and one tap "
              "there is one head, so it changes nothing", file=sys.stderr)
    layout = [{"extractor": i, "tap": t, "view": "clean"} for i in range(len(backbones)) for t in taps]
    if flip:
        layout += [{"extractor": i, "tap": t, "view": "flip"} for i in range(len(backbones)) for t in taps]
    X_all = np.concatenate([clean[n] for n in names] + [flipped[n] for n in names if flip], axis=1)
    masks = {s: split == s for s in SPLITS}
    parts = {s: (X_all[masks[s]], y_all[masks[s]]) for s in SPLITS}
    n = {s: int(masks[s].sum()) for s in SPLITS}

    def with_views(names_of_splits):
        """Design rows of these splits and their augmented views as copies (views > 0, one backbone only):
        ``(X, y, X_copies, y_copies)``."""
        mask = np.isin(split, names_of_splits)
        X, y = X_all[mask], y_all[mask]
        if views:  # one backbone, no flip: checked before any work
            V = codes.features.X_views(taps)[rows[0]][mask]
            return X, y, V.reshape(-1, V.shape[-1]), np.repeat(y, V.shape[1])
        return X, y, X[:0], y[:0]

    def fit_rows(est, names_of_splits, validation_data=None):
        """Fit ``est`` on these splits' rows; views are copies, so a C chosen by CV is chosen on the images."""
        X, y, Xc, yc = with_views(names_of_splits)
        if isinstance(est, BlockHead):
            return est.fit(X, y, validation_data=validation_data, copies=(Xc, yc) if len(yc) else None)
        return fit_with_copies(est, X, y, Xc, yc, validation_data=validation_data)

    fit_splits = ["train", "val"] if refit and n["val"] else ["train"]
    selection = None
    val_acc = None
    start = time.perf_counter()
    if head == "auto":
        fmask = np.isin(split, fit_splits)
        sel_blocks = {k: v[fmask] for k, v in clean.items()}
        sel_flip = {k: v[fmask] for k, v in flipped.items()} if flip else None
        selection = select_head(sel_blocks, y_all[fmask], flip=sel_flip, budget=budget, fuse=fuse,
                                class_weight=class_weight, random_state=seed)
        final = selection.estimator
        chosen = {"candidate": selection.best.name}
        if "val" not in fit_splits and n["val"]:
            val_acc = _accuracy(final, *parts["val"])
        else:  # validation rows were in the CV folds: the chosen candidate's CV accuracy is the estimate
            t = selection.table
            val_acc = float(t.loc[t["candidate"] == selection.best.name, "cv_mean"].iloc[0])
    else:
        one_block = len(names) == 1 and not flip
        if one_block:
            estimator = model
        else:
            widths = [clean[nm].shape[1] for nm in names]
            off = np.concatenate([[0], np.cumsum(widths)]).astype(int)
            total = int(off[-1])
            rng = [(int(off[i]), int(off[i + 1])) for i in range(len(names))]
            groups = [[r] for r in rng] if fuse == "mean" else [rng]
            fgroups = [[(a + total, b + total) for a, b in g] for g in groups] if flip else None
            estimator = BlockHead(model, groups, fgroups)
        Xv, yv = parts["val"]
        try:
            estimator = fit_rows(estimator, ["train"], (Xv, yv) if len(yv) else None)
        except ValueError as exc:  # scikit-learn's word on data this head cannot fit (too few images, ...)
            raise FeatxError(f"{head} head on {n['train']} training images: {exc}", param="head") from None
        val_acc = _accuracy(estimator, Xv, yv)
        chosen = getattr(estimator, "chosen_", {})
        final = estimator
        if "val" in fit_splits:
            final = fit_rows(estimator.frozen(), fit_splits)
    fit_seconds = time.perf_counter() - start

    eval_split = "test" if n["test"] else "val"
    Xe, ye = parts[eval_split]
    pred = final.predict(Xe) if len(ye) else np.array([])
    if tta == "views" and len(ye):
        V = codes.features.X_views(taps)[rows[0]][masks[eval_split]]
        per_view = final.predict_proba(V.reshape(-1, V.shape[-1])).reshape(len(ye), V.shape[1], -1)
        proba = (final.predict_proba(Xe) + per_view.sum(axis=1)) / (V.shape[1] + 1)
        pred = np.asarray(final.classes_)[proba.argmax(axis=1)]
    class_names = codes.features.class_names
    report = classification_report(ye, pred, labels=class_names, zero_division=0,
                                   output_dict=True) if len(ye) else {}
    summary = accuracy_summary(ye, pred)
    dataset_name = codes.name
    accuracy = {"train": _accuracy(final, *parts["train"]),
                "val": val_acc,
                "test": summary["accuracy"] if eval_split == "test" else None}
    if eval_split == "val":
        accuracy["val"] = summary["accuracy"]
    label = head + (f"+views{views}" if views else "") + ("+flip" if flip else "") + \
        (f"+{fuse}" if len(backbones) > 1 and fuse != "concat" else "") + \
        ("" if recipe == "default" or head != "dense" else f"-{recipe}")
    metrics = {
        "dataset": dataset_name,
        "backbone": "+".join(backbones), "backbones": backbones, "taps": taps, "head": head, "pooling": pooling,
        "views": views, "tta": tta, "fuse": fuse, "recipe": recipe,
        # what the final model does at test time: auto may choose a candidate without the flip it was offered
        "tta_used": selection.best.tta if selection is not None and flip else tta,
        "split_id": codes.split_id,
        "n": n,
        "refit": "val" in fit_splits,
        "n_fit": {s: (n[s] if s in fit_splits else 0) for s in SPLITS},
        "chosen": chosen,
        "accuracy": accuracy,
        "val_note": ("validation accuracy of the model trained on train alone, before the refit on train+val"
                     if "val" in fit_splits and head != "auto" else
                     "the chosen candidate's 3-fold cross-validated accuracy on train+val (what selected it)"
                     if "val" in fit_splits else None),
        "evaluated_on": eval_split,
        eval_split: {k: v for k, v in summary.items() if k != "text"},
        "per_class": {c: {"precision": report[c]["precision"], "recall": report[c]["recall"],
                          "support": int(report[c]["support"])} for c in class_names} if report else {},
        "fit_seconds": fit_seconds,
        "extract_seconds": sum(c.extract_seconds for c in codes_list),
        "skipped_images": [[str(p), r] for c in codes_list for p, r in c.features.failures],
        "leakage": codes.split_report.leakage,
        "label_conflicts": codes.split_report.label_conflicts,
    }
    if selection is not None:
        best = selection.table[selection.table["candidate"] == selection.best.name].iloc[0]
        metrics["cv"] = {"mean": float(best["cv_mean"]), "sd": float(best["cv_sd"]),
                         "rows": int(np.isin(split, fit_splits).sum()), "budget_s": selection.budget,
                         "seconds": selection.seconds, "logme": selection.logme,
                         "flip_scored": int(((selection.table["tta"] == "flip")
                                             & (selection.table["status"] == "done")).sum())}
    out_dir = Path(out_dir or Path("featx-out") / f"{dataset_name}-{'+'.join(backbones)}-{'+'.join(taps)}-{label}")
    out_dir.mkdir(parents=True, exist_ok=True)
    extractors = [{"backbone": b, "weights": None if weights is None else str(weights),
                   "weights_id": c.features.config["weights"], "taps": taps, "pooling": pooling, "dtype": dtype}
                  for b, c in zip(backbones, codes_list)]
    bundle_path = save_bundle(Bundle(final, extractors[0], list(class_names), codes.split_id, metrics,
                                     extractors=extractors, layout=layout), out_dir / "model.featx")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    if selection is not None:
        selection.table.to_csv(out_dir / "selection.csv", index=False, float_format="%.4f")
    if len(ye):
        plot_confusion(ye, pred, class_names, out_dir / "confusion.png",
                       f"{dataset_name}: {'+'.join(backbones)}/{'+'.join(taps)}/{head} ({eval_split})")
    append_run(runs_log_path(cache_dir), {
        "dataset": dataset_name, "route": "cached", "backbone": "+".join(backbones), "taps": "+".join(taps),
        "head": label, "split_id": codes.split_id, **{f"n_{s}": n[s] for s in SPLITS},
        **{f"{s}_acc": accuracy[s] for s in SPLITS},
        "extract_s": metrics["extract_seconds"], "fit_s": fit_seconds, "output": str(bundle_path),
    })
    text = _report_text(metrics, summary)
    if selection is not None:
        text = f"selection ({selection.seconds:.0f}s, {metrics['cv']['rows']} images, " \
               f"{len(selection.table)} candidates; saved to selection.csv):\n{selection.text()}\n" + text
    return FitResult(bundle_path, metrics, out_dir, text, selection)


def _flip_not_used(m: dict) -> str:
    """Why a search offered flip TTA chose a head without it: outscored, or never scored (budget)."""
    if (m.get("cv") or {}).get("flip_scored", 1):
        return " (flip TTA was a candidate; the chosen one does not use it)"
    return " (flip TTA candidates were skipped: the time budget was spent; see selection.csv)"


def _report_text(m: dict, summary: dict) -> str:
    acc = m["accuracy"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    fit_rows = m["n_fit"]["train"] + m["n_fit"]["val"]
    refit = (f"final model trained on train+val ({fit_rows} images)" if m["refit"]
             else f"final model trained on train only ({fit_rows} images; --no-refit)")
    if isinstance(m["chosen"], dict):
        chosen = ", ".join(f"{k} {v}" for k, v in m["chosen"].items())
    else:  # one head per block (--fuse mean, flip TTA): each block's choice
        chosen = " / ".join(", ".join(f"{k} {v}" for k, v in c.items()) or "-" for c in m["chosen"])
    lines = [
        f"{m['dataset']}: {m['backbone']}/{'+'.join(m['taps'])} -> {m['head']} head"
        f"{' on ' + str(m['views']) + ' augmented views too' if m.get('views') else ''}"
        f"{' (' + m['fuse'] + ' of one head per backbone)' if m.get('fuse') == 'mean' and len(m['backbones']) > 1 else ''}"
        f"{' with flip TTA' if m.get('tta_used', m.get('tta')) == 'flip' else ''}"
        f"{_flip_not_used(m) if m.get('tta_used') == 'none' and m.get('tta') == 'flip' else ''} "
        f"(split {m['split_id']}: {m['n']['train']} train, {m['n']['val']} val, {m['n']['test']} test)",
        f"{refit}{'; chosen: ' + chosen if chosen else ''}",
        f"{m['evaluated_on']} accuracy {summary['text']}  95% Wilson interval",
        f"train {fmt(acc['train'])}"
        + (f"  val {fmt(acc['val'])}" + (" (before refit)" if m["refit"] else "") if acc["val"] is not None
           and m["evaluated_on"] == "test" and not ("cv" in m and m["refit"]) else "")
        + (f"  cv {m['cv']['mean']:.3f} ± {m['cv']['sd']:.3f} (3-fold, {m['cv']['rows']} train+val images)"
           if "cv" in m else ""),
    ]
    if summary["warning"]:
        lines.append(summary["warning"])
    lines.append(f"fit {m['fit_seconds']:.2f}s (codes ready in {m['extract_seconds']:.1f}s)")
    if m["per_class"]:
        lines.append(f"  {'per class (' + m['evaluated_on'] + ')':<24} {'precision':>9} {'recall':>7} {'support':>8}")
        for c, r in m["per_class"].items():
            lines.append(f"  {c[:24]:<24} {r['precision']:9.3f} {r['recall']:7.3f} {r['support']:8d}")
    return "\n".join(lines)


# ---- prediction ---------------------------------------------------------------------------

def extractor_weights(bundle: Bundle, weights=None, extractor: dict | None = None):
    """The weights to rebuild a bundle's extractor with (default its first), checked against the bundle."""
    ext = extractor or bundle.extractor
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


def bundle_proba(bundle: Bundle, codes: list, tta: str = "none") -> np.ndarray:
    """Class probabilities from per-extractor codes, shared by ``predict`` and ``serve``.

    ``codes``: one ``{"clean": {tap: (n, d)}, "flip": {tap: (n, d)} or None}`` per extractor.
    ``tta="flip"`` on a head not trained with it averages the head over the image and its mirror
    (a head trained with flip TTA always does).
    """
    proba = bundle.predict_proba(bundle.design(codes))
    if tta == "flip" and not bundle.needs_flip():
        proba = (proba + bundle.predict_proba(bundle.design(codes, swap_views=True))) / 2
    return proba


def predict(bundle, images, top: int | None = None, out=None, cache_dir=None, trust: bool = False,
            weights=None, tta="none", **extract_options):
    """Class probabilities for ``images`` as a DataFrame, one row per image read; CSV at ``out``.

    Every extractor of the bundle runs (a fused bundle reads several backbones).

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
    tta : {"none", "flip", "views"}
        ``"flip"``: average over the image and its mirror (one more cached view); ``"views"``: over the
        image and its cached augmented views (as many as the head was trained with, else 4).
        ``True``/``False`` are read as ``"views"``/``"none"``.  A bundle trained with flip TTA always
        reads the mirrored view.

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
    if tta not in TTA_MODES:
        raise FeatxError(f"expected one of {', '.join(TTA_MODES)}, got {tta!r}", param="tta")
    if not isinstance(bundle, Bundle) and str(bundle).endswith(".keras"):
        from featx.finetune import predict_finetuned

        return predict_finetuned(bundle, images, top=top, out=out)
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, trust=trust)
    extractors = bundle.all_extractors()
    if top is not None and not 1 <= top <= len(bundle.class_names):
        raise FeatxError(f"expected 1..{len(bundle.class_names)}, got {top}", param="top")
    if tta == "views" and len(extractors) > 1:
        raise FeatxError("a bundle of several backbones averages the flip view only; use tta='flip'", param="tta")
    dataset = prediction_dataset(images)
    views = (bundle.metrics.get("views") or 4) if tta == "views" else 0
    flip = tta == "flip" or bundle.needs_flip()
    feats = [load_features(dataset, ext["backbone"], ext["taps"], ext["pooling"], cache_dir, ext["dtype"],
                           extractor_weights(bundle, weights if i == 0 else None, ext), views=views, flip=flip,
                           split=False, **extract_options) for i, ext in enumerate(extractors)]
    index = [{str(p): j for j, p in enumerate(f.paths)} for f in feats]
    paths = [p for p in feats[0].paths if all(str(p) in ix for ix in index[1:])]
    failures = list(dict.fromkeys((str(p), r) for f in feats for p, r in f.failures))
    classes = np.asarray(bundle.head.classes_)
    first = np.asarray([index[0][str(p)] for p in paths], dtype=int)
    labels = true_labels(feats[0], classes)
    if not paths:
        proba = np.zeros((0, len(classes)))
    else:
        codes = []
        for f, ix in zip(feats, index):
            r = np.asarray([ix[str(p)] for p in paths])
            codes.append({"clean": {t: c[r] for t, c in f.codes.items()},
                          "flip": {t: c[r] for t, c in f.flipped.items()} if f.flipped else None})
        proba = bundle_proba(bundle, codes, tta)
        if views:
            V = feats[0].X_views(extractors[0]["taps"])[first]
            per_view = bundle.predict_proba(V.reshape(-1, V.shape[-1])).reshape(len(proba), views, -1)
            proba = (proba + per_view.sum(axis=1)) / (views + 1)
    table = prediction_table(paths, proba, classes, top, out,
                             true_labels=None if labels is None else np.asarray(labels)[first])
    table.attrs["failures"] = failures
    table.attrs["seen_in_training"] = seen_in_training(bundle, [feats[0].keys[i] for i in first], cache_dir)
    notes = []  # one line each, for the CLI to print on stderr
    unknown = sorted(set(feats[0].class_names) - {str(c) for c in classes}) if feats[0].labels is not None else []
    if unknown:
        notes.append(f"the folder names {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} are not classes "
                     f"of the model ({', '.join(map(str, classes[:8]))}{' ...' if len(classes) > 8 else ''}), "
                     "so they are not read as labels and no accuracy is computed")
    if views and not bundle.metrics.get("views"):
        notes.append(f"--tta views: the head was not trained on augmented views; averaging over {views} views "
                     "computed with the study's augmentation (cached for next time)")
    table.attrs["notes"] = notes
    return table


def seen_in_training(bundle: Bundle, keys: list, cache_dir=None) -> int:
    """How many of these images (content keys) the bundle's head was fitted or validated on.

    Why: an accuracy ``predict`` prints on a labelled folder is a held-out estimate only when none
    of its images were in the bundle's train or val split; a copy under another name is the same
    content key.  Reads the stored split (``cache/splits/<split_id>.json``); 0 when the bundle names
    no split or the split is not stored in this cache folder (nothing to compare against).
    """
    sid = getattr(bundle, "split_id", None)
    if not sid:
        return 0
    try:
        assignments = load_split(cache_dir or default_cache_dir(), sid)["assignments"]
    except (FeatxError, OSError, ValueError, KeyError, TypeError):  # not stored here, or unreadable
        return 0
    # a unit is a content key, or "<split folder>/<key>" when the dataset came in split folders
    fitted = {unit.rsplit("/", 1)[-1] for unit, part in assignments.items() if part in ("train", "val")}
    return sum(1 for k in keys if k is not None and k in fitted)


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
