import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from conftest import make_photo, tinted, write_image
from featx.advise import advise
from featx.bundle import load_bundle, save_bundle
from featx.cli import main
from featx.datasets import assign_splits, load_split
from featx.errors import FeatxError
from featx.prediction import predict
from featx.training import fit_head, sweep
from featx.sklearn_api import FeatureExtractor




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours") / "colours"
    for c, name in enumerate(("red", "green", "blue")):
        for i in range(8):
            write_image(root / name / f"{name}{i}.jpg", tinted(10 * c + i, c))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def fitted(data, cache, tmp_path_factory):
    return fit_head(data, cache_dir=cache, out_dir=tmp_path_factory.mktemp("out"))


# ---- splits -------------------------------------------------------------------

def test_split_is_stratified_reproducible_and_stored(tmp_path):
    keys = [f"{i:032x}" for i in range(60)]
    labels = np.repeat([0, 1, 2], 20)
    split, sid = assign_splits(keys, labels, store=tmp_path)
    for part, total in (("test", 12), ("val", 10)):  # 20% of 60, then 20% of the remaining 48
        per_class = [(labels[split == part] == c).sum() for c in range(3)]
        assert sum(per_class) == total and max(per_class) - min(per_class) <= 1, part
    again, sid2 = assign_splits(keys[::-1], labels[::-1], store=tmp_path)
    assert sid == sid2 and (again[::-1] == split).all()  # order of the files does not matter
    stored = load_split(tmp_path, sid)["assignments"]
    assert [stored[k] for k in keys] == list(split)
    other, sid3 = assign_splits(keys, labels, seed=1)
    assert sid3 != sid and (other != split).any()


def test_split_folders_and_val_as_test():
    keys = [f"{i:032x}" for i in range(40)]
    labels = np.repeat([0, 1], 20)
    given = np.array(["train"] * 15 + ["val"] * 5 + ["train"] * 15 + ["val"] * 5)
    split, _ = assign_splits(keys, labels, given=given)
    assert (split[given == "val"] == "test").all()  # the given val folder is held out for testing
    assert (split == "val").sum() == 6 and set(split[given == "train"]) == {"train", "val"}


def test_too_few_images_per_class_is_a_clear_error():
    with pytest.raises(FeatxError, match="class 1 has 2 training image.*at least 3"):
        assign_splits(["a", "b", "c", "d", "e"], [0, 0, 0, 1, 1])


# ---- fit-head, bundle, predict ---------------------------------------------------------

def test_fit_head_writes_bundle_metrics_plot_and_runs_row(fitted, cache):
    m = fitted.metrics
    assert m["n"] == {"train": 15, "val": 4, "test": 5}  # 20% test, then 20% of the rest
    assert m["accuracy"]["test"] >= 0.75  # colour casts are easy for ImageNet codes
    assert set(m["per_class"]) == {"red", "green", "blue"}
    assert fitted.bundle.exists() and (fitted.out_dir / "confusion.png").stat().st_size > 1000
    assert json.loads((fitted.out_dir / "metrics.json").read_text())["split_id"] == m["split_id"]
    runs = pd.read_csv(cache / "runs.csv")
    assert runs.iloc[-1]["route"] == "cached" and runs.iloc[-1]["split_id"] == m["split_id"]
    assert "test accuracy" in fitted.report and "(n=5)" in fitted.report and "per class" in fitted.report


def test_second_head_reuses_the_cache_and_split(data, cache, fitted, tmp_path, monkeypatch):
    import featx.engines

    def no_network(*a, **k):
        raise AssertionError("the backbone ran again")

    monkeypatch.setattr(featx.engines, "make_engine", no_network)  # extract imports it when it needs one
    other = fit_head(data, cache_dir=cache, head="knn", out_dir=tmp_path)
    assert other.metrics["split_id"] == fitted.metrics["split_id"]


def test_bundle_round_trip_gives_identical_predictions(fitted, data, tmp_path):
    bundle = load_bundle(fitted.bundle)
    X = np.random.default_rng(0).normal(size=(5, 1280)).astype(np.float32)
    copy = save_bundle(bundle, tmp_path / "copy.featx")
    np.testing.assert_array_equal(load_bundle(copy).predict_proba(X), bundle.predict_proba(X))
    assert bundle.class_names == ["blue", "green", "red"]
    assert bundle.extractor["backbone"] == "mobilenet_v2" and bundle.split_id == fitted.metrics["split_id"]


