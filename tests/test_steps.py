"""The workflows' named steps, each on its own (no network, no cache): fit-head's plan, design and report,
prediction's row alignment, and the options values.

What it can catch: an option check that moved after the work, keywords routed to the wrong value, a design
matrix whose views or blocks drift from their rows, and the console report losing a figure.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from featx.advise import AdviceRules, advise
from featx.datasets import SplitSpec
from featx.errors import FeatxError
from featx.stats import accuracy_from_counts
from featx.prediction.bundles import aligned_codes
from featx.selection import BlockHead
from featx.training import BaselineOptions, FinetuneOptions, finetune, fit_head, train_baseline
from featx.training.fit import Design, FitOptions, block_estimator, plan_fit
from featx.training.fit_text import fit_report_text


def test_fit_options_take_the_split_and_pass_the_rest_to_extraction():
    o = FitOptions.from_keywords(tta="flip", seed=3, val_fraction=0.1, engine="keras", batch_size=8)
    assert (o.tta, o.split, o.extract) == ("flip", SplitSpec(0.1, 0.2, 3), {"engine": "keras", "batch_size": 8})
    with pytest.raises(FeatxError, match="fraction"):
        FitOptions.from_keywords(test_fraction=1.5)


@pytest.mark.parametrize("head, options, param", [
    ("auto", FitOptions(views=2), "views"),
    ("logistic", FitOptions(tta="flip", views=2), "views"),
    ("logistic", FitOptions(tta="mirror"), "tta"),
    ("logistic", FitOptions(fuse="max"), "fuse"),
    ("tree", FitOptions(), "head"),
])
def test_plan_fit_refuses_before_any_work(head, options, param):
    with pytest.raises(FeatxError) as caught:
        plan_fit("mobilenet_v2", "pre_logits", head, options)
    assert caught.value.param == param


def test_plan_fit_resolves_views_tta_and_names_the_run():
    plan = plan_fit("mobilenet_v2", "pre_logits", "logistic", FitOptions(tta="views"))
    assert plan.options.views == 4 and plan.taps == ["pre_logits"] and plan.label == "logistic+views4"
    plan = plan_fit("mobilenet_v2,efficientnet_lite0", ["stage4"], "dense",
                    FitOptions(tta="flip", fuse="mean", recipe="study"))
    assert plan.backbones == ["mobilenet_v2", "efficientnet_lite0"] and plan.label == "dense+flip+mean-study"


def design(views: np.ndarray | None = None) -> Design:
    """Six images, two blocks of widths 2 and 3 side by side, splits train x4, val, test."""
    a, b = np.arange(12.).reshape(6, 2), np.arange(18.).reshape(6, 3) + 100
    features = SimpleNamespace(views_matrix=lambda taps: views)
    codes = SimpleNamespace(features=features)
    return Design([codes], [np.arange(6)], np.array(list("xyxyxy")),
                  np.array(["train"] * 4 + ["val", "test"]), ["a", "b"], {"a": a, "b": b}, {},
                  [], np.concatenate([a, b], axis=1), 0 if views is None else views.shape[1], ["t"])


def test_design_rows_views_and_blocks_stay_aligned():
    d = design()
    assert d.n == {"train": 4, "val": 1, "test": 1}
    X, y = d.part("val")
    assert X.tolist() == [[8.0, 9.0, 112.0, 113.0, 114.0]] and y.tolist() == ["x"]
    V = np.arange(6 * 2 * 5, dtype=float).reshape(6, 2, 5)
    X, y, Xc, yc = design(V).with_views(["train"])
    assert X.shape == (4, 5) and Xc.shape == (8, 5) and yc.tolist() == list("xxyyxxyy")
    assert Xc[2].tolist() == V[1, 0].tolist()  # image 1's first view follows image 0's two


def test_block_estimator_is_the_plain_head_for_one_block_else_a_block_head():
    plan = plan_fit("mobilenet_v2", "pre_logits", "logistic", FitOptions(fuse="mean"))
    est = block_estimator(plan, design())
    assert isinstance(est, BlockHead) and est.groups == [[(0, 2)], [(2, 5)]] and est.flip_groups is None
    one = design()
    one.names, one.clean = ["a"], {"a": one.clean["a"]}
    assert block_estimator(plan, one) is plan.model


def test_the_report_is_made_from_the_metrics_alone():
    m = {"dataset": "tints", "backbone": "mobilenet_v2", "backbones": ["mobilenet_v2"], "taps": ["pre_logits"],
         "head": "logistic", "views": 0, "fuse": "concat", "tta": "none", "tta_used": "none", "split_id": "s1",
         "n": {"train": 6, "val": 2, "test": 3}, "n_fit": {"train": 6, "val": 2, "test": 0}, "refit": True,
         "chosen": {"C": 0.1}, "accuracy": {"train": 1.0, "val": 0.5, "test": 2 / 3}, "evaluated_on": "test",
         "fit_seconds": 0.5, "extract_seconds": 2.0,
         "per_class": {"red": {"precision": 1.0, "recall": 0.5, "support": 2}},
         "validation": accuracy_from_counts(1, 2, "val")}
    text = fit_report_text(m, {"text": "0.667 [0.208, 0.939] (n=3)", "warning": "small test set"})
    assert "tints: mobilenet_v2/pre_logits -> logistic head (split s1: 6 train, 2 val, 3 test)" in text
    assert "final model trained on train+val (8 images); chosen: C 0.1" in text
    assert "test accuracy 0.667 [0.208, 0.939] (n=3)" in text and "held-out validation accuracy 0.500 [0.095, 0.905] (n=2) (before refit)" in text
    assert "small test set" in text and "red" in text


def test_prediction_keeps_the_images_every_extractor_read_in_the_first_ones_order():
    def feats(paths, offset):
        codes = np.arange(len(paths), dtype=float)[:, None] + offset
        return SimpleNamespace(paths=paths, codes={"t": codes}, flipped=None)

    paths, codes = aligned_codes([feats(["a", "b", "c"], 0), feats(["c", "a"], 10)])
    assert paths == ["a", "c"]
    assert codes[0]["clean"]["t"].ravel().tolist() == [0.0, 2.0] and codes[1]["clean"]["t"].ravel().tolist() == [11.0, 10.0]


@pytest.mark.parametrize("call", [
    lambda tmp: fit_head(tmp, options=FitOptions(), pooling="max"),
    lambda tmp: finetune(tmp, options=FinetuneOptions(), epochs=50),
    lambda tmp: train_baseline(tmp, options=BaselineOptions(), size=16),
    lambda tmp: advise(tmp, rules=AdviceRules(), room=0.5),
])
def test_an_options_value_and_its_fields_as_keywords_are_refused_together(call, tmp_path):
    """Before: the keywords were dropped without a word when options= was given."""
    with pytest.raises(TypeError, match="not both"):
        call(tmp_path)


@pytest.mark.parametrize("split", [{"val_fraction": 0.5}, (0.1, 0.1), "no", 0.5])
def test_a_split_that_is_not_a_split_spec_is_named(split, tmp_path):
    from featx.extract import load_features
    from featx.training import labelled_codes

    for call in (lambda: fit_head(tmp_path, split=split), lambda: labelled_codes(tmp_path, split=split),
                 lambda: load_features(tmp_path, split=split)):
        with pytest.raises(FeatxError) as caught:
            call()
        assert caught.value.param == "split"
    with pytest.raises(TypeError, match="not both"):
        labelled_codes(tmp_path, split=SplitSpec(), seed=2)


@pytest.mark.parametrize("fields, param", [
    ({"val_fraction": "0.2"}, "val_fraction"), ({"test_fraction": None}, "test_fraction"),
    ({"val_fraction": float("nan")}, "val_fraction"), ({"seed": -3}, "seed"), ({"seed": 1.5}, "seed"),
    ({"seed": "abc"}, "seed"), ({"seed": True}, "seed"),
])
def test_split_spec_refuses_what_is_not_a_fraction_or_a_seed(fields, param):
    with pytest.raises(FeatxError) as caught:
        SplitSpec(**fields)
    assert caught.value.param == param
    assert SplitSpec(0.0, 0.5, np.int64(7)).seed == 7
