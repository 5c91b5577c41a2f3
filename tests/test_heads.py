import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.errors import FeatxError
from featx.heads import HEADS, DenseHead, Head, make_head

KNOWN_FAILURES = {
    # a kNN vote has no class weights to apply; calibrated SVMs on the check's tiny
    # imbalanced data do not always tip the balance the check demands
    "check_class_weight_classifiers": "class weights are not applicable (kNN) or not decisive after calibration",
}


def synthetic_codes(n_per_class=40, dim=64, classes=("cat", "dog", "eel"), seed=0, shift=2.5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_per_class * len(classes), dim)).astype(np.float32)
    y = np.repeat(np.array(classes), n_per_class)
    for i, c in enumerate(classes):
        X[y == c, 4 * i : 4 * i + 4] += shift
    return X, y


@pytest.mark.parametrize("kind", HEADS)
def test_each_head_learns_separable_codes(kind):
    X, y = synthetic_codes()
    options = {"epochs": 40, "hidden": 64, "learning_rate": 1e-3} if kind == "dense" else {}
    head = make_head(kind, **options).fit(X[::2], y[::2])
    assert list(head.classes_) == ["cat", "dog", "eel"]
    assert head.score(X[1::2], y[1::2]) >= 0.9
    proba = head.predict_proba(X[1::2])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (head.predict(X[1::2]) == head.classes_[proba.argmax(1)]).all()


def test_balanced_class_weight_helps_the_minority_class():
    X, y = synthetic_codes(n_per_class=60, shift=0.9, seed=3)
    keep = (y != "eel") | (np.arange(len(y)) % 10 == 0)  # eel: 6 images against 60 and 60
    Xtr, ytr = X[keep], y[keep]
    Xte, yte = synthetic_codes(n_per_class=60, shift=0.9, seed=4)
    plain = make_head("logistic").fit(Xtr, ytr)
    balanced = make_head("logistic", class_weight="balanced").fit(Xtr, ytr)
    recall = lambda m: (m.predict(Xte[yte == "eel"]) == "eel").mean()  # noqa: E731
    assert recall(balanced) > recall(plain)


def test_dense_head_uses_the_validation_split_for_early_stopping():
    X, y = synthetic_codes(shift=1.0)
    noise = np.random.default_rng(1).permutation(y[1::2])  # validation labels the codes cannot predict
    head = make_head("dense", epochs=200, patience=2, hidden=32, learning_rate=1e-3).fit(
        X[::2], y[::2], validation_data=(X[1::2], noise))
    history = head.pipeline_.named_steps["clf"].history_
    assert "val_loss" in history
    assert len(history["loss"]) < 50  # stopped once the validation loss stopped improving


def test_pca_and_l2_options_shape_the_pipeline():
    X, y = synthetic_codes()
    head = make_head("logistic", pca=8, l2=True).fit(X, y)
    names = [name for name, _ in head.pipeline_.steps]
    assert names == ["l2", "scale", "pca", "clf"]
    assert head.pipeline_.named_steps["pca"].n_components_ == 8


def test_unknown_head_is_a_clear_error():
    with pytest.raises(FeatxError, match="unknown head 'forest'.*logistic"):
        make_head("forest")
    with pytest.raises(FeatxError, match="unknown head"):
        Head("forest").fit(*synthetic_codes())


def test_heads_tune_in_grid_search():
    X, y = synthetic_codes()
    search = GridSearchCV(Head("linear_svm"), {"options": [{"C": 0.01}, {"C": 1.0}], "l2": [True, False]}, cv=3)
    search.fit(X, y)
    assert search.best_score_ > 0.9
    assert set(search.best_params_) == {"options", "l2"}


# the API contract of the Keras-backed head; the accuracy checks train dozens of models
DENSE_CHECKS = {
    "check_no_attributes_set_in_init", "check_parameters_default_constructible", "check_get_params_invariance",
    "check_set_params", "check_dont_overwrite_parameters", "check_estimators_unfitted", "check_n_features_in",
    "check_fit2d_1sample", "check_estimators_pickle", "check_fit_check_is_fitted", "check_classifiers_one_label",
    "check_estimators_empty_data_messages", "check_estimators_nan_inf", "check_classifiers_train",
    "check_estimator_cloneable", "check_estimator_repr", "check_estimators_overwrite_params",
}


def _expected(estimator):
    return KNOWN_FAILURES if isinstance(estimator, Head) and estimator.kind != "logistic" else {}


@parametrize_with_checks(
    [Head("logistic"), Head("linear_svm"), Head("rbf_svm"), Head("knn"),
     DenseHead(hidden=32, epochs=10, patience=3, dropout=0.0, learning_rate=3e-2)],
    expected_failed_checks=_expected,
)
def test_sklearn_estimator_checks(estimator, check):
    name = getattr(check, "func", check).__name__
    if isinstance(estimator, DenseHead) and name not in DENSE_CHECKS:
        pytest.skip("each Keras fit costs seconds; the dense head's learning is tested above")
    check(estimator)
