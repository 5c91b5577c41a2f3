"""Honest numbers: confidence intervals for accuracies measured on a finite test set.

A leaf module (imports nothing from featx) so that every route (fit-head, finetune, baseline, report,
predict) reports its accuracy the same way.
"""

from __future__ import annotations

import math

import numpy as np

# z for a two-sided 95% interval of the normal distribution.
Z95 = 1.959963984540054

#: Below these sizes a test accuracy is too noisy to rank models by; featx warns.
SMALL_TEST_IMAGES = 30
SMALL_TEST_PER_CLASS = 5


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson, JASA 1927; Agresti & Coull 1998).

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not degenerate at 0 or n correct,
    which matters for the small test sets transfer learning is used on.

    Parameters
    ----------
    correct : int
        Number of correctly classified test images, ``0 <= correct <= n``.
    n : int
        Number of test images, ``n >= 0``.
    z : float
        Normal quantile; the default gives a 95% interval.

    Returns
    -------
    (low, high) : tuple of float
        Bounds in [0, 1]. ``(0.0, 1.0)`` when ``n == 0`` (nothing was measured).

    Raises
    ------
    ValueError
        If ``n < 0`` or ``correct`` is outside ``[0, n]``.
    """
    if n < 0 or not 0 <= correct <= n:
        raise ValueError(f"wilson_interval expects 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At 0 or n correct the bound is exactly 0 or 1 (centre - half cancels); in floating point it came out
    # as 0.9999999999999999 for 10/10, below the accuracy itself, and a plot's error bar went negative.
    low = 0.0 if correct == 0 else min(p, max(0.0, centre - half))
    high = 1.0 if correct == n else max(p, min(1.0, centre + half))
    return low, high


def small_test_warning(n: int, per_class_min: int | None = None) -> str | None:
    """A one-line caveat when a test set is too small to trust, else ``None``.

    Parameters
    ----------
    n : int
        Test-set size in images.
    per_class_min : int, optional
        Size of the smallest class in the test set.
    """
    if n < SMALL_TEST_IMAGES or (per_class_min is not None and per_class_min < SMALL_TEST_PER_CLASS):
        smallest = f", smallest class {per_class_min}" if per_class_min is not None else ""
        return (f"warning: the test set is small ({n} images{smallest}); its accuracy has a wide interval "
                f"and should not rank models")
    return None


def format_accuracy(correct: int, n: int) -> str:
    """``'0.948 [0.900, 0.973] (n=153)'``: accuracy, 95% Wilson interval, test-set size."""
    if n == 0:
        return "- (n=0)"
    low, high = wilson_interval(correct, n)
    return f"{correct / n:.3f} [{low:.3f}, {high:.3f}] (n={n})"


#: What an accuracy was measured on, as every output names it (console, metrics.json, runs.csv, report, serve).
#: ``test``: the held-out test split, evaluated once; ``val``: the held-out validation split (model selection
#: saw it); ``cv``: cross-validated on train+val (the mean over folds, n = the images in the folds).
#: ``train``: the images the model was fitted on (no estimate of anything unseen).
KINDS = {"test": "test", "val": "held-out validation", "cv": "cross-validated", "train": "training"}


def accuracy_summary(y_true, y_pred, kind: str = "test", classes=None) -> dict:
    """Accuracy with its 95% Wilson interval, its size and the small-sample warning, as metrics save it.

    The one place every accuracy featx shows is computed (:func:`accuracy_from_counts` when only counts
    are known), so the console, ``metrics.json``, the runs log, the report and the server agree.

    Parameters
    ----------
    y_true, y_pred : array-like, shape (n,)
        True and predicted labels (any comparable type: class names or indices).
    kind : {"test", "val", "cv", "train"}
        What the figure is (:data:`KINDS`).
    classes : sequence, optional
        Every class of the model.  The smallest class then counts each of them, 0 for a class with no
        image here (which ``classes_missing`` names): without it a class absent from the test set was
        invisible and the smallest class looked fine.

    Returns
    -------
    dict
        ``accuracy`` (float in [0, 1], None when n is 0), ``correct`` and ``n`` (int), ``interval95``
        ([low, high]), ``smallest_class`` (images of the rarest true class), ``text`` (for the console),
        ``warning`` (str or None, :func:`small_test_warning`), ``kind`` and ``label`` (:data:`KINDS`),
        ``classes_missing`` (list: the classes of ``classes`` with no image here).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = int(len(y_true))
    correct = int((y_true == y_pred).sum())
    present, counts = np.unique(y_true, return_counts=True) if n else (np.array([]), np.array([], dtype=int))
    missing = [c for c in classes if c not in set(present.tolist())] if classes is not None else []
    per_class_min = 0 if missing else (int(counts.min()) if n else 0)
    summary = accuracy_from_counts(correct, n, kind, per_class_min)
    summary["classes_missing"] = [c.item() if hasattr(c, "item") else c for c in missing]
    return summary


def accuracy_from_counts(correct: int, n: int, kind: str = "test", smallest_class: int | None = None) -> dict:
    """:func:`accuracy_summary` from counts: ``correct`` of ``n`` images (a runs-log row, CV folds pooled).

    Raises
    ------
    ValueError
        An unknown ``kind``, or counts :func:`wilson_interval` refuses.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    low, high = wilson_interval(correct, n)
    return {"accuracy": correct / n if n else None, "correct": correct, "n": n, "interval95": [low, high],
            "smallest_class": smallest_class, "text": format_accuracy(correct, n),
            "warning": small_test_warning(n, smallest_class), "kind": kind, "label": KINDS[kind],
            "classes_missing": []}


def accuracy_of_rate(accuracy: float, n: int, kind: str) -> dict:
    """:func:`accuracy_from_counts` for a rate measured on ``n`` images (``correct`` = round(accuracy * n)):
    a cross-validated mean over folds that together hold each of the n images once, a runs-log cell."""
    return accuracy_from_counts(int(round(float(accuracy) * n)), int(n), kind)


def stated_accuracies(metrics: dict) -> dict:
    """A run's figures as sentences, from its ``metrics.json`` alone: ``{"test": "test accuracy 0.900 [...]
    (n=40)", "validation": "cross-validated accuracy ..."}`` (only those the run has), for the server's model
    information and anything else that shows a saved model's accuracy."""
    out = {}
    evaluated = metrics.get("evaluated_on")
    held_out = metrics.get(evaluated) if evaluated in ("test", "val") else None
    if isinstance(held_out, dict) and held_out.get("n") is not None and held_out.get("correct") is not None:
        out[evaluated if evaluated == "test" else "validation"] = describe_accuracy(
            accuracy_from_counts(int(held_out["correct"]), int(held_out["n"]), evaluated))
    validation = metrics.get("validation")
    if isinstance(validation, dict) and "validation" not in out and validation.get("kind") in KINDS:
        out["validation"] = describe_accuracy(
            accuracy_from_counts(int(validation["correct"]), int(validation["n"]), validation["kind"]))
    return out


def describe_accuracy(summary: dict) -> str:
    """``'cross-validated accuracy 0.833 [0.733, 0.900] (n=78)'``: the figure, saying what it is."""
    return f"{summary.get('label', KINDS['test'])} accuracy {summary['text']}"
