"""Issue 15: the study's augmentation (Keras 1.2.2 semantics), the fine-tuning recipes, predict on every model.keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featx import augment


# ---- an independent Keras 1.2.2 ImageDataGenerator.random_transform (channels last) -------------------------
def _keras122_random_transform(x, seed, rotation_range=0.0, width_shift_range=0.0, height_shift_range=0.0,
                               shear_range=0.0, zoom_range=0.0, horizontal_flip=False):
    """Keras 1.2.2's formulas, written out again: the global np.random seeded, scipy order-0 warp per channel."""
    from scipy import ndimage

    np.random.seed(seed)
    zoom_range = [1 - zoom_range, 1 + zoom_range]
    row, col = 0, 1
    theta = np.pi / 180 * np.random.uniform(-rotation_range, rotation_range) if rotation_range else 0
    rotation_matrix = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    tx = np.random.uniform(-height_shift_range, height_shift_range) * x.shape[row] if height_shift_range else 0
    ty = np.random.uniform(-width_shift_range, width_shift_range) * x.shape[col] if width_shift_range else 0
    translation_matrix = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    shear = np.random.uniform(-shear_range, shear_range) if shear_range else 0
    shear_matrix = np.array([[1, -np.sin(shear), 0], [0, np.cos(shear), 0], [0, 0, 1]])
    if zoom_range[0] == 1 and zoom_range[1] == 1:
        zx, zy = 1, 1
    else:
        zx, zy = np.random.uniform(zoom_range[0], zoom_range[1], 2)
    zoom_matrix = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    transform = np.dot(np.dot(np.dot(rotation_matrix, translation_matrix), shear_matrix), zoom_matrix)
    h, w = x.shape[row], x.shape[col]
    o_x, o_y = float(h) / 2 + 0.5, float(w) / 2 + 0.5
    offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    transform = np.dot(np.dot(offset, transform), reset)
    chans = np.rollaxis(x.astype(np.float32), 2, 0)
    out = np.stack([ndimage.affine_transform(c, transform[:2, :2], transform[:2, 2], order=0, mode="nearest")
                    for c in chans], axis=0)
    out = np.rollaxis(out, 0, 3)
    if horizontal_flip and np.random.random() < 0.5:
        out = out[:, ::-1]
    return out


