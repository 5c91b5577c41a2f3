"""Classifier heads on CNN codes, all scikit-learn estimators.

Each head is a :class:`~sklearn.pipeline.Pipeline` of scikit-learn parts:
optional row L2-normalisation, standardisation and PCA, then the classifier.
They work on any 2-D array, not only featx caches, and compose with
``GridSearchCV``.  ``dense`` is the study's head (Dense(1024, relu) ->
softmax, RMSprop) as a Keras model wrapped in :class:`DenseHead`.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.errors import FeatxError

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


class DenseHead(ClassifierMixin, BaseEstimator):
    """The study's head: Dense(hidden, relu) -> Dropout -> softmax, trained with RMSprop.

    Early stopping watches ``validation_data`` when :meth:`fit` is given it
    (featx passes the dataset's validation split), else a stratified
    ``validation_fraction`` of the training rows.
    """

    def __init__(self, hidden=1024, dropout=0.5, learning_rate=1e-3, epochs=100, batch_size=32,
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
            raise ValueError(f"DenseHead needs at least 2 classes, got {len(self.classes_)}")
        yi = self._encoder.transform(y)
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = np.asarray(Xv, dtype=np.float32)
            yv = self._encoder.transform(yv)
        elif self.validation_fraction and len(y) >= 10:
            stratify = yi if np.bincount(yi).min() >= 2 else None
            X, Xv, yi, yv = train_test_split(X, yi, test_size=self.validation_fraction,
                                             random_state=self.random_state, stratify=stratify)
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
        self.model_ = model
        self.history_ = {k: [float(v) for v in vals] for k, vals in history.history.items()}
        self.n_iter_ = len(history.history["loss"])
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return np.asarray(self.model_.predict(X, batch_size=256, verbose=0), dtype=np.float64)

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class LogisticCV(LogisticRegressionCV):
    """``LogisticRegressionCV`` that picks C by log-loss (smooth on small data, where
    accuracy ties) yet scores by accuracy, as every scikit-learn classifier does."""

    def score(self, X, y, sample_weight=None):
        return ClassifierMixin.score(self, X, y, sample_weight=sample_weight)


def make_head(name: str = "logistic", class_weight=None, l2: bool | None = None, standardize: bool | None = None,
              pca: int | None = None, random_state: int = 0, **params) -> Pipeline:
    """A fresh, unfitted head.  ``l2``/``standardize`` default per head (see above)."""
    if name not in HEADS:
        raise FeatxError(f"--head: unknown head {name!r}; choose from {', '.join(HEADS)}")
    if class_weight not in (None, "balanced") and not isinstance(class_weight, dict):
        raise FeatxError(f"--class-weight: expected 'balanced' or nothing, got {class_weight!r}")
    default_l2, default_std = _DEFAULT_SCALING[name]
    steps = []
    if default_l2 if l2 is None else l2:
        steps.append(("l2", Normalizer()))
    if default_std if standardize is None else standardize:
        steps.append(("scale", StandardScaler()))
    if pca:
        steps.append(("pca", PCA(n_components=pca, random_state=random_state)))
    steps.append(("clf", _classifier(name, class_weight, random_state, params)))
    return Pipeline(steps)


def _classifier(name, class_weight, random_state, params):
    if name == "logistic":
        return LogisticCV(
            Cs=params.pop("Cs", np.logspace(-4, 1, 6)), cv=params.pop("cv", 5), class_weight=class_weight,
            max_iter=2000, tol=params.pop("tol", 1e-3), n_jobs=params.pop("n_jobs", -1), scoring="neg_log_loss",
            l1_ratios=(0.0,), use_legacy_attributes=False, random_state=random_state, **params)
    if name == "linear_svm":
        svm = LinearSVC(C=params.pop("C", 1.0), class_weight=class_weight, random_state=random_state, **params)
        return CalibratedClassifierCV(svm, cv=3, ensemble=False)  # probabilities for CSVs and --top
    if name == "rbf_svm":
        svm = SVC(kernel="rbf", C=params.pop("C", 10.0), gamma="scale", class_weight=class_weight,
                  random_state=random_state, **params)
        return CalibratedClassifierCV(svm, cv=3, ensemble=False)
    if name == "knn":
        # a vote has nothing to re-weight: class_weight does not apply to kNN
        return KNeighborsClassifier(n_neighbors=params.pop("n_neighbors", 5), weights="distance", **params)
    return DenseHead(class_weight=class_weight, random_state=random_state, **params)


def fit_head(head: Pipeline, X, y, validation_data=None) -> Pipeline:
    """Fit ``head``, adapting cross-validation folds to the smallest class and
    passing the validation split to a dense head for early stopping."""
    clf = head.named_steps["clf"]
    counts = np.unique(y, return_counts=True)[1]
    if len(counts) < 2:
        raise FeatxError(f"the training split has {len(counts)} class; a classifier needs at least 2")
    smallest = int(counts.min())
    if isinstance(clf, LogisticCV):
        folds = min(5, smallest)
        clf.set_params(cv=StratifiedKFold(folds, shuffle=True, random_state=0) if folds >= 2 else 2)
    if isinstance(clf, CalibratedClassifierCV):
        if smallest < 2:
            raise FeatxError("SVM heads calibrate probabilities by cross-validation: every class needs "
                             "at least 2 training images")
        clf.set_params(cv=min(3, smallest))
    if isinstance(clf, KNeighborsClassifier):
        clf.set_params(n_neighbors=min(clf.n_neighbors, len(y)))
    if isinstance(clf, DenseHead) and validation_data is not None:
        Xv, yv = validation_data
        prefix = Pipeline(head.steps[:-1]) if len(head.steps) > 1 else None
        if prefix is not None:
            prefix.fit(X, y)
            Xv = prefix.transform(Xv)
        return head.fit(X, y, clf__validation_data=(Xv, yv))
    return head.fit(X, y)
