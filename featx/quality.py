"""What the codes say about the data: near-duplicate groups, suspected label errors, outliers, confused classes.

Why here: featx already holds a CNN code for every image, which is what data-quality tools spend a whole pass
computing. These are the analyses on those codes, with no file, cache or page in sight: ``featx check``
(:mod:`featx.check`) and ``fit-head`` (:mod:`featx.training.fit`) call them on codes they loaded.

- :func:`near_duplicates`: pairs whose cosine similarity of L2-normalised codes is at least a threshold,
  grouped by union-find (a copy of a copy is in the same group).
- :func:`label_issues`: confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating
  Uncertainty in Dataset Labels", JAIR 2021), through ``cleanlab``, on out-of-fold predicted probabilities of a
  logistic head (:func:`sklearn.model_selection.cross_val_predict`).
- :func:`outliers`: mean cosine distance to the k nearest other images, ranked.
- :func:`confused_pairs`: the class pairs the out-of-fold predictions mix up most.

The threshold :data:`NEAR_DUPLICATE_THRESHOLD` was calibrated on planted copies (resized to half, JPEG quality
60, centre crop 90%, brightness +10%, mirrored) of ``ants_bees`` and ``flowers5`` photos with mobilenet_v2's
``pre_logits`` codes: ``scripts/bench_check.py`` prints the recall and precision it gives, and
``docs/check.md`` the figures. Other backbones or taps may need another value (``threshold=``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featx.errors import FeatxError
from featx.names import shown

#: Cosine similarity (L2-normalised codes) at or above which two images are near-duplicates. Calibrated on
#: mobilenet_v2 ``pre_logits`` with planted copies (scripts/bench_check.py; figures in docs/check.md).
NEAR_DUPLICATE_THRESHOLD = 0.92

#: Neighbours whose mean cosine distance is an image's outlier score (k of kNN outlier detection; 5 is a common
#: choice, e.g. cleanlab's Datalab default for its outlier issue uses 10 -- fewer reacts to small classes).
OUTLIER_NEIGHBOURS = 5

#: Rows of the similarity matrix computed at once: 1024 rows x n columns of float32 (n = 50,000: 200 MB).
BLOCK_ROWS = 1024

#: What fit-head does with near-duplicates: find and report them, also keep each group on one side of the
#: split, or skip the search.
NEAR_DUPLICATE_MODES = ("report", "group", "off")


def one_thread():
    """A context in which BLAS and OpenMP run one thread. On a busy machine their spinning threads slowed the
    label checks of flowers5 eleven-fold (66 s against 5.8 s, scripts/bench_check.py's logistic folds at load
    20 on two cores); one thread loses little when the machine is idle."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def normalized(X) -> np.ndarray:
    """Rows of ``X`` (n, d) scaled to unit L2 norm, float32; a zero row stays zero."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _check_codes(X, name: str = "codes") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or not len(X):
        raise FeatxError(f"expected a non-empty (n, d) array of codes, got shape {X.shape}", param=name)
    if not np.isfinite(X).all():
        raise FeatxError("codes hold NaN or infinite values; re-extract them (featx cache verify)", param=name)
    return X


class UnionFind:
    """Disjoint sets over ``0..n-1`` (path halving, union by size): the groups of a graph's connected parts."""

    def __init__(self, n: int):
        self.parent = np.arange(n)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def groups(self) -> list[list[int]]:
        """Every set of two members or more, each sorted, in order of its first member."""
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return sorted((g for g in out.values() if len(g) > 1), key=lambda g: g[0])


@dataclass
class Neighbours:
    """Each image's nearest other images by cosine similarity.

    ``index``: (n, k) int, row i's k most similar other rows, most similar first; ``similarity``: (n, k) float32
    cosine similarities in [-1, 1]; ``pairs``: (m, 2) int with i < j, every pair at or above ``threshold``
    (found over all rows, not only the k nearest); ``pair_similarity``: (m,) float32.
    """

    index: np.ndarray
    similarity: np.ndarray
    pairs: np.ndarray
    pair_similarity: np.ndarray
    threshold: float


