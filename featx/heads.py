"""Classifier heads on CNN codes, all scikit-learn estimators.

Each head is a :class:`~sklearn.pipeline.Pipeline` of scikit-learn parts:
optional row L2-normalisation, standardisation and PCA, then the classifier.
They work on any 2-D array, not only featx caches, and compose with
``GridSearchCV``.  ``dense`` is the study's head (Dense(1024, relu) ->
softmax, RMSprop), trained in Keras and evaluated in numpy (:class:`DenseHead`).

``--head auto`` is not here: it searches over these heads, so it lives above them
(:class:`featx.selection.AutoHead`, :func:`featx.selection.make_head`); this module imports no
featx module but :mod:`featx.errors` and :mod:`featx.vocabulary`.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.errors import FeatxError
from featx.vocabulary import HEAD_CHOICES, did_you_mean

HEADS = ("logistic", "linear_svm", "rbf_svm", "knn", "dense")

# Per head: (L2-normalise rows, standardise columns).  LinearSVC and kNN work on
# directions (cosine geometry): L2 rows make LinearSVC converge in well under a second.
_DEFAULT_SCALING = {
    "logistic": (False, True),
    "linear_svm": (True, False),
    "rbf_svm": (False, True),
    "knn": (True, False),
    "dense": (False, True),
}


DENSE_RECIPES = ("default", "study")

# The study's head exactly: raw codes, Dense(1024, relu) -> Dropout(0.5) -> softmax, RMSprop(1e-3),
# batch 32, a fixed 20 epochs, no early stopping.  ``recipe="study"`` selects it.
STUDY_DENSE = {"hidden": 1024, "dropout": 0.5, "learning_rate": 1e-3, "epochs": 20, "batch_size": 32,
               "patience": None, "validation_fraction": 0.0}


def _relu_softmax(X, coefs, intercepts):
    """The dense head's forward pass in numpy: (n, d) float -> (n, classes) float64 probabilities."""
    h = np.maximum(X @ coefs[0] + intercepts[0], 0.0)
    z = h @ coefs[1] + intercepts[1]
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class DenseHead(ClassifierMixin, BaseEstimator):
    """The study's head: Dense(hidden, relu) -> Dropout -> softmax, trained with RMSprop in Keras.

    Training needs Keras; prediction does not: after :meth:`fit` the weights
    are numpy arrays (``coefs_``, ``intercepts_``, as scikit-learn's MLP
    stores them) and :meth:`predict_proba` is a numpy forward pass, so a
    bundle with a dense head loads and predicts without TensorFlow.

    Early stopping (``patience`` epochs without a better validation loss;
    ``None`` turns it off and trains all ``epochs``) watches
    ``validation_data`` when :meth:`fit` is given it (featx passes the
    dataset's validation split), else a stratified ``validation_fraction`` of
    the training rows.  ``best_epoch_`` is the epoch it kept: refitting on
    train+val trains that many epochs (:meth:`Head.frozen`).
    """

    def __init__(self, hidden=1024, dropout=0.5, learning_rate=3e-5, epochs=100, batch_size=32,
                 patience=8, validation_fraction=0.1, class_weight=None, random_state=0):
        self.hidden = hidden
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X, y, validation_data=None):
        from featx import _tf

        keras = _tf.keras()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self._encoder = LabelEncoder().fit(y)
        self.classes_ = self._encoder.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"DenseHead needs at least 2 classes, got {len(self.classes_)} class")
        yi = self._encoder.transform(y)
        stopping = self.patience is not None
        if not stopping:
            Xv = yv = None
        elif validation_data is not None:
            Xv, yv = validation_data
            Xv = np.asarray(Xv, dtype=np.float32)
            yv = self._encoder.transform(yv)
        elif self.validation_fraction and np.bincount(yi).min() >= 4:
            size = max(len(self.classes_), int(round(self.validation_fraction * len(yi))))
            X, Xv, yi, yv = train_test_split(X, yi, test_size=size, random_state=self.random_state, stratify=yi)
        else:
            Xv = yv = None
        weights = None
        if self.class_weight is not None:
            w = compute_class_weight(self.class_weight, classes=np.arange(len(self.classes_)), y=yi) \
                if self.class_weight == "balanced" else [self.class_weight.get(c, 1.0) for c in self.classes_]
            weights = {i: float(v) for i, v in enumerate(w)}
        keras.utils.set_random_seed(self.random_state)
        model = keras.Sequential([
            keras.Input((X.shape[1],)),
            keras.layers.Dense(self.hidden, activation="relu", name="dense"),
            keras.layers.Dropout(self.dropout, name="dropout"),
            keras.layers.Dense(len(self.classes_), activation="softmax", name="softmax"),
        ])
        model.compile(keras.optimizers.RMSprop(self.learning_rate), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        callbacks = []
        if Xv is not None:
            callbacks.append(keras.callbacks.EarlyStopping(patience=self.patience, restore_best_weights=True,
                                                           monitor="val_loss"))
        history = model.fit(X, yi, validation_data=None if Xv is None else (Xv, yv), epochs=self.epochs,
                            batch_size=self.batch_size, class_weight=weights, callbacks=callbacks,
                            verbose=0, shuffle=True)
        self.history_ = {k: [float(v) for v in vals] for k, vals in history.history.items()}
        self.n_iter_ = len(history.history["loss"])
        if "val_loss" in self.history_:
            self.best_epoch_ = int(np.argmin(self.history_["val_loss"])) + 1
        else:
            self.best_epoch_ = self.n_iter_
        dense, softmax = model.get_layer("dense"), model.get_layer("softmax")
        self.coefs_ = [np.asarray(dense.kernel, dtype=np.float32), np.asarray(softmax.kernel, dtype=np.float32)]
        self.intercepts_ = [np.asarray(dense.bias, dtype=np.float32), np.asarray(softmax.bias, dtype=np.float32)]
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "coefs_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return _relu_softmax(X.astype(np.float64), self.coefs_, self.intercepts_)

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class LogisticCV(LogisticRegressionCV):
    """``LogisticRegressionCV`` that picks C by log-loss (smooth on small data, where
    accuracy ties) yet scores by accuracy, as every scikit-learn classifier does."""

    def score(self, X, y, sample_weight=None):
        return ClassifierMixin.score(self, X, y, sample_weight=sample_weight)


SVM_C_GRID = {"linear_svm": (0.01, 0.1, 1.0, 10.0), "rbf_svm": (1.0, 10.0, 100.0)}
#: C when none is given or chosen (an SVM on too few images to choose; logistic with one image of a class).
DEFAULT_C = {"logistic": 1.0, "linear_svm": 1.0, "rbf_svm": 10.0}


class Head(ClassifierMixin, BaseEstimator):
    """A featx head: feature scaling plus one classifier, as one scikit-learn estimator.

    ``kind``: logistic (C chosen by cross-validated log-loss), linear_svm and
    rbf_svm (C chosen by cross-validated accuracy over :data:`SVM_C_GRID`,
    then probabilities calibrated), knn or dense.  (``auto``, the
    cross-validated selection over these, is :class:`featx.selection.AutoHead`.)
    ``l2`` and ``standardize`` default
    per kind (None); ``pca`` reduces to that many dimensions; ``options`` go to
    the classifier (for instance ``{"epochs": 20}`` or ``{"recipe": "study"}``
    for dense, ``{"C": 0.1}`` to fix an SVM's or the logistic head's C).
    Cross-validation folds adapt to the
    smallest class, so heads also fit on a handful of images.

    After :meth:`fit`, ``chosen_`` holds what validation chose (``C``, or a
    dense head's ``epochs``) and :meth:`frozen` returns an unfitted copy with
    those choices fixed: fitting it on train+val is the refit that
    ``GridSearchCV(refit=True)`` does.
    """

    def __init__(self, kind="logistic", class_weight=None, l2=None, standardize=None, pca=None, options=None,
                 random_state=0):
        self.kind = kind
        self.class_weight = class_weight
        self.l2 = l2
        self.standardize = standardize
        self.pca = pca
        self.options = options
        self.random_state = random_state

    def _check(self):
        check_head_name(self.kind)
        check_head_options(self.class_weight, self.options)

    def check_params(self) -> "Head":
        """Validate ``kind`` and the options now, before any work (building the pipeline once); ``self``.

        Raises :class:`~featx.errors.FeatxError` (or the classifier's ``TypeError`` for an unknown option).
        """
        self._pipeline(2, 2)
        return self

    def _scaling_steps(self) -> list:
        default_l2, default_std = _DEFAULT_SCALING[self.kind]
        if self.kind == "dense" and (self.options or {}).get("recipe") == "study":
            default_std = False  # the study trained on raw codes
        steps = []
        if default_l2 if self.l2 is None else self.l2:
            steps.append(("l2", Normalizer()))
        if default_std if self.standardize is None else self.standardize:
            steps.append(("scale", StandardScaler()))
        if self.pca:
            steps.append(("pca", PCA(n_components=self.pca, random_state=self.random_state)))
        return steps

    def _pipeline(self, smallest_class: int, n_samples: int) -> Pipeline:
        self._check()
        steps = self._scaling_steps()
        steps.append(("clf", self._classifier(dict(self.options or {}), smallest_class, n_samples)))
        return Pipeline(steps)

    def _svm(self, opts, C):
        cw, seed = self.class_weight, self.random_state
        if self.kind == "linear_svm":
            return LinearSVC(C=C, class_weight=cw, random_state=seed, **opts)
        return SVC(kernel="rbf", C=C, gamma="scale", class_weight=cw, random_state=seed, **opts)

    def _classifier(self, opts, smallest, n_samples):
        cw, seed = self.class_weight, self.random_state
        folds = max(2, min(5, smallest))
        if self.kind == "logistic":
            n_jobs, tol = opts.pop("n_jobs", -1), opts.pop("tol", 1e-3)
            if "C" in opts or smallest < 2:  # one image of a class: no fold could hold it out, C stays 1
                return LogisticRegression(C=opts.pop("C", DEFAULT_C["logistic"]), class_weight=cw, max_iter=2000,
                                          tol=tol, random_state=seed, **opts)
            return LogisticCV(
                Cs=opts.pop("Cs", np.logspace(-4, 1, 6)), cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                class_weight=cw, max_iter=2000, tol=tol, n_jobs=n_jobs,
                scoring="neg_log_loss", l1_ratios=(0.0,), use_legacy_attributes=False, random_state=seed, **opts)
        if self.kind in ("linear_svm", "rbf_svm"):
            if smallest < 2:
                raise ValueError("SVM heads calibrate probabilities by cross-validation: every class needs at "
                                 "least 2 training images (a class has 1); add images, or use --head logistic, "
                                 "knn or dense")
            C = opts.pop("C", DEFAULT_C[self.kind])
            return CalibratedClassifierCV(self._svm(opts, C), cv=min(3, smallest), ensemble=False)
        if self.kind == "knn":
            # a vote has nothing to re-weight: class_weight does not apply to kNN
            return KNeighborsClassifier(n_neighbors=min(opts.pop("n_neighbors", 5), n_samples), weights="distance",
                                        **opts)
        recipe = opts.pop("recipe", "default")
        settings = {**(STUDY_DENSE if recipe == "study" else {}), **opts}
        return DenseHead(class_weight=cw, random_state=seed, **settings)

    def _tune_svm_C(self, X, y, smallest):
        """C by cross-validated accuracy on the uncalibrated SVM (calibration does not move the argmax much)."""
        from sklearn.model_selection import GridSearchCV

        opts = {k: v for k, v in (self.options or {}).items() if k != "C"}
        search = GridSearchCV(Pipeline(self._scaling_steps() + [("clf", self._svm(opts, 1.0))]),
                              {"clf__C": list(SVM_C_GRID[self.kind])},
                              cv=StratifiedKFold(min(3, smallest), shuffle=True, random_state=self.random_state))
        search.fit(X, y)
        return float(search.best_params_["clf__C"])

    def fit(self, X, y, validation_data=None):
        """Fit the scaling and the classifier on CNN codes.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
            CNN codes (any float dtype; computed in float64).
        y : array-like, shape (n_samples,)
            Class labels; at least two classes.
        validation_data : tuple (X_val, y_val), optional
            Drives a dense head's early stopping; ignored by the other kinds.

        Returns
        -------
        self : Head

        Raises
        ------
        ValueError
            Fewer than two classes, an unknown ``kind`` or inconsistent shapes.
        """
        self._check()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, counts = np.unique(y, return_counts=True)
        if len(self.classes_) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got 1 class ({self.classes_[0]!r})")
        smallest = int(counts.min())
        self.chosen_ = {}
        options = dict(self.options or {})
        if self.kind in SVM_C_GRID and "C" not in options and smallest >= 3:
            options["C"] = self._tune_svm_C(X, y, smallest)
            self.chosen_["C"] = options["C"]
        steps = self._scaling_steps() + [("clf", self._classifier(options, smallest, len(y)))]
        pipeline = Pipeline(steps)
        if self.kind == "dense" and validation_data is not None:
            Xv, yv = validation_data
            prefix = Pipeline(pipeline.steps[:-1]) if len(pipeline.steps) > 1 else None
            if prefix is not None:
                Xv = prefix.fit(X, y).transform(np.asarray(Xv, dtype=np.float64))
            pipeline.fit(X, y, clf__validation_data=(Xv, yv))
        else:
            pipeline.fit(X, y)
        clf = pipeline.steps[-1][1]
        if isinstance(clf, LogisticCV):
            self.chosen_["C"] = float(np.ravel(clf.C_)[0])
        if isinstance(clf, DenseHead) and clf.patience is not None:
            self.chosen_["epochs"] = int(clf.best_epoch_)
        self.pipeline_ = pipeline
        return self

    def frozen(self) -> "Head":
        """An unfitted copy with what validation chose fixed (C, epochs): the model to refit on train+val."""
        check_is_fitted(self, "chosen_")
        options = {**(self.options or {}), **self.chosen_}
        if self.kind == "dense" and "epochs" in self.chosen_:
            options.update(patience=None, validation_fraction=0.0)
        return Head(self.kind, self.class_weight, self.l2, self.standardize, self.pca, options, self.random_state)

    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
            CNN codes with as many features as seen in :meth:`fit`.

        Returns
        -------
        ndarray, shape (n_samples, n_classes), float64
            Rows sum to 1; columns follow ``classes_``.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before :meth:`fit`.
        ValueError
            A different number of features than in :meth:`fit`.
        """
        check_is_fitted(self, "pipeline_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.pipeline_.predict_proba(X)

    def predict(self, X):
        """Most probable class per row: ``(n_samples,)``, values from ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


def make_head(name: str = "logistic", class_weight=None, l2=None, standardize=None, pca=None, random_state=0,
              **options) -> Head:
    """A fresh, unfitted :class:`Head` of a named kind (validated when fitted).

    ``auto`` is made by :func:`featx.selection.make_head`, which takes every ``--head`` choice.
    """
    check_head_name(name)
    return Head(name, class_weight, l2, standardize, pca, options or None, random_state)


def check_head_name(name) -> None:
    """Refuse a name that is no head of this module (:data:`HEADS`): a :class:`~featx.errors.FeatxError`
    naming ``head``.  ``auto`` gets its own message: it is made above this module."""
    if name == "auto":
        raise FeatxError("head 'auto' is the cross-validated search over the heads: make it with "
                         "featx.selection.make_head('auto') or featx.selection.AutoHead", param="head")
    if name not in HEADS:
        raise FeatxError(f"unknown head {name!r}{did_you_mean(name, HEAD_CHOICES)}; choose from "
                         f"{', '.join(HEAD_CHOICES)}", param="head")


def check_head_options(class_weight, options) -> None:
    """Refuse a ``class_weight`` other than None, ``"balanced"`` or a dict, and an unknown dense
    ``recipe`` in ``options``: a :class:`~featx.errors.FeatxError` naming the parameter.

    Shared by :class:`Head` and :class:`featx.selection.AutoHead`: the checks every head makes before work.
    """
    if class_weight not in (None, "balanced") and not isinstance(class_weight, dict):
        raise FeatxError(f"expected 'balanced' or None, got {class_weight!r}", param="class_weight")
    recipe = (options or {}).get("recipe", "default")
    if recipe not in DENSE_RECIPES:
        raise FeatxError(f"expected one of {', '.join(DENSE_RECIPES)}, got {recipe!r}", param="recipe")


#: Head kinds that choose their regularisation (C) by cross-validation inside ``fit``.
CV_CHOSEN = ("logistic", "linear_svm", "rbf_svm")


def fit_with_copies(head, X, y, X_copies, y_copies, validation_data=None):
    """Fit ``head`` on the rows ``X`` plus augmented copies of them (mirrored or augmented views).

    Why: a head that picks C by cross-validation inside ``fit`` would, on originals and copies
    together, score an image while its mirror or view sits in the training folds; those folds
    reward weak regularisation (on flowers5 a linear SVM trained on both views lost 3 points of test
    accuracy to one trained on the originals alone).  So such a head chooses on the originals, and
    the choice, frozen (:meth:`Head.frozen`), is trained on originals and copies.

    C stays a penalty *per image*: logistic regression and both SVMs minimise
    ``C * sum(loss over rows) + ||w||^2 / 2``, so m copies of n images would weaken the penalty
    (m + n) / n times.  The model trained on originals and copies uses ``C * n / (n + m)``, which is
    the same as giving every row the weight ``n / (n + m)``: with exact copies the classifier is the
    one the originals alone give (an SVM's probability calibration, 3-fold inside the head, still
    sees copies, so its probabilities can differ).  ``chosen_`` keeps the C chosen (or given) per image.  A dense head
    (validated on other images) and kNN (nothing chosen) train on all rows at once.

    Parameters
    ----------
    head : Head or estimator
        Unfitted; estimators other than :class:`Head` are fitted on all rows.
    X : array of shape (n, d); y : array of shape (n,)
        The original rows.
    X_copies : array of shape (m, d); y_copies : array of shape (m,)
        Their copies (any number per original, in any order).
    validation_data : tuple (X_val, y_val), optional
        Separate images, for a dense head's early stopping.

    Returns
    -------
    The fitted estimator: ``head`` itself, or a copy trained with the scaled C whose ``chosen_`` is
    what the originals chose.
    """
    X, X_copies, y_copies = np.asarray(X), np.asarray(X_copies), np.asarray(y_copies)
    if len(X_copies) != len(y_copies):
        raise ValueError(f"fit_with_copies: {len(X_copies)} copies but {len(y_copies)} labels for them")
    if len(y_copies) and X_copies.shape[1:] != X.shape[1:]:
        raise ValueError(f"fit_with_copies: copies have shape {X_copies.shape}, the rows {X.shape}: "
                         "a copy needs the same columns")
    if not len(y_copies):
        return head.fit(X, y, validation_data=validation_data) if isinstance(head, Head) else head.fit(X, y)
    X_all = np.concatenate([X, X_copies])
    y_all = np.concatenate([np.asarray(y), y_copies])
    if not isinstance(head, Head):
        return head.fit(X_all, y_all)
    if head.kind not in CV_CHOSEN:
        return head.fit(X_all, y_all, validation_data=validation_data)
    options = dict(head.options or {})
    if "C" in options:
        chosen = {}
    else:
        chosen = dict(head.fit(X, y).chosen_)
        options["C"] = chosen.get("C", DEFAULT_C[head.kind])  # too few images to choose: the default
    per_image_C = options["C"]
    options["C"] = per_image_C * len(y) / len(y_all)
    trained = clone(head).set_params(options=options).fit(X_all, y_all)
    # the C per image, so that frozen() refits (on more rows and their copies) with the same penalty
    trained.chosen_ = {**chosen, "C": per_image_C}
    return trained
