"""``predict``: class probabilities for any images, from a ``model.featx`` bundle or a featx ``model.keras``."""

from __future__ import annotations

from featx.bundle import Bundle, load_bundle
from featx.prediction.bundles import predict_bundle, seen_in_training
from featx.prediction.inputs import check_top, folder_notes, prediction_dataset
from featx.prediction.models import predict_keras
from featx.prediction.table import prediction_table
from featx.vocabulary import TTA_MODES, check_choice


def read_tta(tta) -> str:
    """``tta`` as one of :data:`featx.vocabulary.TTA_MODES` (``True``/``False``/None: the former flag)."""
    tta = {True: "views", False: "none", None: "none"}.get(tta, tta)
    return check_choice(tta, TTA_MODES, "tta")


def predict(bundle, images, top: int | None = None, out=None, cache_dir=None, trust: bool = False,
            weights=None, tta="none", **extract_options):
    """Class probabilities for ``images`` as a DataFrame, one row per image read; CSV at ``out``.

    Every extractor of the bundle runs (a fused bundle reads several backbones).

    Parameters
    ----------
    bundle : str, Path or Bundle
        A ``model.featx`` from ``fit_head``, or a ``model.keras`` from ``finetune`` or ``train_baseline``.
    images : list of str or Path, or Dataset
        Image files and folders; every image under a folder is predicted, whatever its layout.  One folder
        in which every image lies in a class folder (a labelled dataset) adds the ``true_label`` column when
        its class names are all classes of the model; otherwise the folder names are noted, not used.
    top : int, optional
        Also give the 2nd..``top``-th classes and their probabilities (``1 <= top <= n_classes``).
    out : str or Path, optional
        Write the table there as CSV (probabilities with :data:`featx.prediction.table.PROBABILITY_FORMAT`).
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
        ``attrs["failures"]`` lists ``(path, reason)`` for images that could not be read;
        ``attrs["seen_in_training"]`` counts images the bundle was fitted or validated on;
        ``attrs["notes"]`` holds lines for stderr.

    Raises
    ------
    FeatxError
        A bundle that cannot be loaded, ``top`` or ``tta`` out of range, missing weights.
    """
    tta = read_tta(tta)
    if not isinstance(bundle, Bundle) and str(bundle).endswith(".keras"):
        return predict_keras(bundle, images, top=top, out=out, trust=trust)
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, trust=trust)
    check_top(top, len(bundle.class_names))
    dataset = prediction_dataset(images)
    found = predict_bundle(bundle, dataset, tta, cache_dir, weights, **extract_options)
    table = prediction_table(found["paths"], found["proba"], found["classes"], top, out, true_labels=found["labels"])
    table.attrs["failures"] = found["failures"]
    table.attrs["seen_in_training"] = seen_in_training(bundle, found["keys"], cache_dir)
    table.attrs["notes"] = folder_notes(dataset) + found["notes"]
    return table