def neighbours(X, k: int = OUTLIER_NEIGHBOURS, threshold: float = NEAR_DUPLICATE_THRESHOLD,
               block_rows: int = BLOCK_ROWS) -> Neighbours:
    """One pass over the cosine similarity matrix, ``block_rows`` rows at a time: k nearest and close pairs.

    Parameters
    ----------
    X : array (n, d)
        Codes, any float dtype; L2-normalised here.
    k : int
        Neighbours kept per row (capped at n - 1).
    threshold : float
        Cosine similarity at or above which a pair is kept.

    Returns
    -------
    Neighbours

    Notes
    -----
    Time O(n^2 d) (flowers5, 4,317 x 1,280: under a second on two cores), memory O(block_rows * n).

    Raises
    ------
    FeatxError
        Empty or non-finite codes; a threshold outside (0, 1].
    """
    X = normalized(_check_codes(X))
    if not 0 < threshold <= 1:
        raise FeatxError(f"expected a cosine similarity in (0, 1], got {threshold}", param="threshold")
    n = len(X)
    k = max(0, min(k, n - 1))
    index = np.zeros((n, k), dtype=np.int64)
    sim = np.zeros((n, k), dtype=np.float32)
    pairs, pair_sim = [], []
    for start in range(0, n, block_rows):
        rows = np.arange(start, min(n, start + block_rows))
        with one_thread():
            S = X[rows] @ X.T  # (b, n)
        S[np.arange(len(rows)), rows] = -np.inf  # never one's own neighbour
        if k:
            part = np.argpartition(-S, k - 1, axis=1)[:, :k]
            vals = np.take_along_axis(S, part, axis=1)
            order = np.argsort(-vals, axis=1, kind="stable")
            index[rows] = np.take_along_axis(part, order, axis=1)
            sim[rows] = np.take_along_axis(vals, order, axis=1)
        r, c = np.nonzero(S >= threshold - 1e-6)
        keep = rows[r] < c
        pairs.append(np.stack([rows[r][keep], c[keep]], axis=1))
        pair_sim.append(S[r[keep], c[keep]])
    return Neighbours(index, sim, np.concatenate(pairs).astype(np.int64),
                      np.concatenate(pair_sim).astype(np.float32), float(threshold))


@dataclass
class DuplicateGroups:
    """Near-duplicate groups of rows.

    ``groups``: list of sorted row-index lists (two rows or more each), largest similarity first;
    ``pairs``/``pair_similarity``: the close pairs that made them (i < j), most similar first;
    ``group_of``: (n,) int, each row's group number or -1.
    """

    groups: list
    pairs: np.ndarray
    pair_similarity: np.ndarray
    group_of: np.ndarray
    threshold: float

    def straddling(self, split) -> list[int]:
        """Numbers of the groups whose rows lie in more than one split (``split``: (n,) str)."""
        split = np.asarray(split)
        return [g for g, rows in enumerate(self.groups) if len(set(split[rows].tolist())) > 1]

    def conflicting(self, labels) -> list[int]:
        """Numbers of the groups whose rows carry more than one label."""
        labels = np.asarray(labels)
        return [g for g, rows in enumerate(self.groups) if len(set(labels[rows].tolist())) > 1]

    def leaked(self, split, held_out: str = "test", seen=("train", "val")) -> np.ndarray:
        """(n,) bool: rows of ``held_out`` with a near-duplicate in a ``seen`` split (the leaked test images)."""
        split = np.asarray(split)
        out = np.zeros(len(split), dtype=bool)
        for rows in self.groups:
            rows = np.asarray(rows)
            if np.isin(split[rows], list(seen)).any():
                out[rows[split[rows] == held_out]] = True
        return out

    def group_keys(self, keys) -> list[str]:
        """``keys`` with every member of a group given its group's one key (for a split that keeps groups
        together: :func:`featx.datasets.make_split` treats equal keys as one unit)."""
        out = [str(k) for k in keys]
        for rows in self.groups:
            shared = "near:" + min(out[i] for i in rows)
            for i in rows:
                out[i] = shared
        return out


def near_duplicates(X, threshold: float = NEAR_DUPLICATE_THRESHOLD, found: Neighbours | None = None
                    ) -> DuplicateGroups:
    """Group rows whose codes are near-duplicates (cosine similarity >= ``threshold``), by union-find.

    Parameters
    ----------
    X : array (n, d)
        Codes of one tap (or taps side by side).
    threshold : float
        See :data:`NEAR_DUPLICATE_THRESHOLD` (its calibration).
    found : Neighbours, optional
        A :func:`neighbours` pass already made with the same threshold (saves the second pass).

    Returns
    -------
    DuplicateGroups
    """
    nb = found if found is not None and found.threshold == threshold else neighbours(X, 0, threshold)
    uf = UnionFind(len(X))
    for a, b in nb.pairs:
        uf.union(int(a), int(b))
    order = np.argsort(-nb.pair_similarity, kind="stable")
    pairs, psim = nb.pairs[order], nb.pair_similarity[order]
    best: dict[int, float] = {}
    for (a, _), s in zip(pairs, psim):
        best.setdefault(uf.find(int(a)), float(s))
    groups = sorted(uf.groups(), key=lambda g: (-best[uf.find(g[0])], g[0]))
    group_of = np.full(len(X), -1, dtype=np.int64)
    for number, rows in enumerate(groups):
        group_of[rows] = number
    return DuplicateGroups(groups, pairs, psim, group_of, float(threshold))


def outliers(found: Neighbours) -> np.ndarray:
    """(n,) float: each row's mean cosine distance (1 - similarity) to its k nearest other rows.

    kNN distance as an outlier score (Ramaswamy, Rastogi & Shim, SIGMOD 2000, use the k-th distance; the mean
    is steadier). Higher is further from everything; rank with ``np.argsort(-scores)``.
    """
    if not found.similarity.shape[1]:
        return np.zeros(len(found.index), dtype=np.float32)
    return (1.0 - found.similarity).mean(axis=1).astype(np.float32)


