"""The study's predictions table: one row per image, the top class, the next K, one probability per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featx.atomic import whole
from featx.names import shown
from featx.cells import write_csv

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

    classes = np.asarray([shown(c) for c in classes])  # any name as text (featx.names): CSV, Parquet, JSON
    rows = np.arange(len(proba))
    order = np.argsort(-proba, axis=1)
    table = pd.DataFrame({
        "file": [shown(p) for p in paths],
        "id": [shown(Path(p).stem) for p in paths],
        "predicted": classes[order[:, 0]] if len(proba) else [],
        "probability": proba[rows, order[:, 0]] if len(proba) else [],
    })
    if true_labels is not None:
        table["true_label"] = [shown(c) for c in true_labels]
    for k in range(1, min(top or 0, len(classes))):
        table[f"top{k + 1}"] = classes[order[:, k]]
        table[f"top{k + 1}_prob"] = proba[rows, order[:, k]]
    for j, c in enumerate(classes):
        table[f"p_{c}"] = proba[:, j]
    if out is not None:
        with whole(out) as tmp:  # a failed write leaves no half table (featx.atomic)
            write_csv(table, tmp, index=False, float_format=PROBABILITY_FORMAT)  # spreadsheet-safe cells
    return table
