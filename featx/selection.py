"""Choosing a head by cross-validation: the search a careful practitioner does by hand.

:func:`select_head` scores candidates (feature blocks x head family x its
main regularisation x scaling x flip test-time augmentation) by stratified
k-fold cross-validation with scikit-learn's :func:`~sklearn.model_selection.cross_validate`
on the rows it is given, inside a time budget, and refits the winner on all
of them (``GridSearchCV(refit=True)``'s semantics).  featx gives it train+val
and evaluates the winner once on test.

The search space (:data:`HEAD_GRID`, documented so a result can be
reproduced by hand):

1. **Feature sets.**  Each block (a tap of a backbone) alone, all blocks
   concatenated, and the two best blocks concatenated, ranked by
   :func:`logme` (You et al., ICML 2021: the evidence of a Bayesian linear
   model on the codes, computed in seconds without training, on at most
   :data:`LOGME_ROWS` rows).  Only the
   ``keep_features`` best-ranked sets go on to cross-validation.
2. **Heads.**  The default head (logistic, C=0.1, standardised) on every
   kept set; then, set by set in the order of that score, the rest of
   :data:`HEAD_GRID`, diverse families first: linear SVM (C=1, L2 rows), RBF
   SVM (C=10, standardised), logistic C=0.01, logistic C=0.001, linear SVM C=0.1, logistic C=1,
   linear SVM C=10, logistic C=0.1 on L2-normalised then standardised rows,
   RBF SVM C=1, kNN (k=5, cosine).
3. **Flip TTA.**  When the flipped view's codes are given, the two best
   candidates so far are scored again training on both views and averaging
   the two views' probabilities at prediction.
4. **The dense head** on the best-ranked feature set, last, only when the
   budget still allows it (:data:`PRIOR_SECONDS_PER_1000` and
   :data:`PRIOR_MIN_SECONDS` estimate it).

Candidates run in that order; one is skipped (and listed as skipped) when the
time spent plus its expected cost would pass ``budget`` seconds.  The winner
is the highest mean CV accuracy; ties go to the earlier (cheaper) candidate.

:class:`BlockHead` is the estimator all of this produces: a head (or one head
per block, averaged: ``fuse="mean"``) reading column ranges of one design
matrix, optionally with the flipped view.  A bundle stores it with the
layout of its design matrix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.errors import FeatxError
from featx.heads import Head, check_head_options, fit_with_copies
from featx.heads import make_head as make_named_head
from featx.vocabulary import FUSE_MODES

#: Default time budget of ``--head auto`` in seconds: about 1,000 images on two cores fit in it.
DEFAULT_BUDGET = 45.0

#: Expected cross-validation seconds per 1,000 images for a family not yet timed in this search (the
#: others are timed on their first candidate).  dense: 3-fold CV of the default dense head took 17.9 s on
#: 799 flowers5 images and 17.5 s on 244 ants_bees images on two idle cores (early stopping: the cost is
#: mostly per epoch), so 25 s per 1,000 images above the 30 s floor; the earlier 150 was measured on two
#: cores shared with seven other jobs and kept the dense head out of every default-budget search.
PRIOR_SECONDS_PER_1000 = {"dense": 25.0, "rbf_svm": 5.0}

#: The least a family not yet timed is expected to cost, whatever the rows: a dense head's Keras fits
#: pay per epoch, not per row (3 folds of 24 images took 19 s, of 42 images 24 s, on two shared cores:
#: up to 100 epochs each; a 15 s prior let ``--budget 20`` overrun to 28 s).
PRIOR_MIN_SECONDS = {"dense": 30.0}

#: How many times longer a candidate takes on both views (twice the rows) than on the images alone.
#: Linear models and kNN grow about linearly with the rows (2, the default); a kernel SVM's fit grows
#: between n^2 and n^3: on 3,455 flowers5 images of two backbones, 3-fold CV of rbf_svm C=10 took 141.4 s
#: with the mirrors against 32.0 s without (4.4x), and a factor of 2 let ``--budget 300`` run 472 s.
FLIP_COST_FACTOR = {"rbf_svm": 4.5}


def expected_seconds(family: str, tta: str, costs: dict, n_rows: int) -> float:
    """What scoring a candidate is expected to cost, from what this search has timed so far.

    Parameters
    ----------
    family : str
        Head family (:data:`HEAD_GRID`).
    tta : {"none", "flip"}
    costs : dict of (family, tta) -> seconds
        The last cross-validation time of each family and view seen in this search.
    n_rows : int
        Images cross-validated.

    Returns
    -------
    float
        Seconds: the family's own time when timed; else the median of the timed families, raised to
        :data:`PRIOR_SECONDS_PER_1000` / :data:`PRIOR_MIN_SECONDS` for families known to cost more;
        times :data:`FLIP_COST_FACTOR` (default 2) for a flip candidate whose flip version is untimed.
    """
    if (family, tta) in costs:
        return float(costs[(family, tta)])
    base = costs.get((family, "none"))
    if base is None:
        timed = [v for (_, t), v in costs.items() if t == "none"]
        base = float(np.median(timed)) if timed else 0.0
        if family in PRIOR_SECONDS_PER_1000:
            base = max(base, PRIOR_SECONDS_PER_1000[family] * n_rows / 1000, PRIOR_MIN_SECONDS.get(family, 0.0))
    return float(base) * (FLIP_COST_FACTOR.get(family, 2.0) if tta == "flip" else 1.0)


#: (family, {Head parameter: value}) in the order they are tried.
HEAD_GRID = (
    ("logistic", {"standardize": True, "options": {"C": 0.1}}),
    ("linear_svm", {"l2": True, "options": {"C": 1.0}}),
    ("rbf_svm", {"standardize": True, "options": {"C": 10.0}}),
    ("logistic", {"standardize": True, "options": {"C": 0.01}}),
    # strong regularisation for concatenated blocks (2,560 columns and more): on two backbones' codes of
    # flowers5 and cifar10_3k, CV accuracy rose from C=0.1 to C=0.01 and again to C=0.001 or 0.003
    ("logistic", {"standardize": True, "options": {"C": 0.001}}),
    ("linear_svm", {"l2": True, "options": {"C": 0.1}}),
    ("logistic", {"standardize": True, "options": {"C": 1.0}}),
    ("linear_svm", {"l2": True, "options": {"C": 10.0}}),
    ("logistic", {"l2": True, "standardize": True, "options": {"C": 0.1}}),
    ("rbf_svm", {"standardize": True, "options": {"C": 1.0}}),
    ("knn", {"options": {"n_neighbors": 5}}),
    ("dense", {}),
)


# ---- LogME ---------------------------------------------------------------------------------

def logme(X, y) -> float:
    """LogME transferability score of codes ``X`` for labels ``y`` (You et al., ICML 2021).

    For each class, a Bayesian linear regression from the codes to the
    one-hot label, with prior precision alpha and noise precision beta set by
    evidence maximisation (the paper's fixed-point Algorithm 1); the score is
    the mean over classes of the maximised log evidence per image.  Higher is
    better; scores compare feature sets on the same images.  Computed from a
    eigen-decomposition of the smaller Gram matrix, so it costs O(n d min(n, d)) whichever of n and d is larger.

    Parameters
    ----------
    X : array of shape (n, d)
        Codes (any float dtype); computed in float64.
    y : array of shape (n,)
        Labels (any type).

    Returns
    -------
    float
        Mean log evidence per image (nats).

    Raises
    ------
    FeatxError
        With fewer than 2 classes or 2 rows.
    """
    F = np.asarray(X, dtype=np.float64)
    labels = np.unique(y, return_inverse=True)[1]
    n, d = F.shape
    if n < 2 or labels.max() < 1:
        raise FeatxError("LogME needs at least 2 images and 2 classes")
    T = (labels[:, None] == np.arange(labels.max() + 1)[None, :]).astype(np.float64)  # (n, K) one-hot
    # eigen-decomposition of the smaller Gram matrix (a matrix product, then eigh: far cheaper than an SVD)
    if n >= d:
        s, V = np.linalg.eigh(F.T @ F)
        keep = s > s.max() * 1e-10
        s, V = s[keep], V[:, keep]
        proj = (V.T @ (F.T @ T)) / np.sqrt(s)[:, None]  # (r, K): the labels in the codes' left singular basis
    else:
        s, U = np.linalg.eigh(F @ F.T)
        keep = s > s.max() * 1e-10
        s, U = s[keep], U[:, keep]
        proj = U.T @ T
    null_dims = d - len(s)
    evidences = []
    eps = 1e-5
    for k in range(T.shape[1]):
        t = T[:, k]
        x2 = proj[:, k] ** 2
        outside = float(t @ t - x2.sum())  # squared residual no weight vector can explain
        alpha, beta = 1.0, 1.0
        lam = alpha / beta
        for _ in range(11):
            gamma = float((s / (s + lam)).sum())
            m2 = float((s * x2 / (s + lam) ** 2).sum())  # |m|^2, m the posterior mean weights
            res2 = float((x2 * (lam / (s + lam)) ** 2).sum()) + outside  # |t - F m|^2
            alpha = gamma / (m2 + eps)
            beta = (n - gamma) / (res2 + eps)
            new_lam = alpha / beta
            done = abs(new_lam - lam) / lam < 0.01
            lam = new_lam
            if done:
                break
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta)
                    - 0.5 * (np.log(alpha + beta * s).sum() + null_dims * np.log(alpha))
                    - beta / 2 * (res2 + eps) - alpha / 2 * (m2 + eps) - n / 2 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


# ---- the estimator -------------------------------------------------------------------------

class BlockHead(ClassifierMixin, BaseEstimator):
    """Heads reading column ranges of one design matrix, their probabilities averaged.

    Parameters
    ----------
    head : estimator or list of estimators
        Cloned once per group (a list gives one estimator per group).
    groups : list of list of (start, stop)
        Each group's columns of the clean view, concatenated in order; one
        group for concatenation, one group per block for ``fuse="mean"``.
        ``None``: all columns, one group.
    flip_groups : list of list of (start, stop), optional
        The same groups' columns in the flipped view.  When given, each head
        trains on both views (twice the rows) and predicts the mean of the two
        views' probabilities (flip test-time augmentation).
    """

    def __init__(self, head=None, groups=None, flip_groups=None):
        self.head = head
        self.groups = groups
        self.flip_groups = flip_groups

    def _groups(self, n_features):
        return self.groups if self.groups is not None else [[(0, n_features)]]

    @staticmethod
    def _take(X, ranges):
        return np.concatenate([X[:, a:b] for a, b in ranges], axis=1) if len(ranges) > 1 else X[:, ranges[0][0]:ranges[0][1]]

    def fit(self, X, y, validation_data=None, copies=None):
        """Fit one head per group.

        ``copies``: optional ``(X_copies, y_copies)``, augmented copies of the rows (cached views) in
        the same columns: trained on, but C is chosen on the originals (:func:`featx.heads.fit_with_copies`).
        """
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        groups = self._groups(X.shape[1])
        if self.flip_groups is not None and len(self.flip_groups) != len(groups):
            raise ValueError("flip_groups must list the same groups as groups")
        heads = self.head if isinstance(self.head, (list, tuple)) else [self.head] * len(groups)
        if len(heads) != len(groups):
            raise ValueError(f"{len(heads)} heads for {len(groups)} groups")
        self.heads_ = []
        for i, (est, ranges) in enumerate(zip(heads, groups)):
            est = clone(est if est is not None else Head())
            Xg = self._take(X, ranges)
            val = None
            if validation_data is not None and _accepts_validation(est):
                Xv, yv = validation_data
                val = (self._take(np.asarray(Xv, dtype=np.float64), ranges), yv)
            extra = []  # copies of the rows: mirrors (flip TTA) and augmented views; C is chosen on the originals
            if self.flip_groups is not None:
                extra.append((self._take(X, self.flip_groups[i]), y))
            if copies is not None:
                Xc = np.asarray(copies[0], dtype=np.float64)
                extra.append((self._take(Xc, ranges), np.asarray(copies[1])))
                if self.flip_groups is not None:
                    extra.append((self._take(Xc, self.flip_groups[i]), np.asarray(copies[1])))
            if extra:
                est = fit_with_copies(est, Xg, y, np.concatenate([e[0] for e in extra]),
                                      np.concatenate([e[1] for e in extra]), validation_data=val)
            elif val is not None:
                est.fit(Xg, y, validation_data=val)
            else:
                est.fit(Xg, y)
            self.heads_.append(est)
        self.classes_ = self.heads_[0].classes_
        self.chosen_ = [getattr(h, "chosen_", {}) for h in self.heads_]
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "heads_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        groups = self._groups(X.shape[1])
        total = np.zeros((len(X), len(self.classes_)))
        for i, (est, ranges) in enumerate(zip(self.heads_, groups)):
            p = est.predict_proba(self._take(X, ranges))
            if self.flip_groups is not None:
                p = (p + est.predict_proba(self._take(X, self.flip_groups[i]))) / 2
            total += p
        return total / len(self.heads_)

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def frozen(self) -> "BlockHead":
        """An unfitted copy with each head's validated choices fixed (see :meth:`featx.heads.Head.frozen`)."""
        check_is_fitted(self, "heads_")
        heads = [h.frozen() if hasattr(h, "frozen") else clone(h) for h in self.heads_]
        return BlockHead(heads, self.groups, self.flip_groups)


def _accepts_validation(est) -> bool:
    return isinstance(est, Head) and est.kind == "dense"


# ---- selection -----------------------------------------------------------------------------

@dataclass
class Candidate:
    features: tuple  # block names, concatenated
    family: str
    params: dict
    tta: str = "none"  # or "flip"

    @property
    def name(self) -> str:
        p = dict(self.params)
        opts = p.pop("options", {}) or {}
        scaling = "+".join(k for k in ("l2", "standardize") if p.get(k)) or "default scaling"
        reg = ", ".join(f"{k}={v}" for k, v in opts.items())
        return (f"{'+'.join(self.features)} | {self.family}{' ' + reg if reg else ''} ({scaling})"
                f"{' | flip TTA' if self.tta == 'flip' else ''}")


@dataclass(repr=False)
class SelectionResult:
    table: object  # pandas DataFrame: candidate, features, head, cv_mean, cv_sd, fit_s, status
    best: Candidate
    estimator: BlockHead  # the winner, fitted on every row select_head was given
    logme: dict = field(default_factory=dict)  # feature set -> LogME score
    seconds: float = 0.0
    budget: float = DEFAULT_BUDGET  # the budget the search ran under, seconds

    def __repr__(self) -> str:
        return f"SelectionResult(best={self.best.name!r}, {len(self.table)} candidates, {self.seconds:.1f}s)"

    def text(self, top: int = 12) -> str:
        t = self.table
        done = t[t["status"] == "done"].sort_values("cv_mean", ascending=False)
        lines = [f"{'candidate':<78} {'cv acc':>7} {'± sd':>6} {'fit s':>6}"]
        for _, r in done.head(top).iterrows():
            mark = " <- chosen" if r["candidate"] == self.best.name else ""
            lines.append(f"{r['candidate'][:78]:<78} {r['cv_mean']:7.3f} {r['cv_sd']:6.3f} {r['fit_s']:6.1f}{mark}")
        skipped = int((t["status"] != "done").sum())
        if len(done) > top:
            lines.append(f"... {len(done) - top} more scored (see selection.csv)")
        if skipped:
            names = ", ".join(t[t["status"] != "done"]["candidate"].astype(str))
            lines.append(f"{skipped} candidate{'s' if skipped > 1 else ''} skipped (time budget spent): {names}")
        return "\n".join(lines)


LOGME_ROWS = 1000  # LogME on at most this many rows (stratified): ranking needs no more, and it stays seconds


def _feature_sets(blocks: dict, y, keep: int, seed: int = 0) -> tuple[list, dict]:
    """The ``keep`` feature sets LogME ranks best (tuples of block names, best first) and every set's score
    (``"a+b"`` -> nats): each block, all blocks, and the two best blocks together."""
    names = list(blocks)
    if len(y) > LOGME_ROWS:
        from sklearn.model_selection import train_test_split

        rows = np.sort(train_test_split(np.arange(len(y)), train_size=LOGME_ROWS, stratify=y,
                                        random_state=seed)[0])
        blocks, y = {n: blocks[n][rows] for n in names}, y[rows]
    scores = {(n,): logme(blocks[n], y) for n in names}
    ranked = sorted(scores, key=lambda k: -scores[k])
    sets = list(ranked)
    if len(names) > 1:
        everything = tuple(names)
        scores[everything] = logme(np.concatenate([blocks[n] for n in names], axis=1), y)
        sets.append(everything)
    if len(names) > 2:
        pair = tuple(n for n in names if (n,) in ranked[:2])
        scores[pair] = logme(np.concatenate([blocks[n] for n in pair], axis=1), y)
        sets.append(pair)
    sets = sorted(dict.fromkeys(sets), key=lambda k: -scores[k])
    return sets[:keep], {"+".join(k): v for k, v in scores.items()}


def _checked_budget(budget) -> float:
    """``budget`` as seconds (``None``: :data:`DEFAULT_BUDGET`); :class:`FeatxError` unless finite and >= 0."""
    try:
        budget = DEFAULT_BUDGET if budget is None else float(budget)
    except (TypeError, ValueError):
        raise FeatxError(f"expected a number of seconds, got {budget!r}", param="budget") from None
    if not (math.isfinite(budget) and budget >= 0):
        raise FeatxError(f"expected a finite number of seconds, 0 or more, got {budget}", param="budget")
    return budget


def _checked_inputs(blocks, y, flip, fuse: str, families) -> tuple[dict, np.ndarray, list]:
    """The blocks as float64 arrays, the labels as an array and the grid restricted to ``families``.

    Refuses (:class:`FeatxError`, in this order) no blocks, an unknown ``fuse``, blocks and labels of
    different lengths, a flipped view with other blocks or other shapes, unknown families, and a class
    with fewer than 2 images.
    """
    if not blocks:
        raise FeatxError("select_head: no code blocks given")
    if fuse not in FUSE_MODES:
        raise FeatxError(f"expected concat or mean, got {fuse!r}", param="fuse")
    y = np.asarray(y)
    names = list(blocks)
    blocks = {k: np.asarray(v, dtype=np.float64) for k, v in blocks.items()}
    if any(len(v) != len(y) for v in blocks.values()):
        raise FeatxError("select_head: every block needs one row per label")
    if flip is not None and set(flip) != set(names):
        raise FeatxError("select_head: the flipped view must have the same blocks")
    for n in names if flip is not None else ():
        if np.shape(flip[n]) != blocks[n].shape:  # misaligned mirrors would train silently on wrong columns
            raise FeatxError(f"select_head: the flipped view of block {n!r} has shape {np.shape(flip[n])}, "
                             f"the block {blocks[n].shape}; each mirror row must match its image's row")
    grid = [g for g in HEAD_GRID if families is None or g[0] in families]
    if families is not None and (unknown := set(families) - {g[0] for g in HEAD_GRID}):
        raise FeatxError(f"unknown head families {', '.join(sorted(unknown))}", param="families")
    if np.unique(y, return_counts=True)[1].min() < 2:
        raise FeatxError("head='auto': every class needs at least 2 images to cross-validate")
    return blocks, y, grid


def _folds(y: np.ndarray, cv: int, random_state: int) -> StratifiedKFold:
    """``cv`` stratified folds, fewer when the smallest class is smaller (2 at least)."""
    smallest = int(np.unique(y, return_counts=True)[1].min())
    return StratifiedKFold(max(2, min(cv, smallest)), shuffle=True, random_state=random_state)


@dataclass(frozen=True)
class Design:
    """The design matrix every candidate reads, and where each block lies in it.

    ``X``: ``(n, sum of widths)`` float64 without a flipped view, twice as wide with one (the clean
    blocks, then the flipped blocks, in the given order).  ``ranges`` / ``flip_ranges``: block name ->
    ``(start, stop)`` columns of its clean / flipped codes.
    """

    X: np.ndarray
    ranges: dict
    flip_ranges: dict

    @classmethod
    def of(cls, blocks: dict, flip: dict | None) -> "Design":
        names = list(blocks)
        offsets = np.concatenate([[0], np.cumsum([blocks[n].shape[1] for n in names])]).astype(int)
        ranges = {n: (int(offsets[i]), int(offsets[i + 1])) for i, n in enumerate(names)}
        X = np.concatenate([blocks[n] for n in names] + ([np.asarray(flip[n], dtype=np.float64) for n in names]
                                                          if flip is not None else []), axis=1)
        total = int(offsets[-1])
        return cls(X, ranges, {n: (a + total, b + total) for n, (a, b) in ranges.items()})


@dataclass(frozen=True)
class CandidateSettings:
    """What every candidate's estimator shares: how blocks combine, class weights, the seed."""

    fuse: str = "concat"
    class_weight: object = None
    random_state: int = 0


def candidate_estimator(c: Candidate, design: Design, settings: CandidateSettings) -> BlockHead:
    """The unfitted estimator of candidate ``c``: its head on its feature set's columns of ``design``.

    ``fuse="mean"`` gives one head per block of the set; a flip candidate reads the mirrors' columns too.
    """
    head = Head(c.family, class_weight=settings.class_weight, random_state=settings.random_state,
                **{k: (dict(v) if isinstance(v, dict) else v) for k, v in c.params.items()})
    if settings.fuse == "mean" and len(c.features) > 1:
        groups = [[design.ranges[n]] for n in c.features]
        fgroups = [[design.flip_ranges[n]] for n in c.features]
    else:
        groups = [[design.ranges[n] for n in c.features]]
        fgroups = [[design.flip_ranges[n] for n in c.features]]
    return BlockHead(head, groups, fgroups if c.tta == "flip" else None)


class BudgetedScorer:
    """Cross-validates candidates in the order they come, within a time budget.

    A candidate whose expected cost (:func:`expected_seconds`, from the families timed so far) would
    take the time since ``start`` past ``budget`` is recorded as skipped; the first is always scored.
    ``rows``: one dict per candidate (the table's columns, and ``_c``: the :class:`Candidate`).
    """

    def __init__(self, design: Design, y: np.ndarray, folds, estimator, budget: float, start: float,
                 n_jobs: int = 1, verbose: bool = False):
        self.design = design
        self.y = y
        self.folds = folds
        self.estimator = estimator  # Candidate -> unfitted estimator
        self.budget = budget
        self.start = start
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.rows = []
        self.costs = {}  # (family, tta) -> seconds of its last cross-validation

    def score(self, c: Candidate) -> None:
        """Cross-validate ``c`` (or record it as skipped when the budget cannot take it): one row more."""
        row = {"candidate": c.name, "features": "+".join(c.features), "head": c.family, "tta": c.tta}
        expected = expected_seconds(c.family, c.tta, self.costs, len(self.y))
        if self.rows and time.perf_counter() - self.start + expected > self.budget:
            self.rows.append({**row, "cv_mean": np.nan, "cv_sd": np.nan, "fit_s": np.nan, "status": "skipped",
                              "_c": c})
            return
        t0 = time.perf_counter()
        res = cross_validate(self.estimator(c), self.design.X, self.y, cv=self.folds,
                             n_jobs=1 if c.family == "dense" else self.n_jobs, error_score="raise")
        seconds = time.perf_counter() - t0
        self.costs[(c.family, c.tta)] = seconds
        acc = res["test_score"]
        self.rows.append({**row, "cv_mean": float(acc.mean()), "cv_sd": float(acc.std()), "fit_s": seconds,
                          "status": "done", "_c": c})
        if self.verbose:
            print(f"  {c.name}: {acc.mean():.3f} ± {acc.std():.3f} ({seconds:.1f}s)")

    def score_all(self, candidates) -> None:
        for c in candidates:
            self.score(c)

    def done(self) -> list:
        """The scored rows, in the order they were scored."""
        return [r for r in self.rows if r["status"] == "done"]

    def best(self) -> Candidate:
        """The highest mean CV accuracy; of equals, the first scored (the cheaper)."""
        return max(self.done(), key=lambda r: r["cv_mean"])["_c"]

    def table(self):
        """One row per candidate: candidate, features, head, tta, cv_mean, cv_sd, fit_s, status (pandas)."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if k != "_c"} for r in self.rows])


def _by_first_score(sets: list, rows: list) -> list:
    """The feature sets ordered by their default head's CV accuracy (unscored last): from here on
    cross-validation, not LogME, decides the order."""
    first = {r["_c"].features: r["cv_mean"] for r in rows if r["status"] == "done"}
    return sorted(sets, key=lambda fs: -first.get(fs, -1.0))


def _grid_candidates(sets: list, grid: list) -> list:
    """The rest of the grid but the dense head, set by set."""
    return [Candidate(fs, fam, params) for fs in sets for fam, params in grid[1:] if fam != "dense"]


def _flip_candidates(done: list) -> list:
    """The two best candidates scored so far, again on both views."""
    best = sorted(done, key=lambda r: -r["cv_mean"])[:2]
    return [Candidate(r["_c"].features, r["_c"].family, r["_c"].params, "flip") for r in best]


def _dense_candidates(sets: list, grid: list) -> list:
    """The dense head on the best set, last: Keras fits cost the most."""
    return [Candidate(sets[0], fam, params) for fam, params in grid[1:] if fam == "dense"]


def _search(scorer: BudgetedScorer, sets: list, grid: list, with_flip: bool) -> None:
    """Score the candidates in the documented order: the default head on every kept set; the rest of the
    grid on the set that scored best first; the two best again with flip TTA; the dense head."""
    scorer.score_all(Candidate(fs, *grid[0]) for fs in sets)
    sets = _by_first_score(sets, scorer.rows)
    scorer.score_all(_grid_candidates(sets, grid))
    if with_flip:
        scorer.score_all(_flip_candidates(scorer.done()))
    scorer.score_all(_dense_candidates(sets, grid))


def select_head(blocks, y, flip=None, budget=None, cv: int = 3, keep_features: int = 2, families=None,
                class_weight=None, random_state: int = 0, n_jobs=None, fuse: str = "concat",
                verbose: bool = False) -> SelectionResult:
    """Cross-validated choice of a head over the documented search space; the winner refit on all rows.

    Parameters
    ----------
    blocks : dict of str -> array of shape (n, d_i)
        Named code blocks of the same n images (a tap of a backbone each).
    y : array of shape (n,)
        Labels.
    flip : dict of str -> array of shape (n, d_i), optional
        The same blocks computed on the mirrored images: adds flip-TTA candidates.
    budget : float, optional
        Seconds for the whole search (default :data:`DEFAULT_BUDGET`); candidates that would pass it are
        skipped, the first is always scored.
    cv : int
        Stratified folds (fewer when the smallest class is smaller).
    keep_features : int
        How many feature sets, ranked by LogME, are cross-validated.
    families : sequence of str, optional
        Restrict the head families (default: all of :data:`HEAD_GRID`).
    n_jobs : int, optional
        Folds fitted in parallel (default 1 below 1,000 rows, where starting workers costs more than it
        saves, else 2).
    fuse : {"concat", "mean"}
        How a feature set of several blocks is combined: one head on the concatenation, or one head per
        block with their probabilities averaged.

    Returns
    -------
    SelectionResult
        ``table`` has one row per candidate; ``estimator`` reads the design matrix
        ``[blocks..., flip blocks...]`` (block order as given).

    Raises
    ------
    FeatxError
        Empty ``blocks``, mismatched row counts, an unknown family, or a class with fewer than 2 images.
    """
    start = time.perf_counter()
    budget = _checked_budget(budget)
    blocks, y, grid = _checked_inputs(blocks, y, flip, fuse, families)
    design = Design.of(blocks, flip)
    sets, scores = _feature_sets(blocks, y, keep_features, random_state)
    estimator = partial(candidate_estimator, design=design,
                        settings=CandidateSettings(fuse, class_weight, random_state))
    scorer = BudgetedScorer(design, y, _folds(y, cv, random_state), estimator, budget, start,
                            n_jobs=(1 if len(y) < 1000 else 2) if n_jobs is None else n_jobs, verbose=verbose)
    _search(scorer, sets, grid, flip is not None)
    best = scorer.best()
    final = estimator(best).fit(design.X, y)
    return SelectionResult(scorer.table(), best, final, scores, time.perf_counter() - start, budget)


# ---- --head auto as an estimator ----------------------------------------------------------------

class AutoHead(ClassifierMixin, BaseEstimator):
    """``--head auto`` as one scikit-learn estimator: :func:`select_head` on the codes as one block.

    Why here and not a kind of :class:`featx.heads.Head`: the search builds heads, so it sits above
    them; :func:`make_head` gives it for the name ``auto``.

    Parameters
    ----------
    class_weight : "balanced", dict or None
        Passed to every candidate head.
    options : dict, optional
        :func:`select_head`'s keywords: ``budget`` (seconds), ``families``, ``cv``, ``keep_features``,
        ``n_jobs``, ``fuse``, ``verbose``.
    random_state : int

    Attributes
    ----------
    classes_ : ndarray
    pipeline_ : BlockHead
        The winner, refit on every row :meth:`fit` was given.
    selection_ : pandas.DataFrame
        One row per candidate (:attr:`SelectionResult.table`).
    chosen_ : dict
        ``{"candidate": name}`` of the winner.
    """

    kind = "auto"  # what Head calls its kind: code that asks a head for it keeps working

    def __init__(self, class_weight=None, options=None, random_state=0):
        self.class_weight = class_weight
        self.options = options
        self.random_state = random_state

    def check_params(self) -> "AutoHead":
        """Validate ``class_weight`` and the options featx checks for every head, before any work; ``self``."""
        check_head_options(self.class_weight, self.options)
        return self

    def fit(self, X, y, validation_data=None):
        """Search and refit on ``X`` ``(n, d)`` float codes and ``y`` ``(n,)`` labels; ``validation_data``
        is ignored (cross-validation chooses).  ValueError with fewer than 2 classes."""
        self.check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got 1 class ({self.classes_[0]!r})")
        opts = dict(self.options or {})
        result = select_head({"codes": X}, y, budget=opts.pop("budget", None), class_weight=self.class_weight,
                             random_state=self.random_state, **opts)
        self.pipeline_ = result.estimator
        self.selection_ = result.table
        self.chosen_ = {"candidate": result.best.name}
        return self

    def frozen(self) -> "AutoHead":
        """``self``: the selection already refits its winner on everything it was given."""
        check_is_fitted(self, "chosen_")
        return self

    def predict_proba(self, X):
        """Class probabilities ``(n, classes)`` float64, columns in ``classes_``."""
        check_is_fitted(self, "pipeline_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.pipeline_.predict_proba(X)

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def make_head(name: str = "logistic", class_weight=None, l2=None, standardize=None, pca=None, random_state=0,
              **options):
    """A fresh, unfitted head for any ``--head`` choice (:data:`featx.vocabulary.HEAD_CHOICES`).

    ``auto``: an :class:`AutoHead` (``options`` are its search's; ``l2``, ``standardize`` and ``pca`` do
    not apply); any other name: :func:`featx.heads.make_head`.  Raises :class:`FeatxError` for an unknown name.
    """
    if name == "auto":
        return AutoHead(class_weight, options or None, random_state)
    return make_named_head(name, class_weight, l2, standardize, pca, random_state, **options)