@dataclass
class LabelIssues:
    """Confident learning's verdict on each row.

    ``ranked``: row indices, most suspect first (flagged rows first, each part by ascending label quality);
    ``flagged``: (n,) bool, rows cleanlab's ``find_label_issues`` calls label issues; ``quality``: (n,) float in
    [0, 1], cleanlab's self-confidence label-quality score (the out-of-fold probability of the given label);
    ``suggested``: (n,) str, the most probable class; ``probabilities``: (n, c) out-of-fold probabilities, columns
    in ``classes`` order.
    """

    ranked: np.ndarray
    flagged: np.ndarray
    quality: np.ndarray
    suggested: np.ndarray
    probabilities: np.ndarray
    classes: np.ndarray


#: The logistic head of the label checks: codes L2-normalised, then logistic regression with C = LABEL_CHECK_C.
#: Measured with scripts/bench_check.py's rule (5% of the labels flipped, seeds 0 and 1, top-F suspects that
#: are planted flips) on mobilenet_v2 codes: leaves3 (52 photos) 0.67, ants_bees 0.90, flowers5 0.59; the
#: former head (PCA to 64 components, standardised, C=0.1) gave 0.00, 0.83 and 0.58: on a small set its
#: PCA kept as many components as training rows and standardising them blew up noise (out-of-fold accuracy
#: 0.67 on leaves3 against 0.95 now), so good photos were flagged by the dozen.
LABEL_CHECK_C = 1.0


def out_of_fold_probabilities(X, y, folds: int = 5, seed: int = 0, C: float = LABEL_CHECK_C
                              ) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold class probabilities of a logistic head: each row predicted by a model that never saw it.

    Parameters
    ----------
    X : array (n, d)
        Codes; inside each fold L2-normalised (no PCA, no standardising: both hurt small sets, see
        :data:`LABEL_CHECK_C`).
    y : array (n,)
        Labels (any type).
    folds : int
        Stratified folds (capped at the smallest class's count, at least 2).
    seed : int
        Shuffles the folds.
    C : float
        Inverse regularisation strength (:data:`LABEL_CHECK_C`).

    Returns
    -------
    (probabilities (n, c) float64, classes (c,))

    Raises
    ------
    FeatxError
        Fewer than two classes, or a class with a single image.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    X = _check_codes(X)
    classes, y_index, counts = np.unique(np.asarray(y), return_inverse=True, return_counts=True)
    if len(classes) < 2:  # no param: these are the dataset's labels, not an option the user typed
        raise FeatxError("label checks need at least two classes (class folders); add a second class")
    if counts.min() < 2:
        lone = sorted(shown(str(c)) for c, n in zip(classes.tolist(), counts.tolist()) if n < 2)
        raise FeatxError(f"class '{lone[0]}' has one image{f' (and {len(lone) - 1} other class(es) too)' if len(lone) > 1 else ''}; "
                         "label checks need at least two images per class: add images to it, or leave it out")
    n_splits = int(min(folds, counts.min()))
    model = make_pipeline(Normalizer(), LogisticRegression(C=C, max_iter=1000))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with one_thread():
        proba = cross_val_predict(model, X, y_index, cv=cv, method="predict_proba")
    return proba, classes


def label_issues(X, y, folds: int = 5, seed: int = 0, probabilities=None) -> LabelIssues:
    """Suspected label errors by confident learning (cleanlab) on out-of-fold probabilities.

    Parameters
    ----------
    X : array (n, d)
        Codes.
    y : array (n,)
        The given labels.
    folds, seed : see :func:`out_of_fold_probabilities`
    probabilities : (proba, classes), optional
        Out-of-fold probabilities already computed.

    Returns
    -------
    LabelIssues
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    proba, classes = probabilities if probabilities is not None else out_of_fold_probabilities(X, y, folds, seed)
    y_index = np.searchsorted(classes, np.asarray(y))
    quality = get_label_quality_scores(y_index, proba, method="self_confidence")
    flagged = np.zeros(len(y_index), dtype=bool)
    if len(y_index) > len(classes):  # cleanlab needs more rows than classes to estimate its joint
        flagged[find_label_issues(y_index, proba, filter_by="prune_by_noise_rate")] = True
    ranked = np.lexsort((quality, ~flagged))  # flagged first, then by quality, ascending
    return LabelIssues(ranked, flagged, quality, classes[proba.argmax(axis=1)], proba, classes)


def confused_pairs(y, predicted, top: int = 5) -> list[tuple[str, str, int]]:
    """The class pairs most often mixed up, either way: ``(class_a, class_b, count)``, most first (count > 0)."""
    counts: dict[tuple, int] = {}
    for a, b in zip(np.asarray(y).tolist(), np.asarray(predicted).tolist()):
        if a != b:
            key = tuple(sorted((str(a), str(b))))
            counts[key] = counts.get(key, 0) + 1
    return [(a, b, n) for (a, b), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
