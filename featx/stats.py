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


def accuracy_summary(y_true, y_pred, classes=None) -> dict:
    """Accuracy with its 95% Wilson interval, test-set size and the small-test warning, as metrics save it.

    Parameters
    ----------
    y_true, y_pred : array-like, shape (n,)
        True and predicted labels (any comparable type: class names or indices).
    classes : sequence, optional
        Every class of the model.  The smallest class then counts each of them, 0 for a class with no
        image here (which ``classes_missing`` names): without it a class absent from the test set was
        invisible and the smallest class looked fine.

    Returns
    -------
    dict
        ``accuracy`` (float in [0, 1], None when n is 0), ``correct`` and ``n`` (int), ``interval95``
        ([low, high]), ``smallest_class`` (images of the rarest class), ``classes_missing`` (list: the
        classes with no image here), ``text`` (for the console) and ``warning`` (str or None,
        :func:`small_test_warning`).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = int(len(y_true))
    correct = int((y_true == y_pred).sum())
    low, high = wilson_interval(correct, n)
    present, counts = np.unique(y_true, return_counts=True) if n else (np.array([]), np.array([], dtype=int))
    missing = [c for c in classes if c not in set(present.tolist())] if classes is not None else []
    per_class_min = 0 if missing else (int(counts.min()) if n else 0)
    return {"accuracy": correct / n if n else None, "correct": correct, "n": n, "interval95": [low, high],
            "smallest_class": per_class_min, "classes_missing": [c if isinstance(c, str) else c.item()
                                                                 if hasattr(c, "item") else c for c in missing],
            "text": format_accuracy(correct, n), "warning": small_test_warning(n, per_class_min)}
