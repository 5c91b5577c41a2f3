import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_image
from featx.augment import STUDY, augment_view
from featx.backbones.registry import get_backbone
from featx.training.networks import build_baseline
from featx.bundle import load_bundle
from featx.cli import main
from featx.errors import FeatxError
from featx.extract import extract, load_features
from featx.training.networks import build_model
from featx.training.recipes import apply_unfreeze, first_trainable_index
from featx.prediction import predict
from featx.training import fit_head
from featx.report import write_report
from conftest import tinted


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft") / "tints"
    for c, name in enumerate(("red", "green", "blue")):
        for i in range(6):
            write_image(root / name / f"{name}{i}.jpg", tinted(40 + 10 * c + i, c, size=(36, 44)))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ftcache")


@pytest.fixture(scope="module")
def mobilenet_base():
    spec = get_backbone("mobilenet_v2")
    _, base = build_model(spec, 3, weights=None, augment=False)
    return spec, base


def _is_bn(layer):
    return type(layer).__name__ == "BatchNormalization"


@pytest.mark.parametrize("policy", ["all", "top:1", "top:2", "from:94", "from:stage3", "none"])
def test_unfreeze_policies_freeze_exactly_the_intended_layers(mobilenet_base, policy):
    spec, base = mobilenet_base
    names = [layer.name for layer in base.layers]
    start = {"all": 0, "none": len(names), "from:94": 94,
             "top:1": names.index("block12_out") + 1,  # the last stage: after the 96-channel stride-16 block
             "top:2": names.index("block5_out") + 1,  # the last two: after the 32-channel stride-8 block
             "from:stage3": names.index("block5_out") + 1}[policy]
    assert first_trainable_index(base, spec, policy) == start
    apply_unfreeze(base, spec, policy)
    for i, layer in enumerate(base.layers):
        expected = i >= start and not _is_bn(layer)
        assert layer.trainable == expected, (policy, i, layer.name)


def test_top_policy_counts_stages(mobilenet_base):
    spec, base = mobilenet_base
    names = [layer.name for layer in base.layers]
    assert first_trainable_index(base, spec, "top:1") == names.index(spec.tap("stage4").layer) + 1
    assert first_trainable_index(base, spec, "top:9") == 0


@pytest.mark.parametrize("policy", ["some", "from:nowhere", "top:0", "from:9999"])
def test_bad_policy_is_a_clear_error(mobilenet_base, policy):
    spec, base = mobilenet_base
    with pytest.raises(FeatxError, match="^unfreeze: "):
        first_trainable_index(base, spec, policy)


@pytest.mark.slow
def test_batchnorm_statistics_do_not_move_while_training(data):
    from featx import _tf

    keras = _tf.keras()
    spec = get_backbone("mobilenet_v2")
    model, base = build_model(spec, 3, augment=False)
    apply_unfreeze(base, spec, "all")
    bns = [layer for layer in base.layers if _is_bn(layer)]
    before = [[w.copy() for w in layer.get_weights()] for layer in bns]
    convs = {name: base.get_layer(name).get_weights()[0].copy() for name in ("features_0_0", "features_18_0")}
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    from featx.images import load_image

    paths = sorted(data.glob("*/*.jpg"))[:8]
    x = spec.preprocess([load_image(p) for p in paths])
    model.fit(x, np.array([0, 1, 2, 0, 1, 2, 0, 1]), epochs=1, batch_size=4, verbose=0)
    for layer, old in zip(bns, before):
        for w, o in zip(layer.get_weights(), old):
            np.testing.assert_array_equal(w, o)
    for name, old in convs.items():  # while the convolutions did train
        assert not np.array_equal(base.get_layer(name).get_weights()[0], old), name


@pytest.mark.slow
def test_warm_start_reproduces_the_cached_head(data, cache, tmp_path):
    result = fit_head(data, head="dense", cache_dir=cache, out_dir=tmp_path, head_params={"epochs": 5})
    bundle = load_bundle(result.bundle)
    spec = get_backbone("mobilenet_v2")
    model, _ = build_model(spec, 3, head=bundle.head)
    feats = load_features(data, cache_dir=cache)
    from featx.images import load_image

    images = spec.preprocess([load_image(p) for p in feats.paths])
    np.testing.assert_allclose(model.predict(images, verbose=0), bundle.predict_proba(feats.X), atol=1e-4)