def test_tampered_or_foreign_bundle_is_refused(fitted, tmp_path, monkeypatch):
    data = bytearray(fitted.bundle.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "bad.featx"
    bad.write_bytes(bytes(data))
    with pytest.raises(FeatxError, match="refuses it.*--trust-bundle"):
        load_bundle(bad)
    monkeypatch.setenv("FEATX_HOME", str(tmp_path / "someone-else"))
    with pytest.raises(FeatxError, match="not written by featx for this user"):
        load_bundle(fitted.bundle)
    assert load_bundle(fitted.bundle, trust=True).class_names == ["blue", "green", "red"]


def test_predict_csv_format(fitted, data, cache, tmp_path):
    images = [data / "red" / "red0.jpg", data / "blue"]
    out = tmp_path / "pred.csv"
    table = predict(fitted.bundle, images, top=2, out=out, cache_dir=cache)
    csv = pd.read_csv(out)
    assert list(csv.columns) == ["file", "id", "predicted", "probability", "top2", "top2_prob",
                                 "p_blue", "p_green", "p_red"]  # top1 is `predicted`: no duplicate column
    assert len(csv) == 9 and csv.loc[0, "id"] == "red0"
    np.testing.assert_allclose(csv[["p_blue", "p_green", "p_red"]].sum(axis=1), 1.0, atol=1e-5)
    assert (csv["probability"] >= csv["top2_prob"]).all() and (csv["predicted"] != csv["top2"]).all()
    assert (table["predicted"] == csv["predicted"]).all()


def test_predict_cli_and_bad_bundles(fitted, data, cache, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(fitted.bundle), str(data / "green"), "--out", str(out), "--cache", str(cache)]) == 0
    assert len(pd.read_csv(out)) == 8
    capsys.readouterr()
    junk = tmp_path / "junk.featx"
    junk.write_bytes(b"not a bundle")
    assert main(["predict", str(junk), str(data / "green")]) == 2
    assert "not a featx bundle" in capsys.readouterr().err


