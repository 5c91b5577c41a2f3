"""The notebook API without surprises: arrays are attributes, labels are class names everywhere, and every
public object prints a short repr (no arrays dumped).

What it can catch: ``Features.X`` turned back into a method (scikit-learn then refuses a bound method),
``load_features`` returning integer labels where ``image_paths`` returns names, a dataclass repr that dumps
paths, arrays or a metrics dict."""

import numpy as np
import pytest
from sklearn.model_selection import cross_val_score

from newuser import newuser  # noqa: F401 -- the shared new user's folder (a fixture)
from featx.bundle import load_bundle
from featx.datasets import discover
from featx.extract import extract, load_features
from featx.heads import Head
from featx.sklearn_api import image_paths
from featx.training import fit_head

MAX_REPR = 200
TAPS = ("stage3",)  # 32 numbers per image: the heads fit in a blink


@pytest.fixture(scope="module")
def data(newuser):  # noqa: F811
    return newuser / "photos"


@pytest.fixture(scope="module")
def feats(data, newuser):  # noqa: F811
    return load_features(data, taps=TAPS, cache_dir=newuser / "cache", extract_missing=False)


def test_X_is_an_array_that_scikit_learn_takes(feats):
    assert isinstance(feats.X, np.ndarray) and feats.X.shape == (24, 32) and feats.X.dtype == np.float32
    scores = cross_val_score(Head("logistic"), feats.X, feats.labels, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.6  # the colour cast carries the class
    np.testing.assert_array_equal(feats.matrix("stage3"), feats.X)
    assert Features_doc_mentions_shapes()


def Features_doc_mentions_shapes():
    from featx.extract import Features
    return "shape (n_images, n_features)" in Features.__doc__ and "(n_images" in Features.X.__doc__


def test_labels_are_class_names_as_image_paths_returns_them(data, feats):
    paths, labels = image_paths(data, return_labels=True)
    assert feats.labels.dtype.kind == "U" and set(feats.labels) == {"blue", "green", "red"}
    by_path = dict(zip(map(str, paths), labels))
    assert [by_path[str(p)] for p in feats.paths] == list(feats.labels)
    assert feats.class_names == ["blue", "green", "red"]  # the class order, as a model's columns
    np.testing.assert_array_equal(np.asarray(feats.class_names)[feats.y], feats.labels)


def test_views_without_views_is_one_clear_error(feats):
    from featx.errors import FeatxError
    with pytest.raises(FeatxError, match="views"):
        feats.X_views


def test_public_objects_have_short_reprs(data, feats, tmp_path):
    run = fit_head(data, head="logistic", taps=TAPS, cache_dir=feats.cache_file.parent, out_dir=tmp_path / "run")
    objects = [feats, discover(data), feats.split_report, extract(data, cache_dir=feats.cache_file.parent),
               run, load_bundle(run.model), Head("rbf_svm")]
    for obj in objects:
        text = repr(obj)
        assert len(text) <= MAX_REPR and "array(" not in text and "\n" not in text, text
    assert repr(feats).startswith("Features(24 images, mobilenet_v2")
    assert "test " in repr(run) and "(n=" in repr(run)