def test_augmentation_is_seeded_and_reproducible():
    batch = np.random.default_rng(0).uniform(0, 255, size=(2, 48, 48, 3)).astype(np.uint8)
    a = STUDY.batch(batch, [3, 4])
    b = STUDY.batch(batch, [3, 4])
    c = STUDY.batch(batch, [5, 6])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    img = batch[0]
    np.testing.assert_array_equal(augment_view(img, 11), augment_view(img, 11))
    assert not np.array_equal(augment_view(img, 11), augment_view(img, 12))


def test_views_store_k_rows_per_image_and_heads_use_them(data, cache, tmp_path):
    report = extract(data, cache_dir=cache, views=2)
    assert report.computed_views == 2 * 18
    feats = load_features(data, cache_dir=cache, views=2)
    assert feats.views["pre_logits"].shape == (18, 2, 1280)
    assert not np.allclose(feats.views["pre_logits"][:, 0], feats.codes["pre_logits"])
    again = extract(data, cache_dir=cache, views=2)
    assert again.computed_views == 0  # cached like any row
    result = fit_head(data, cache_dir=cache, views=2, out_dir=tmp_path, refit=False)
    n_train = result.metrics["n"]["train"]
    head = load_bundle(result.bundle).head
    assert head.pipeline_.named_steps["clf"].n_features_in_ == 1280
    assert result.metrics["views"] == 2
    assert head.pipeline_.named_steps["scale"].n_samples_seen_ == 3 * n_train  # image + 2 views each
    tta = predict(result.bundle, [data / "red"], cache_dir=cache, tta=True)
    plain = predict(result.bundle, [data / "red"], cache_dir=cache)
    cols = [c for c in tta.columns if c.startswith("p_")]
    assert len(tta) == 6 and not np.array_equal(tta[cols].to_numpy(), plain[cols].to_numpy())
    # TTA is the mean of the head's probabilities over the image and each of its cached views
    red = load_features(data / "red", cache_dir=cache, views=2, extract_missing=False)
    by_name = {p.name: i for i, p in enumerate(red.paths)}
    rows = [by_name[p.name] for p in map(__import__("pathlib").Path, tta["file"])]
    bundle = load_bundle(result.bundle)
    stacked = np.concatenate([red.codes["pre_logits"][rows, None], red.views["pre_logits"][rows]], axis=1)
    expected = bundle.predict_proba(stacked.reshape(-1, 1280)).reshape(6, 3, 3).mean(axis=1)
    classes = list(bundle.class_names)
    np.testing.assert_allclose(tta[[f"p_{c}" for c in classes]].to_numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(plain[[f"p_{c}" for c in classes]].to_numpy(),
                               bundle.predict_proba(red.codes["pre_logits"][rows]), atol=1e-5)


@pytest.mark.parametrize("arch, shapes", [
    ("cnn1", {"conv1": (94, 94, 32), "pool1": (47, 47, 32), "dense": (1024,), "softmax": (3,)}),
    ("cnn6", {"conv1a": (96, 96, 32), "conv2b": (48, 48, 64), "conv3b": (24, 24, 128), "pool3": (12, 12, 128),
              "dense": (512,), "softmax": (3,)}),
])
def test_baselines_build_with_documented_shapes(arch, shapes):
    model = build_baseline(arch, 3, size=96)
    for name, shape in shapes.items():
        assert tuple(model.get_layer(name).output.shape[1:]) == shape, name
    n_conv = sum(1 for layer in model.layers if type(layer).__name__ == "Conv2D")
    assert n_conv == (1 if arch == "cnn1" else 6)


def test_report_renders_from_a_hand_made_runs_csv(tmp_path):
    runs = pd.DataFrame([
        dict(dataset="dogs", route="cached", backbone="vgg16", taps="stage5", head="logistic", split_id="s1",
             val_acc=0.40, test_acc=0.36, extract_s=100.0, fit_s=2.0, output=""),
        dict(dataset="dogs", route="cached", backbone="vgg16", taps="stage5", head="dense", split_id="s1",
             val_acc=0.45, test_acc=0.38, extract_s=0.1, fit_s=9.0, output=""),
        dict(dataset="dogs", route="finetune", backbone="vgg16", taps="stage5", head="dense/all", split_id="s1",
             val_acc=0.60, test_acc=0.63, extract_s=0.0, fit_s=3600.0, output=""),
        dict(dataset="birds", route="baseline", backbone="cnn1", taps="", head="cnn1", split_id="s2",
             val_acc=0.2, test_acc=0.2, extract_s=0.0, fit_s=50.0, output=""),
        dict(dataset="birds", route="cached", backbone="vgg16", taps="stage5", head="logistic", split_id="s3",
             val_acc=0.5, test_acc=0.59, extract_s=10.0, fit_s=1.0, output=""),
    ])
    csv = tmp_path / "runs.csv"
    runs.to_csv(csv, index=False)
    result = write_report(csv, tmp_path / "report")
    md = result["markdown"].read_text()
    assert "| dataset | split | sizes | vgg16 cached | vgg16 finetune | cnn1 baseline |" in md
    assert "0.380 (9.1 s, dense)" in md  # best validation picks dense, shows its test accuracy
    assert "0.630 (60.0 min, dense/all)" in md
    assert "birds [split s2]" in md and "birds [split s3]" in md  # different splits never side by side
    assert result["chart"].stat().st_size > 1000
    table = pd.read_csv(result["csv"]).set_index(["dataset", "backbone", "route"])  # tidy: one header row
    assert table.loc[("dogs", "vgg16", "finetune"), "test_acc"] == pytest.approx(0.63)


def test_report_on_two_concatenated_runs_logs_names_the_stray_header_line(tmp_path, capsys):
    """`cat a/runs.csv b/runs.csv > all.csv` leaves b's header as a row: one error line naming it, no traceback."""
    row = dict(time="t", dataset="dogs", route="cached", backbone="vgg16", taps="stage5", head="logistic",
               split_id="s1", n_train=8, n_val=2, n_test=4, train_acc=1.0, val_acc=0.5, test_acc=0.5,
               extract_s=1.0, fit_s=1.0, output="")
    one = pd.DataFrame([row]).to_csv(index=False)
    (tmp_path / "all.csv").write_text(one + one)  # header, row, header again, row
    code = main(["report", "--runs", str(tmp_path / "all.csv"), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err  # the report renders the two runs and names the stray line
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "skipped line 3: n_train is 'n_train', not a number" in lines[0]
    assert "- line 3: n_train is 'n_train'" in (tmp_path / "report" / "summary.md").read_text()


_RUN = dict(time="t", dataset="dogs", route="cached", backbone="vgg16", taps="stage5", head="logistic",
            split_id="s1", n_train=8, n_val=2, n_test=4, train_acc=1.0, val_acc=0.5, test_acc=0.5,
            extract_s=1.0, fit_s=1.0, output="")


def _report_error(tmp_path, capsys, text) -> str:
    """`featx report` on a runs log holding ``text``: its one error line (exit 2, no traceback)."""
    (tmp_path / "runs.csv").write_text(text)
    code = main(["report", "--runs", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featx: error: ") and "runs.csv" in lines[0]
    assert not (tmp_path / "report" / "summary.md").exists()
    return lines[0]


def _report_skip(tmp_path, capsys, text) -> str:
    """`featx report` on a runs log holding ``text`` with one bad line: the report is written (exit 0) and the
    line is named once on stderr and in summary.md (issue 27: one bad run never fails the report)."""
    (tmp_path / "runs.csv").write_text(text)
    code = main(["report", "--runs", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err
    notes = [line for line in err.splitlines() if line.startswith("featx: note: skipped ")]
    assert len(notes) == 1, err
    skipped = notes[0].removeprefix("featx: note: skipped ")
    assert f"- {skipped}" in (tmp_path / "report" / "summary.md").read_text()
    return skipped


@pytest.mark.parametrize("column, value, allowed", [
    ("test_acc", "inf", "a number from 0 to 1"),  # was an OverflowError traceback
    ("n_test", "inf", "a whole number from 0 to"),  # was an OverflowError traceback
    ("n_test", "1e300", "a whole number from 0 to"),  # was an OverflowError in wilson_interval
    ("n_test", "-4", "a whole number from 0 to"),  # was wilson_interval's internal message
    ("n_train", "-1", "a whole number from 0 to"),
    ("n_val", "2.5", "a whole number from 0 to"),  # was silently accepted
    ("test_acc", "1.5", "a number from 0 to 1"),
    ("test_acc", "-0.5", "a number from 0 to 1"),
    ("val_acc", "inf", "a number from 0 to 1"),  # was silently accepted
    ("train_acc", "nan", "a number from 0 to 1"),
    ("fit_s", "nan", "a finite number >= 0"),  # was silently accepted
    ("extract_s", "-inf", "a finite number >= 0"),  # was silently accepted
    ("fit_s", "-3", "a finite number >= 0"),
    ("n_test", "four", "a whole number from 0 to"),
])
def test_report_names_line_column_value_and_range_of_a_bad_runs_log_cell(column, value, allowed, tmp_path, capsys):
    rows = pd.DataFrame([_RUN, _RUN, dict(_RUN, **{column: value})]).astype(str)
    line = _report_skip(tmp_path, capsys, rows.to_csv(index=False))
    assert f"line 4: {column} is {value!r}" in line and allowed in line  # header is line 1
    only = pd.DataFrame([dict(_RUN, **{column: value})]).astype(str)  # nothing left to report: one error line
    (tmp_path / "only").mkdir()
    assert f"line 2: {column} is {value!r}" in _report_error(tmp_path / "only", capsys, only.to_csv(index=False))


def test_report_names_a_bad_cell_after_blank_lines_by_its_file_line(tmp_path, capsys):
    good = pd.DataFrame([_RUN]).to_csv(index=False)
    bad = pd.DataFrame([dict(_RUN, n_test=-4)]).to_csv(index=False, header=False)
    assert "line 4: n_test is '-4'" in _report_skip(tmp_path, capsys, good + "\n" + bad)


def test_report_on_a_log_without_the_summary_columns_names_them(tmp_path, capsys):
    line = _report_error(tmp_path, capsys, "time,dataset,route\nt,dogs,cached\n")
    assert "lacks the column(s) backbone, test_acc" in line and "number sections" not in line


def test_report_on_a_run_without_a_backbone_names_its_line(tmp_path, capsys):
    rows = pd.DataFrame([_RUN, dict(_RUN, backbone="")])
    assert "line 3: backbone is empty" in _report_skip(tmp_path, capsys, rows.to_csv(index=False))


def test_report_renders_a_valid_log_with_empty_optional_cells_and_an_old_header(tmp_path, capsys):
    """Cells fit-head leaves empty (no test set: test_acc; no timings) and a log from before the newer
    columns (no time, split_id, n_*, train_acc, output) still render."""
    runs = pd.DataFrame([_RUN, dict(_RUN, head="dense", n_test=0, test_acc=None, val_acc=0.7, extract_s=None),
                         dict(_RUN, route="finetune", n_train=None, n_val=None, n_test=None, train_acc=None,
                              fit_s=None)])
    runs.to_csv(tmp_path / "runs.csv", index=False)
    assert main(["report", "--runs", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "a")]) == 0
    md = (tmp_path / "a" / "summary.md").read_text()
    assert "| dogs | s1 | 8/2/0 | - (1.0 s, dense) | 0.500 (1.0 s, logistic) |" in md  # no test set: -
    old = tmp_path / "old.csv"
    old.write_text("dataset,route,backbone,test_acc\n2024,cached,vgg16,0.5\n\n2024,finetune,vgg16,\n")
    assert main(["report", "--runs", str(old), "--out", str(tmp_path / "b")]) == 0
    assert "| 2024 | - | - | 0.500 (0.0 s, -) | - (0.0 s, -) |" in (tmp_path / "b" / "summary.md").read_text()
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_cli_end_to_end_and_predict_keras_model(data, cache, tmp_path, capsys):
    out = tmp_path / "ft"
    code = main(["finetune", str(data), "--cache", str(cache), "--epochs", "1", "--batch-size", "8",
                 "--unfreeze", "top:1", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "fine-tuned mobilenet_v2 (default recipe, top:1), 1 epoch in " in text  # not "1 epochs"
    saved = json.loads((out / "metrics.json").read_text())  # saved as fit-head saves it, interval included
    low, high = saved["test"]["interval95"]
    assert saved["evaluated_on"] == "test" and saved["taps"] == ["pre_logits"]
    assert saved["test"]["n"] == saved["n"]["test"] and low <= saved["accuracy"]["test"] <= high
    assert f"test accuracy {saved['accuracy']['test']:.3f} [{low:.3f}, {high:.3f}] (n={saved['n']['test']})" in text
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1]  # counted from 1, as curves.png counts
    for name in ("model.keras", "history.csv", "metrics.json", "curves.png", "featx.json"):
        assert (out / name).exists(), name
    runs = pd.read_csv(cache / "runs.csv")
    assert runs.iloc[-1]["route"] == "finetune"
    from featx.training import labelled_codes

    # the fine-tune is judged on the cached route's stored split: same split id in the runs log
    assert runs.iloc[-1]["split_id"] == labelled_codes(data, cache_dir=cache).split_id
    table = predict(out / "model.keras", [data / "green"], top=2)
    assert len(table) == 6 and set(table["predicted"]) <= {"red", "green", "blue"}
    # --init-head: a second run starts from the first run's dense head instead of training one
    init = out / "init-head" / "model.featx"
    assert init.exists()
    out2 = tmp_path / "ft2"
    assert main(["finetune", str(data), "--cache", str(cache), "--epochs", "1", "--batch-size", "8",
                 "--unfreeze", "top:1", "--init-head", str(init), "--out", str(out2)]) == 0
    assert not (out2 / "init-head").exists() and (out2 / "model.keras").exists()


def test_default_unfreeze_policy_per_family():
    from featx.training.recipes import default_policy

    # the study's policies for VGG and Inception/Xception; the top two stages elsewhere
    assert [default_policy(b) for b in ("vgg16", "vgg19", "inception_v3", "xception")] == \
        ["all", "all", "from:94", "from:94"]
    assert {default_policy(b) for b in ("mobilenet_v2", "efficientnet_lite0", "resnet50")} == {"top:2"}


@pytest.mark.slow
def test_baseline_trains_on_the_stored_split_and_logs_a_run(data, cache, tmp_path):
    from featx import _tf
    from featx.training import train_baseline

    result = train_baseline(data, arch="cnn6", size=32, epochs=1, cache_dir=cache, out_dir=tmp_path, echo=lambda *_: None)
    m = result["metrics"]
    assert sum(m["n"].values()) == 18 and min(m["n"].values()) >= 3
    runs = pd.read_csv(cache / "runs.csv")
    assert runs.iloc[-1]["route"] == "baseline" and runs.iloc[-1]["backbone"] == "cnn6"
    cached_split = load_features(data, cache_dir=cache)  # same split id as the cached route
    from featx.training import labelled_codes

    assert runs.iloc[-1]["split_id"] == labelled_codes(data, cache_dir=cache).split_id
    reloaded = _tf.keras().models.load_model(tmp_path / "model.keras")
    assert reloaded.output.shape[-1] == 3 and len(cached_split.paths) == 18


@pytest.mark.slow
def test_ctrl_c_keeps_the_best_checkpoint(data, cache, tmp_path, monkeypatch):
    from featx import _tf
    from featx.training import finetune

    keras = _tf.keras()
    original = keras.callbacks.ModelCheckpoint.on_epoch_end
    snapshots = {}

    def classifier_weights(model):  # augmentation runs in the input pipeline: the trained model is the classifier
        return [np.array(w) for w in model.get_weights()]

    def checkpoint_then_interrupt(self, epoch, logs=None):
        if epoch == 0:
            original(self, epoch, logs)  # the first epoch is always the best so far: it is checkpointed
            snapshots["best"] = classifier_weights(self.model)
            return
        snapshots["interrupted"] = classifier_weights(self.model)
        raise KeyboardInterrupt  # Ctrl-C during the second epoch, before it could be checkpointed

    monkeypatch.setattr(keras.callbacks.ModelCheckpoint, "on_epoch_end", checkpoint_then_interrupt)
    result = finetune(data, cache_dir=cache, epochs=5, batch_size=8, unfreeze="top:1", out_dir=tmp_path,
                      echo=lambda *_: None)
    m = result["metrics"]
    assert m["interrupted"] and m["epochs_run"] >= 1
    assert (tmp_path / "model.keras").exists() and m["accuracy"]["test"] is not None
    saved = [np.array(w) for w in keras.models.load_model(tmp_path / "model.keras").get_weights()]
    best, last = snapshots["best"], snapshots["interrupted"]
    assert len(saved) == len(best)
    assert any(not np.array_equal(b, x) for b, x in zip(best, last))  # the second epoch did move the weights
    for b, x in zip(best, saved):  # and the saved model holds the checkpoint's, not the interrupted ones
        np.testing.assert_array_equal(x, b)