def _textured(rows=48, cols=40, seed=0):
    """A photo-like test card: smooth gradients plus noise, so a wrong pixel shows."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols]
    base = np.stack([r * 255 // rows, c * 255 // cols, (r + c) * 255 // (rows + cols)], -1)
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


SETTINGS = {
    "study": dict(rotation_range=20, width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2,
                  zoom_range=0.2, horizontal_flip=True),
    "rotation": dict(rotation_range=30),
    "shift": dict(width_shift_range=0.3, height_shift_range=0.1),
    "shear": dict(shear_range=0.5),
    "zoom": dict(zoom_range=0.3),
    "flip": dict(horizontal_flip=True),
}


def _ours(kw):
    return augment.Augmentation(rotation=kw.get("rotation_range", 0), width_shift=kw.get("width_shift_range", 0),
                                height_shift=kw.get("height_shift_range", 0), shear=kw.get("shear_range", 0),
                                zoom=kw.get("zoom_range", 0), horizontal_flip=kw.get("horizontal_flip", False))


@pytest.mark.parametrize("name", list(SETTINGS))
def test_augmentation_matches_keras_1_2_2_pixels(name):
    kw = SETTINGS[name]
    image = _textured()
    for seed in range(6):
        want = _keras122_random_transform(image, seed, **kw)
        got = augment.Augmentation.__call__(_ours(kw), image, seed)
        assert got.shape == image.shape and got.dtype == np.uint8
        same = (got == want.astype(np.uint8)).all(axis=-1).mean()
        # identical up to float ties in the nearest-neighbour rounding
        assert same >= 0.995, f"{name} seed {seed}: only {same:.4f} of the pixels match Keras 1.2.2"


def test_study_preset_is_the_study_setting_and_changes_pixels():
    assert _ours(SETTINGS["study"]) == augment.STUDY
    image = _textured()
    views = [augment.STUDY(image, s) for s in range(4)]
    assert all(not np.array_equal(v, image) for v in views)
    assert np.array_equal(augment.STUDY(image, 3), views[3])  # a seed fixes the view


def test_shear_is_radians_along_one_axis():
    """Shear 0.5 rad tilts columns by sin(0.5) ~ 0.48 px per row: a vertical line leans, a horizontal one stays."""
    params = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.5, "zx": 1.0, "zy": 1.0, "flip": False}
    m = augment.transform_matrix(params, 40, 40)
    assert m[0, 1] == pytest.approx(-np.sin(0.5)) and m[1, 0] == 0  # one axis, radians (not 0.5 degrees)
    assert m[1, 1] == pytest.approx(np.cos(0.5))


def test_zoom_is_drawn_per_axis():
    rng = np.random.RandomState(0)
    draws = [augment.Augmentation(zoom=0.2).random_params(rng, 10, 10) for _ in range(50)]
    zx = np.array([d["zx"] for d in draws])
    zy = np.array([d["zy"] for d in draws])
    assert zx.min() >= 0.8 and zx.max() <= 1.2 and not np.allclose(zx, zy)  # the aspect ratio changes


def test_cached_views_have_a_new_augmentation_id():
    from featx.extract import AUGMENTATION_ID, views_config

    assert AUGMENTATION_ID == augment.STUDY.id != "study-v1"
    assert views_config({"backbone": "b"})["views"] == augment.STUDY.id


def test_augment_view_is_the_study_transform():
    image = _textured()
    assert np.array_equal(augment.augment_view(image, 7), augment.STUDY(image, 7))


# ---- recipes, validation split, options checked first, predict on every model.keras ------------------------
from conftest import write_image  # noqa: E402
from test_fit import tinted  # noqa: E402


@pytest.fixture(scope="module")
def train_test_data(tmp_path_factory):
    """train/ and test/ folders only (like cifar10_3k): no validation folder."""
    root = tmp_path_factory.mktemp("ftr") / "tints"
    for c, name in enumerate(("red", "green", "blue")):
        for i in range(6):
            write_image(root / "train" / name / f"{name}{i}.jpg", tinted(60 + 10 * c + i, c, size=(36, 44)))
        for i in range(2):
            write_image(root / "test" / name / f"{name}{i}.jpg", tinted(160 + 10 * c + i, c, size=(36, 44)))
    return root


def test_recipes_study_is_the_2017_one_and_default_is_adaptive():
    from featx.training.recipes import get_recipe, make_optimizer

    study = get_recipe("study")
    assert (study.optimizer, study.learning_rate, study.momentum, study.schedule, study.augment, study.warmup) == \
        ("sgd", 1e-4, 0.9, "constant", "study", 0)
    sgd = make_optimizer(study, 100)
    assert type(sgd).__name__ == "SGD" and float(sgd.learning_rate) == pytest.approx(1e-4)
    assert float(sgd.momentum) == pytest.approx(0.9)
    default = get_recipe("default")
    assert default.optimizer == "adamw" and default.schedule == "cosine" and default.warmup > 0
    assert default.augment == "light" and default.epochs <= 6  # a few CPU epochs: 6 ran 4.2 min on cifar10_3k (README)
    adamw = make_optimizer(default, 100)
    schedule = adamw._learning_rate
    peak = max(float(schedule(s)) for s in range(100))
    assert peak == pytest.approx(default.learning_rate, rel=1e-3)
    assert float(schedule(0)) < peak and float(schedule(99)) < 0.01 * peak  # ramp up, decay to ~0
    assert get_recipe("default", epochs=7, learning_rate=None).epochs == 7  # None keeps the recipe's value


@pytest.mark.parametrize("kwargs, option", [
    (dict(recipe="fast"), "recipe"), (dict(epochs=0), "epochs"), (dict(learning_rate=-1.0), "learning_rate"),
    (dict(augment="heavy"), "augment"), (dict(warmup=-1), "warmup"), (dict(unfreeze="top:x"), "unfreeze"),
    (dict(unfreeze="from:no_such_layer"), "unfreeze"), (dict(init_head="/nonexistent/model.featx"), "init_head"),
])
def test_a_bad_option_fails_before_any_training_or_writing(train_test_data, tmp_path, kwargs, option):
    from featx.errors import FeatxError
    from featx.training import finetune

    out, cache = tmp_path / "ft", tmp_path / "cache"
    with pytest.raises(FeatxError, match=f"^{option}: "):  # the API names the parameter, the CLI the option
        finetune(train_test_data, cache_dir=cache, out_dir=out, echo=lambda *_: None, **kwargs)
    assert not out.exists()  # no init-head/ folder
    assert not (cache / "runs.csv").exists()  # no runs-log row
    assert not cache.exists() or not any(cache.iterdir())  # nothing extracted, converted or split either


def test_an_init_head_that_cannot_warm_start_fails_before_any_work(train_test_data, tmp_path):
    """A file that is no bundle, or a bundle whose head is not dense, was refused only after the codes were
    extracted and a split stored; now before anything is written."""
    from featx.errors import FeatxError
    from featx.training import finetune

    garbage = tmp_path / "garbage.featx"
    garbage.write_bytes(b"\x00" * 64)
    from featx.training import fit_head

    logistic = fit_head(train_test_data, cache_dir=tmp_path / "other", out_dir=tmp_path / "logistic").bundle
    for init in (garbage, logistic):
        out, cache = tmp_path / f"ft-{init.stem}", tmp_path / f"cache-{init.stem}"
        with pytest.raises(FeatxError, match="^init_head: |not a featx bundle"):
            finetune(train_test_data, cache_dir=cache, out_dir=out, init_head=init, echo=lambda *_: None)
        assert not out.exists() and not cache.exists(), init


def test_mistyped_unfreeze_on_the_command_line_is_one_line_exit_2(train_test_data, tmp_path, capsys):
    from featx.cli import main

    out = tmp_path / "ft"
    code = main(["finetune", str(train_test_data), "--cache", str(tmp_path / "c"), "--out", str(out),
                 "--unfreeze", "tpo:2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("featx: error: --unfreeze:")
    assert not out.exists() and not (tmp_path / "c" / "runs.csv").exists()


def test_carve_validation_is_stratified_seeded_and_order_free():
    from featx.training.finetune import carve_validation

    y = np.repeat([0, 1, 2], [10, 10, 5])
    split = np.array(["train"] * 20 + ["test"] * 5)
    keys = [f"k{i:02d}" for i in range(25)]
    out = carve_validation(split, y, keys, 0.2, seed=0)
    assert ((out == "val") & (y == 0)).sum() == 2 and ((out == "val") & (y == 1)).sum() == 2
    assert (out[20:] == "test").all()  # the test images are never touched
    perm = np.random.default_rng(1).permutation(25)
    shuffled = carve_validation(split[perm], y[perm], [keys[i] for i in perm], 0.2, seed=0)
    assert set(np.asarray(keys)[perm][shuffled == "val"]) == set(np.asarray(keys)[out == "val"])
    assert not np.array_equal(out, carve_validation(split, y, keys, 0.2, seed=5))
    given = split.copy()
    given[0] = "val"
    np.testing.assert_array_equal(carve_validation(given, y, keys, 0.2, 0), given)  # a split with val stays


def test_finetune_carves_a_validation_split_shows_progress_and_logs_the_recipe(train_test_data, tmp_path):
    import pandas as pd

    from featx.training import finetune
    from featx.prediction import predict

    lines = []
    cache = tmp_path / "cache"
    result = finetune(train_test_data, cache_dir=cache, out_dir=tmp_path / "ft", epochs=1, batch_size=4,
                      unfreeze="top:1", echo=lines.append, progress=False)
    m = result["metrics"]
    # a validation split exists although the folders have none (the stored split carves it, or finetune does)
    assert m["n"]["val"] >= 3 and m["n"]["train"] + m["n"]["val"] == 18 and m["n"]["test"] == 6
    assert m["recipe"] == "default" and m["warmup_steps"] >= 1 and m["epochs_run"] == 1
    assert any(line.startswith("epoch 1/1:") and "img/s" in line and "val loss" in line for line in lines), lines
    assert any(line.startswith("warm-up 1/1:") for line in lines), lines
    assert "[" in m["accuracy_text"]["test"] and "(n=6)" in m["accuracy_text"]["test"]  # Wilson interval
    row = pd.read_csv(cache / "runs.csv").iloc[-1]
    assert row["route"] == "finetune" and row["head"] == "dense/top:1/default" and row["n_val"] == m["n"]["val"]
    assert row["fit_s"] > 0 and row["test_acc"] == pytest.approx(m["accuracy"]["test"], abs=5e-5)  # runs.csv: 4 decimals
    table = predict(result["model"], [train_test_data / "test"])
    assert len(table) == 6 and np.allclose(table.filter(like="p_").sum(axis=1), 1, atol=1e-4)


def test_progress_bar_counts_images_per_step(train_test_data, tmp_path, capsys):
    from featx.training import finetune

    result = finetune(train_test_data, cache_dir=tmp_path / "cache", out_dir=tmp_path / "ft", epochs=1,
                      batch_size=5, unfreeze="top:1", warmup=0, echo=lambda *_: None, progress=True)
    err = capsys.readouterr().err
    n = result["metrics"]["n"]["train"]
    assert "img/s" in err and f"5/{n} [" in err  # a tqdm bar over the training images, one step of 5 shown


def test_predict_accepts_a_baseline_model_keras(train_test_data, tmp_path):
    from featx import _tf
    from featx.training import train_baseline
    from featx.prediction import predict
    from featx.images import center_crop_resize, load_image

    result = train_baseline(train_test_data, arch="cnn1", size=32, epochs=1, cache_dir=tmp_path / "cache",
                            out_dir=tmp_path / "cnn1", echo=lambda *_: None)
    model_path = result["out_dir"] / "model.keras"
    table = predict(model_path, [train_test_data / "test"], top=2)
    assert len(table) == 6 and set(table["predicted"]) <= {"red", "green", "blue"}
    paths = [Path(p) for p in table["file"]]
    x = np.stack([center_crop_resize(load_image(p, min_side=32), 32, 1.0) for p in paths]).astype(np.float32)
    want = _tf.keras().models.load_model(model_path).predict(x, verbose=0)
    np.testing.assert_allclose(table[["p_blue", "p_green", "p_red"]].to_numpy(), want, atol=1e-5)


def test_predict_refuses_a_model_keras_without_its_description(tmp_path):
    from featx.errors import FeatxError
    from featx.prediction import predict

    (tmp_path / "model.keras").write_bytes(b"PK")
    with pytest.raises(FeatxError, match="featx.json"):
        predict(tmp_path / "model.keras", [tmp_path])


def test_fine_tuning_that_never_beats_the_warm_start_gives_it_back(train_test_data, tmp_path):
    """A learning rate that wrecks the network: the saved model is the warm start, the init head exactly."""
    from featx.training import finetune
    from featx.prediction import predict

    result = finetune(train_test_data, cache_dir=tmp_path / "cache", out_dir=tmp_path / "ft", epochs=1,
                      batch_size=5, unfreeze="all", warmup=0, learning_rate=5.0, echo=lambda *_: None,
                      progress=False)
    m = result["metrics"]
    assert m["kept_warm_start"] and m["warm_start_val_accuracy"] is not None
    init = tmp_path / "ft" / "init-head" / "model.featx"
    files = sorted((train_test_data / "test").glob("*/*.jpg"))
    want = predict(init, files, cache_dir=tmp_path / "cache")
    got = predict(result["model"], files)
    np.testing.assert_allclose(got.filter(like="p_").to_numpy(), want.filter(like="p_").to_numpy(), atol=1e-4)
