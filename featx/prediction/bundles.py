"""Predictions of a ``model.featx`` bundle: its extractors rebuilt from the bundle alone, then its head.

A bundle names every extractor it reads (backbone, weights id, taps, pooling, dtype); the codes come from
the cache (extracted when missing), so predicting a folder twice runs the backbone once. ``serve`` uses
:func:`extractor_weights` and :func:`bundle_proba` too, so a served model answers as ``predict`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featx.names import shown
from featx.backbones.registry import get_backbone
from featx.bundle import Bundle
from featx.cache import default_cache_dir
from featx.datasets import load_split
from featx.errors import FeatxError
from featx.extract import load_features
from featx.prediction.inputs import true_labels


def extractor_weights(bundle: Bundle, weights=None, extractor: dict | None = None):
    """The weights to rebuild a bundle's extractor with (default its first), checked against the bundle.

    Raises
    ------
    FeatxError
        The weights file the bundle names is missing, or the given weights have another id than the
        bundle's (the codes would not match).
    """
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
    """Class probabilities ``(n, n_classes)`` from per-extractor codes, shared by ``predict`` and ``serve``.

    ``codes``: one ``{"clean": {tap: (n, d)}, "flip": {tap: (n, d)} or None}`` per extractor.
    ``tta="flip"`` on a head not trained with it averages the head over the image and its mirror
    (a head trained with flip TTA always does).
    """
    proba = bundle.predict_proba(bundle.design(codes))
    if tta == "flip" and not bundle.needs_flip():
        proba = (proba + bundle.predict_proba(bundle.design(codes, swap_views=True))) / 2
    return proba


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


def bundle_features(bundle: Bundle, dataset, tta: str, cache_dir, weights, extract_options: dict) -> list:
    """The :class:`featx.extract.Features` of ``dataset`` for every extractor of the bundle (no split)."""
    views = (bundle.metrics.get("views") or 4) if tta == "views" else 0
    flip = tta == "flip" or bundle.needs_flip()
    return [load_features(dataset, ext["backbone"], ext["taps"], ext["pooling"], cache_dir, ext["dtype"],
                          extractor_weights(bundle, weights if i == 0 else None, ext), views=views, flip=flip,
                          split=False, **precision_of(ext), **extract_options)
            for i, ext in enumerate(bundle.all_extractors())]


def precision_of(ext: dict) -> dict:
    """The extractor's precision and int8 calibration as :func:`featx.extract.load_features` takes them
    (a bundle made before int8 existed is float32): a bundle fitted on int8 codes predicts with the very
    same int8 model."""
    return {"precision": ext.get("precision", "float32"), "calibration": ext.get("calibration")}


def aligned_codes(feats: list) -> tuple[list, list]:
    """The paths every extractor could read (in the first's order) and each extractor's codes on them."""
    index = [{str(p): j for j, p in enumerate(f.paths)} for f in feats]
    paths = [p for p in feats[0].paths if all(str(p) in ix for ix in index[1:])]
    codes = []
    for f, ix in zip(feats, index):
        r = np.asarray([ix[str(p)] for p in paths], dtype=int)
        codes.append({"clean": {t: c[r] for t, c in f.codes.items()},
                      "flip": {t: c[r] for t, c in f.flipped.items()} if f.flipped else None})
    return paths, codes


def views_proba(bundle: Bundle, proba: np.ndarray, first, rows, views: int) -> np.ndarray:
    """``proba`` averaged with the head's probabilities on each image's ``views`` cached augmented views."""
    V = first.views_matrix(bundle.all_extractors()[0]["taps"])[rows]
    per_view = bundle.predict_proba(V.reshape(-1, V.shape[-1])).reshape(len(proba), views, -1)
    return (proba + per_view.sum(axis=1)) / (views + 1)


def prediction_notes(bundle: Bundle, first, classes, views: int) -> list[str]:
    """One line each, for the CLI to print on stderr: folder names that are not classes, views made now."""
    notes = []
    unknown = sorted(set(first.class_names) - {str(c) for c in classes}) if first.labels is not None else []
    if unknown:
        notes.append(f"the folder names {', '.join(map(shown, unknown[:5]))}{' ...' if len(unknown) > 5 else ''} are "
                     f"not classes of the model ({', '.join(map(shown, classes[:8]))}{' ...' if len(classes) > 8 else ''}), "
                     "so they are not read as labels and no accuracy is computed")
    if views and not bundle.metrics.get("views"):
        notes.append(f"--tta views: the head was not trained on augmented views; averaging over {views} views "
                     "computed with the study's augmentation (cached for next time)")
    return notes


def predict_bundle(bundle: Bundle, dataset, tta: str, cache_dir=None, weights=None, **extract_options):
    """Probabilities of every image of ``dataset`` readable by every extractor of ``bundle``.

    Returns
    -------
    dict
        ``paths`` (list, length n), ``proba`` ((n, n_classes) float), ``classes`` (ndarray of str),
        ``labels`` ((n,) str or None), ``failures`` ([(path, reason)]), ``keys`` (content keys, length n),
        ``notes`` (lines for stderr).
    """
    if tta == "views" and len(bundle.all_extractors()) > 1:
        raise FeatxError("a bundle of several backbones averages the flip view only; use tta='flip'", param="tta")
    feats = bundle_features(bundle, dataset, tta, cache_dir, weights, extract_options)
    views = (bundle.metrics.get("views") or 4) if tta == "views" else 0
    paths, codes = aligned_codes(feats)
    classes = np.asarray(bundle.head.classes_)
    first_index = {str(p): j for j, p in enumerate(feats[0].paths)}
    rows = np.asarray([first_index[str(p)] for p in paths], dtype=int)
    if not paths:
        proba = np.zeros((0, len(classes)))
    else:
        proba = bundle_proba(bundle, codes, tta)
        if views:
            proba = views_proba(bundle, proba, feats[0], rows, views)
    labels = true_labels(feats[0], classes)
    return {"paths": paths, "proba": proba, "classes": classes,
            "labels": None if labels is None else np.asarray(labels)[rows],
            "failures": list(dict.fromkeys((str(p), r) for f in feats for p, r in f.failures)),
            "keys": [feats[0].keys[i] for i in rows], "notes": prediction_notes(bundle, feats[0], classes, views)}
