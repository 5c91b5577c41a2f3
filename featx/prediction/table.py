"""The study's predictions table: one row per image, the top class, the next K, one probability per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featx.cells import safe_frame

#: One format for probabilities, in the CSV file and on the screen.
PROBABILITY_FORMAT = "%.6f"


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
        safe_frame(table).to_csv(out, index=False, float_format=PROBABILITY_FORMAT)  # spreadsheet-safe cells
    return table