def test_predict_on_the_training_folder_warns_that_its_accuracy_is_not_held_out(fitted, data, cache, tmp_path,
                                                                                capsys):
    """The whole dataset holds the model's train/val images: predict's accuracy on it must say so, and a
    folder of test images alone must not (the count comes from the stored split, by content)."""
    from featx.training import labelled_codes

    assert main(["predict", str(fitted.bundle), str(data), "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    n = fitted.metrics["n"]
    assert f"warning: {n['train'] + n['val']} of these {sum(n.values())} images were in the model's own train/val" \
        in out, out
    codes = labelled_codes(data, cache_dir=cache)
    held_out = tmp_path / "held-out"
    for path, part, label in zip(codes.features.paths, codes.split, codes.y):
        if part == "test":
            (held_out / label).mkdir(parents=True, exist_ok=True)
            (held_out / label / path.name).write_bytes(path.read_bytes())
    assert main(["predict", str(fitted.bundle), str(held_out), "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "accuracy against the folder names" in out and "train/val split" not in out


def test_bundle_for_other_weights_is_refused(fitted, data, cache, tmp_path):
    bundle = load_bundle(fitted.bundle)
    bundle.extractor = {**bundle.extractor, "backbone": "efficientnet_lite0"}  # its weights differ
    moved = save_bundle(bundle, tmp_path / "other.featx")
    with pytest.raises(FeatxError, match="trained on efficientnet_lite0 weights .* would not match"):
        predict(moved, [data / "red"], cache_dir=cache)


# ---- CLI errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--taps", "stage9"], "no tap 'stage9'"),
    (["--head", "forest"], "unknown head 'forest'"),
])
def test_fit_head_cli_errors(data, cache, argv, message, capsys):
    assert main(["fit-head", str(data), "--cache", str(cache), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_one_class_and_empty_folder(tmp_path, capsys):
    for i in range(4):
        write_image(tmp_path / "one" / "only" / f"{i}.jpg", make_photo(i))
    assert main(["fit-head", str(tmp_path / "one"), "--cache", str(tmp_path / "c")]) == 2
    assert "found 1 class ('only')" in capsys.readouterr().err
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    assert main(["fit-head", str(tmp_path / "empty"), "--cache", str(tmp_path / "c")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_fit_head_cli_prints_metrics(data, cache, tmp_path, capsys):
    assert main(["fit-head", str(data), "--cache", str(cache), "--head", "linear_svm", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "linear_svm head" in out and "test accuracy" in out and "bundle:" in out


# ---- sweep, advise ------------------------------------------------------------------------------

def test_sweep_takes_every_head_choice_auto_included(data, cache, tmp_path):
    """Issue 23's restructure once built sweep's heads with featx.heads.make_head, which has no auto."""
    table = sweep(data, taps=["pre_logits"], head="auto", cache_dir=cache, out_dir=tmp_path)
    assert list(table["tap"]) == ["pre_logits"] and 0 <= table["test_acc"].iloc[0] <= 1


def test_sweep_reports_every_tap(data, cache, tmp_path):
    table = sweep(data, taps=["stage2", "stage4", "pre_logits"], cache_dir=cache, out_dir=tmp_path)
    assert list(table["tap"]) == ["stage2", "stage4", "pre_logits"]
    assert list(table["stride"]) == [4, 16, 32] and list(table["dim"]) == [24, 96, 1280]
    n_test, n_val = 5, 4  # the stored split of 24 images (see test_fit_head_writes_bundle_metrics_plot_and_runs_row)
    for _, row in table.iterrows():  # accuracies are counts over the split, not any number in [0, 1]
        assert row["test_acc"] * n_test == pytest.approx(round(row["test_acc"] * n_test)), row["tap"]
        assert row["val_acc"] * n_val == pytest.approx(round(row["val_acc"] * n_val)), row["tap"]
    # colour casts are easy: the top codes get at least 4 of the 5 test images (chance: 1 in 3)
    assert table.set_index("tap").loc["pre_logits", "test_acc"] >= 0.8
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    saved = pd.read_csv(tmp_path / "sweep.csv")
    np.testing.assert_allclose(saved["test_acc"], table["test_acc"], atol=1e-4)


def test_advise_places_the_dataset_in_a_case(data, cache):
    from featx.backbones.registry import get_backbone
    from featx.images import load_image

    advice = advise(data, cache_dir=cache)
    assert advice.evidence["images"] == 24 and advice.evidence["median_per_class"] == 8
    # the similarity evidence is the ImageNet classifier's mean top-1 probability, computed here directly
    spec = get_backbone("mobilenet_v2")
    paths = sorted(data.glob("*/*.jpg"))
    logits = spec.feature_model(["logits"]).predict(spec.preprocess([load_image(p) for p in paths]), verbose=0)
    logits = np.asarray(logits["logits"], np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert advice.evidence["imagenet_confidence"] == pytest.approx(p.max(axis=1).mean(), abs=1e-3)
    # the quadrant explains the measurement (issue 16): "similar" when the best probed tap is a top tap
    from featx.advise import TOP_TAPS

    similar = advice.evidence["best_tap"] in TOP_TAPS
    assert advice.case == f"small, {'similar' if similar else 'different'}"
    assert f"--taps {advice.evidence['best_tap']}" in advice.commands[0]
    text = advice.text()
    assert "recommended:" in text and "ImageNet classifier" in text
    large = advise(data, cache_dir=cache, large_per_class=5)
    assert large.case.startswith("large, ") and "finetune" not in " ".join(large.commands)  # no room left
    roomy = advise(data, cache_dir=cache, large_per_class=5, room=-1.0)  # any accuracy leaves "room"
    assert "featx finetune" in roomy.commands[-1]


# ---- scikit-learn API ------------------------------------------------------------------------------

def test_feature_extractor_in_pipeline_and_grid_search(data, cache):
    paths = np.array(sorted(str(p) for p in data.glob("*/*.jpg")))
    y = np.array([p.split("/")[-2] for p in paths])
    pipe = Pipeline([("codes", FeatureExtractor(cache_dir=cache)), ("head", LogisticRegression(max_iter=500))])
    search = GridSearchCV(pipe, {"head__C": [0.01, 1.0], "codes__taps": [("pre_logits",), ("stage4",)]}, cv=2)
    search.fit(paths, y)
    assert search.best_score_ > 0.6
    assert search.predict(paths[:3]).shape == (3,)
    codes = FeatureExtractor(cache_dir=cache, taps=("stage4", "pre_logits")).fit(paths).transform(paths)
    assert codes.shape == (24, 96 + 1280)


def test_feature_extractor_errors(tmp_path, cache):
    with pytest.raises(FeatxError, match="unknown backbone"):
        FeatureExtractor("nope").fit([])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"junk")
    with pytest.raises(FeatxError, match="could not be read"):
        FeatureExtractor(cache_dir=cache).fit([bad]).transform([bad])


@pytest.mark.slow
def test_demo_runs_the_main_job_end_to_end(tmp_path):
    from featx.demo import run_demo

    lines = []
    result = run_demo(out_dir=tmp_path / "demo", cache_dir=tmp_path / "cache", per_class=5, echo=lines.append)
    text = "\n".join(lines)
    assert "$ featx extract" in text and "$ featx fit-head" in text and "$ featx predict" in text
    assert len(result["predictions"]) == 20 and result["unseen_correct"] >= 8  # 10 classes: chance is 2/20
    assert (tmp_path / "demo" / "predictions.csv").exists()
    assert result["fit"].metrics["n"]["train"] > 0


def test_demo_through_main_writes_what_it_names(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--cache", str(tmp_path / "cache"), "--per-class", "5"]) == 0
    text = capsys.readouterr().out
    for name in ("model.featx", "metrics.json", "confusion.png", "predictions.csv"):
        found = list(out.rglob(name))
        assert found and str(found[0]) in text, name  # written, and named in the outputs it prints
    assert "$ featx predict" in text
    m = re.search(r"unseen images: (\d+)/(\d+) predicted correctly, (\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\] \(n=(\d+)\)",
                  text)
    assert m and m.group(2) == m.group(6) and float(m.group(4)) <= int(m.group(1)) / int(m.group(2)) <= float(m.group(5))


def test_two_images_per_class_fit_or_fail_in_one_line(tmp_path, capsys):
    """With --val-fraction 0 each class keeps one training image: logistic fits (C stays 1, no fold could hold
    an image out), an SVM (which calibrates by CV) says so in one line instead of a traceback."""
    root = tmp_path / "two"
    for k, c in enumerate("ab"):
        for i in range(2):
            write_image(root / c / f"{i}.jpg", make_photo(50 + 10 * k + i, (40, 44)))
    cache = tmp_path / "cache"
    assert main(["fit-head", str(root), "--val-fraction", "0", "--cache", str(cache), "--out",
                 str(tmp_path / "logistic")]) == 0
    capsys.readouterr()
    assert main(["fit-head", str(root), "--val-fraction", "0", "--cache", str(cache), "--head", "linear_svm",
                 "--out", str(tmp_path / "svm")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("featx: error: --head: linear_svm head on 2 training images"), err


def test_predict_says_why_a_folder_gives_no_accuracy_and_when_views_are_new(fitted, data, cache, tmp_path, capsys):
    """Folder names that are not the model's classes are not labels: say so (it was silent); and --tta views on
    a head trained without views computes them: say that too."""
    some = sorted(data.glob("*/*.jpg"))[0]
    for name in ("red", "wolf"):
        (tmp_path / "mixed" / name).mkdir(parents=True)
        (tmp_path / "mixed" / name / some.name).write_bytes(some.read_bytes())
    assert main(["predict", str(fitted.bundle), str(tmp_path / "mixed"), "--cache", str(cache)]) == 0
    out, err = capsys.readouterr()
    assert "accuracy" not in out and "true_label" not in out
    assert "featx: note: the folder names wolf are not classes of the model" in err, err
    assert main(["predict", str(fitted.bundle), str(some), "--cache", str(cache), "--tta", "views"]) == 0
    assert "featx: note: --tta views: the head was not trained on augmented views; averaging over 4" in \
        capsys.readouterr().err
