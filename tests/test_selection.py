"""The best head for a folder: selection, refit, fusion, flip TTA, the numpy dense head, advice by measurement."""

import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, make_photo, tinted, write_image
from featx.advise import Advice, advise, measure_taps
from featx.bundle import load_bundle
from featx.cli import main
from featx.prediction import predict
from featx.training import fit_head
from featx.heads import Head, make_head
from featx.selection import AutoHead, BlockHead, logme, select_head
from featx.stats import wilson_interval


def blocks_where_one_wins(n_per_class=40, seed=0):
    """Three blocks of codes for the same images; only 'signal' carries the class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(["a", "b", "c"], n_per_class)
    signal = rng.normal(size=(len(y), 8))
    for i, c in enumerate("abc"):
        signal[y == c, i] += 1.5
    return {"noise": rng.normal(size=(len(y), 16)), "signal": signal, "more_noise": rng.normal(size=(len(y), 8))}, y


def xor_codes(n=120, seed=0):
    """Classes are the parity (XOR) of two signs: no linear head can separate them, RBF SVM and kNN can."""
    rng = np.random.default_rng(seed)
    a, b = rng.choice([-1.0, 1.0], n), rng.choice([-1.0, 1.0], n)
    X = np.column_stack([a + 0.25 * rng.normal(size=n), b + 0.25 * rng.normal(size=n), 0.3 * rng.normal(size=(n, 4))])
    return X, np.where(a * b > 0, "same", "diff")


def test_auto_selection_picks_the_known_best_block():
    blocks, y = blocks_where_one_wins()
    result = select_head(blocks, y, budget=60, families=["logistic", "linear_svm", "knn"])
    assert result.best.features == ("signal",)
    assert max(result.logme, key=result.logme.get) == "signal"
    table = result.table[result.table["status"] == "done"]
    assert set(table.columns) >= {"candidate", "cv_mean", "cv_sd", "fit_s"}
    assert table["cv_mean"].max() > 0.8
    # the winner is refit on every row it was given and reads the whole design matrix
    X = np.concatenate(list(blocks.values()), axis=1)
    assert result.estimator.heads_[0].pipeline_.steps[0][1].n_samples_seen_ == len(y) \
        if hasattr(result.estimator.heads_[0].pipeline_.steps[0][1], "n_samples_seen_") else True
    assert (result.estimator.predict(X) == y).mean() > 0.8
    assert "<- chosen" in result.text()


def test_auto_selection_picks_a_nonlinear_head_when_linear_heads_cannot_win():
    X, y = xor_codes()
    result = select_head({"codes": X}, y, budget=60, families=["logistic", "linear_svm", "rbf_svm", "knn"])
    assert result.best.family in ("rbf_svm", "knn")
    table = result.table[result.table["status"] == "done"]
    assert table[table["head"].isin(["logistic", "linear_svm"])]["cv_mean"].max() < 0.75 < table["cv_mean"].max()


def test_logme_ranks_informative_codes_above_noise():
    blocks, y = blocks_where_one_wins()
    assert logme(blocks["signal"], y) > logme(blocks["noise"], y) + 0.05
    assert logme(blocks["signal"], y) > logme(blocks["more_noise"], y) + 0.05
    rng = np.random.default_rng(1)
    # d > n works through the thin SVD and stays finite
    assert np.isfinite(logme(rng.normal(size=(10, 50)), np.repeat(["a", "b"], 5)))


def test_budget_skips_candidates_but_always_scores_one():
    blocks, y = blocks_where_one_wins(20)
    result = select_head(blocks, y, budget=0.0)
    assert (result.table["status"] == "done").sum() == 1
    assert (result.table["status"] == "skipped").sum() >= 5
    assert "skipped" in result.text()


def test_head_auto_is_an_estimator():
    X, y = xor_codes()
    head = AutoHead(options={"budget": 60, "families": ["logistic", "rbf_svm"]}).fit(X[::2], y[::2])
    assert head.score(X[1::2], y[1::2]) > 0.9
    assert "candidate" in head.chosen_ and len(head.selection_) > 1


def test_flip_tta_trains_on_both_views_and_averages_them():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = np.repeat(["a", "b"], 30)
    Xf = X + 0.01
    head = BlockHead(Head("logistic", options={"C": 1.0}), [[(0, 4)]], [[(4, 8)]]).fit(np.hstack([X, Xf]), y)
    assert head.heads_[0].pipeline_.steps[-1][1].n_features_in_ == 4
    assert head.heads_[0].pipeline_.named_steps["scale"].n_samples_seen_ == 120  # both views
    inner = head.heads_[0]
    expected = (inner.predict_proba(X) + inner.predict_proba(Xf)) / 2
    np.testing.assert_allclose(head.predict_proba(np.hstack([X, Xf])), expected)


def test_svm_C_is_chosen_by_cross_validation_and_frozen_for_the_refit():
    X, y = xor_codes()
    head = make_head("rbf_svm").fit(X, y)
    assert head.chosen_["C"] in (1.0, 10.0, 100.0)
    frozen = head.frozen()
    assert frozen.options["C"] == head.chosen_["C"] and not hasattr(frozen, "pipeline_")


def test_dense_head_predicts_in_numpy_without_tensorflow(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 12)).astype(np.float32)
    y = np.repeat(["a", "b", "c"], 30)
    X[y == "b", 0] += 3
    X[y == "c", 1] += 3
    head = make_head("dense", hidden=16, epochs=30).fit(X, y)
    dense = head.pipeline_.named_steps["clf"]
    assert not hasattr(dense, "model_") and [w.shape for w in dense.coefs_] == [(12, 16), (16, 3)]
    assert head.chosen_["epochs"] == dense.best_epoch_ >= 1
    path = tmp_path / "head.pkl"
    path.write_bytes(pickle.dumps(head))
    np.save(tmp_path / "X.npy", X)
    expected = head.predict_proba(X)
    code = (
        "import sys, pickle, numpy as np\n"
        "sys.modules['tensorflow'] = None; sys.modules['keras'] = None  # importing either now fails\n"
        f"head = pickle.loads(open({str(path)!r}, 'rb').read())\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, head.predict_proba(np.load({str(tmp_path / 'X.npy')!r})))\n"
        "assert 'tensorflow' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, rtol=1e-5, atol=1e-6)


def test_study_recipe_trains_a_fixed_20_epochs_on_raw_codes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    y = np.repeat(["a", "b"], 30)
    head = make_head("dense", recipe="study", hidden=8).fit(X, y, validation_data=(X[:10], y[:10]))
    dense = head.pipeline_.named_steps["clf"]
    assert [name for name, _ in head.pipeline_.steps] == ["clf"]  # raw codes: no scaling
    assert dense.n_iter_ == 20 and "val_loss" not in dense.history_


# ---- the cached route end to end ---------------------------------------------------------------



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours") / "colours"
    for c, name in enumerate(("red", "green", "blue")):
        for i in range(10):
            write_image(root / name / f"{name}{i}.jpg", tinted(10 * c + i, c))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_refit_trains_on_train_plus_val_and_no_refit_on_train(data, cache, tmp_path):
    refit = fit_head(data, cache_dir=cache, out_dir=tmp_path / "refit")
    plain = fit_head(data, cache_dir=cache, out_dir=tmp_path / "plain", refit=False)
    n = refit.metrics["n"]
    assert n["val"] > 0 and n["test"] > 0
    saved = json.loads((tmp_path / "refit" / "metrics.json").read_text())
    assert saved["refit"] is True and saved["n_fit"] == {"train": n["train"], "val": n["val"], "test": 0}
    assert plain.metrics["refit"] is False and plain.metrics["n_fit"]["val"] == 0
    seen = lambda r: load_bundle(r.bundle).head.pipeline_.named_steps["scale"].n_samples_seen_  # noqa: E731
    assert seen(refit) == n["train"] + n["val"]
    assert seen(plain) == n["train"]
    assert "C" in refit.metrics["chosen"]
    # the refit keeps the C that validation chose
    assert load_bundle(refit.bundle).head.options["C"] == refit.metrics["chosen"]["C"]


def test_test_accuracy_carries_its_wilson_interval_size_and_small_test_warning(data, cache, tmp_path):
    result = fit_head(data, cache_dir=cache, out_dir=tmp_path)
    test = result.metrics["test"]
    assert test["n"] == result.metrics["n"]["test"] < 30
    low, high = wilson_interval(test["correct"], test["n"])
    assert test["interval95"] == [low, high] and low <= test["accuracy"] <= high
    assert test["warning"] and "small" in test["warning"]
    assert f"(n={test['n']})" in result.report and "warning: the test set is small" in result.report


def test_two_backbones_with_flip_predict_the_same_labels_in_predict_and_serve(data, cache, tmp_path):
    from featx.images import decode, read_bytes
    from featx.serve import Predictor

    result = fit_head(data, backbone="mobilenet_v2,efficientnet_lite0", cache_dir=cache, out_dir=tmp_path,
                      tta="flip", head="logistic")
    bundle = load_bundle(result.bundle)
    assert [e["backbone"] for e in bundle.all_extractors()] == ["mobilenet_v2", "efficientnet_lite0"]
    assert bundle.needs_flip() and result.metrics["backbones"] == ["mobilenet_v2", "efficientnet_lite0"]
    table = predict(result.bundle, [data], cache_dir=cache)
    predictor = Predictor(result.bundle, engine="keras", cache_dir=cache)
    assert predictor.backbone == "mobilenet_v2+efficientnet_lite0"
    images = [decode(read_bytes(p), str(p), predictor.spec.input_size) for p in table["file"]]
    proba = predictor.predict(images)
    served = np.asarray(predictor.classes)[proba.argmax(axis=1)]
    assert list(served) == list(table["predicted"])
    np.testing.assert_allclose(proba.max(axis=1), table["probability"], atol=2e-3)
    assert (table["predicted"] == [p.split("/")[-2] for p in table["file"]]).mean() >= 0.9


def test_fuse_mean_averages_the_single_backbone_heads_through_main(data, cache, tmp_path):
    """--fuse mean: one head per backbone, trained as that backbone's own head, probabilities averaged."""
    backbones = ("mobilenet_v2", "efficientnet_lite0")
    code = main(["fit-head", str(data), "--cache", str(cache), "--backbone", ",".join(backbones), "--fuse", "mean",
                 "--head", "logistic", "--out", str(tmp_path / "mean")])
    assert code == 0
    metrics = json.loads((tmp_path / "mean" / "metrics.json").read_text())
    assert metrics["fuse"] == "mean" and metrics["backbones"] == list(backbones)
    singles = [fit_head(data, backbone=b, head="logistic", cache_dir=cache, out_dir=tmp_path / b).bundle
               for b in backbones]
    fused = predict(tmp_path / "mean" / "model.featx", [data], cache_dir=cache)
    alone = [predict(b, [data], cache_dir=cache) for b in singles]
    assert list(fused["file"]) == list(alone[0]["file"]) == list(alone[1]["file"])
    columns = [c for c in fused.columns if c.startswith("p_")]
    expected = (alone[0][columns].to_numpy() + alone[1][columns].to_numpy()) / 2
    np.testing.assert_allclose(fused[columns].to_numpy(), expected, atol=1e-5)
    assert list(fused["predicted"]) == [c[2:] for c in np.asarray(columns)[expected.argmax(axis=1)]]


@pytest.fixture(scope="module")
def unclear(tmp_path_factory):
    """Random photos under arbitrary labels: predictions near chance, so averaging views changes some."""
    root = tmp_path_factory.mktemp("unclear") / "unclear"
    for i in range(45):
        write_image(root / "abc"[i % 3] / f"{i}.jpg", make_photo(900 + i, (40, 48)))
    return root


def test_fit_head_tta_views_trains_on_the_views_and_scores_their_mean(unclear, cache, tmp_path):
    """--tta views: the head sees every cached augmented view as a training row, and the test accuracy it
    reports is that of the mean over the image and its views (what predict --tta views gives)."""
    from featx.training import labelled_codes

    data = unclear

    code = main(["fit-head", str(data), "--cache", str(cache), "--head", "logistic", "--tta", "views",
                 "--out", str(tmp_path)])
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["tta"] == "views" and metrics["views"] == 4 and metrics["refit"]
    bundle = load_bundle(tmp_path / "model.featx")
    n = metrics["n"]
    assert bundle.head.pipeline_.named_steps["scale"].n_samples_seen_ == 5 * (n["train"] + n["val"])
    codes = labelled_codes(data, cache_dir=cache, views=4)
    test = codes.split == "test"
    X, V = codes.features.X[test], codes.features.X_views[test]  # (n, d), (n, 4, d)
    proba = bundle.head.predict_proba(X) + bundle.head.predict_proba(V.reshape(-1, V.shape[-1])).reshape(
        len(X), 4, -1).sum(axis=1)
    expected = np.asarray(bundle.head.classes_)[proba.argmax(axis=1)]
    def recalls(pred):  # what metrics.json records of the test predictions
        truth = codes.y[test]
        precision = [float((truth[pred == c] == c).mean()) if (pred == c).any() else 0.0 for c in "abc"]
        recall = [float((pred[truth == c] == c).mean()) for c in "abc"]
        return [int((pred == truth).sum())] + [round(v, 6) for v in precision + recall]

    assert recalls(bundle.head.predict(X)) != recalls(expected)  # else this test could not tell the two apart
    per_class = metrics["per_class"]
    assert [metrics["test"]["correct"]] + [round(per_class[c][k], 6) for k in ("precision", "recall") for c in "abc"] \
        == recalls(expected)
    table = predict(bundle, [data], cache_dir=cache, tta="views").set_index("file")
    files = [str(p) for p in np.asarray(codes.features.paths)[test]]
    assert list(table.loc[files, "predicted"]) == list(expected)


def test_fit_head_auto_saves_the_selection_table(data, cache, tmp_path, capsys):
    code = main([
        "fit-head", str(data), "--cache", str(cache), "--out", str(tmp_path), "--head", "auto", "--budget", "6",
    ])
    assert code == 0
    out = capsys.readouterr().out
    # the validation rows were in the CV folds: the console says cross-validated, with its n, not "held-out"
    assert re.search(r"^train \d\.\d{3}  cross-validated accuracy \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \(n=\d+\), "
                     r"± \d\.\d{3} over 3 folds$", out, re.M), out
    import pandas as pd

    table = pd.read_csv(tmp_path / "selection.csv")
    assert (table["status"] == "done").sum() > 1 and table["cv_mean"].notna().any()
    # a 6 s budget leaves no room for the dense head's Keras fits (at least 30 s expected): skipped, not overrun
    assert table.loc[table["head"] == "dense", "status"].tolist() == ["skipped"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["head"] == "auto" and metrics["refit"] and "cv" in metrics
    assert metrics["cv"]["budget_s"] == 6.0 and metrics["tta_used"] == "none"
    # the report ranks runs by validation accuracy: for auto that is the chosen candidate's CV accuracy
    chosen = table.loc[table["candidate"] == metrics["chosen"]["candidate"], "cv_mean"].iloc[0]
    assert metrics["accuracy"]["val"] == pytest.approx(chosen)
    runs = pd.read_csv(cache / "runs.csv")
    assert runs.iloc[-1]["head"] == "auto" and runs.iloc[-1]["val_acc"] == pytest.approx(chosen, abs=1e-4)


# ---- advise ------------------------------------------------------------------------------------

def test_measure_taps_recommends_the_earlier_tap_when_it_carries_the_class():
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], 40)
    early = rng.normal(size=(120, 24))
    for i, c in enumerate("abc"):
        early[y == c, i] += 2.5
    late = rng.normal(size=(120, 64))  # the "top codes" know nothing about these classes
    late[:, 0] += 0.3 * (y == "a")
    blocks = {"stage3": ("net", "stage3", early), "pre_logits": ("net", "pre_logits", late)}
    scores, best = measure_taps(blocks, y)
    assert best == "stage3"
    assert scores["stage3"]["logme"] > scores["pre_logits"]["logme"]
    assert scores["stage3"]["probe"] > scores["pre_logits"]["probe"]


def test_advise_wording_options_and_out(data, cache, tmp_path):
    advice = advise(data, cache_dir=cache, seed=3, out=tmp_path)
    assert isinstance(advice, Advice)
    text = str(advice)
    assert text == advice.text() and not text.startswith("Advice(")
    assert "(< 500 counts as large)" not in text and "large means a median of at least 500" in text
    assert all(f"--cache {cache}" in c and "--seed 3" in c for c in advice.commands)
    assert advice.commands[0].startswith("featx fit-head") and "finetune" not in " ".join(advice.commands)
    saved = json.loads((tmp_path / "advice.json").read_text())
    assert saved["evidence"]["best_tap"] == advice.evidence["best_tap"]
    assert (tmp_path / "advice.txt").read_text().strip() == text


def _logme_reference(f, y):
    """A direct transcription of the LogME authors' published algorithm (D x D eigen-decomposition)."""
    f = f.astype(np.float64)
    N, D = f.shape
    fh = f
    f = f.T
    v, s, vh = np.linalg.svd(f @ fh, full_matrices=True)
    evidences = []
    for k in np.unique(y):
        y_ = (y == k).astype(np.float64)
        alpha, beta, lam = 1.0, 1.0, 1.0
        tmp = vh @ (f @ y_)
        for _ in range(11):
            gamma = (s / (s + lam)).sum()
            m = v @ (tmp * beta / (alpha + beta * s))
            alpha_de = (m * m).sum()
            alpha = gamma / (alpha_de + 1e-5)
            beta_de = ((y_ - fh @ m) ** 2).sum()
            beta = (N - gamma) / (beta_de + 1e-5)
            new_lam = alpha / beta
            if np.abs(new_lam - lam) / lam < 0.01:
                break
            lam = new_lam
        evidence = (D / 2.0 * np.log(alpha) + N / 2.0 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * s))
                    - beta / 2.0 * (beta_de + 1e-5) - alpha / 2.0 * (alpha_de + 1e-5) - N / 2.0 * np.log(2 * np.pi))
        evidences.append(evidence / N)
    return float(np.mean(evidences))


@pytest.mark.parametrize("n, d", [(90, 12), (30, 60)])
def test_logme_matches_the_published_algorithm(n, d):
    rng = np.random.default_rng(n)
    y = np.repeat(["a", "b", "c"], n // 3)
    X = rng.normal(size=(n, d))
    X[y == "b", 0] += 1.0
    assert logme(X, y) == pytest.approx(_logme_reference(X, y), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("kind", ["logistic", "linear_svm"])
def test_copies_of_rows_do_not_leak_into_the_choice_of_C(kind):
    """Training on mirrors or views: C is chosen on the originals, as if the copies were not there.

    With exact copies (the worst case of a mirror), CV over originals+copies scores each image against
    its own copy and picks the weakest regularisation; on the originals it picks what the data supports."""
    from featx.heads import fit_with_copies

    rng = np.random.default_rng(3)
    y = np.repeat(["a", "b"], 30)
    X = rng.normal(size=(60, 40))
    X[:, 0] += np.where(y == "a", 0.6, -0.6)  # a weak signal in a lot of noise: strong regularisation wins
    honest = Head(kind).fit(X, y).chosen_["C"]
    leaked = Head(kind).fit(np.concatenate([X, X]), np.concatenate([y, y])).chosen_["C"]
    assert leaked > honest  # else this data could not tell the two apart
    trained = fit_with_copies(Head(kind), X, y, X, y)
    assert trained.chosen_["C"] == honest
    # the mirrored view of a flip-TTA head is such a copy
    block = BlockHead(Head(kind), [[(0, 40)]], [[(40, 80)]]).fit(np.concatenate([X, X], axis=1), y)
    assert block.heads_[0].chosen_["C"] == honest


def _decision(head, X):
    """The fitted classifier's decision values (an SVM's before calibration), through the head's scaling."""
    from sklearn.pipeline import Pipeline

    steps = head.pipeline_.steps
    clf = steps[-1][1]
    Z = Pipeline(steps[:-1]).transform(X) if len(steps) > 1 else X
    if hasattr(clf, "calibrated_classifiers_"):
        clf = clf.calibrated_classifiers_[0].estimator
    return clf.decision_function(Z)


@pytest.mark.parametrize("kind, C", [("logistic", 0.05), ("linear_svm", 0.05), ("rbf_svm", 1.0), ("logistic", None)])
def test_copies_keep_the_penalty_per_image(kind, C):
    """C * sum(loss) + ||w||^2 / 2: a copy of every row would halve the penalty per image.  Trained on
    the rows and an exact copy of each, a head must be the model the rows alone give (same decision
    values), whether C was given or chosen, and its frozen copy must refit with the same C."""
    from featx.heads import fit_with_copies

    rng = np.random.default_rng(5)
    y = np.repeat(["a", "b", "c"], 20)
    X = rng.normal(size=(60, 30))
    X[:, 0] += np.select([y == "a", y == "b"], [1.0, -1.0], 0.0)
    X_new = rng.normal(size=(25, 30))
    options = None if C is None else {"C": C}
    alone = Head(kind, options=options).fit(X, y)
    doubled = fit_with_copies(Head(kind, options=options), X, y, X, y)
    assert doubled.chosen_["C"] == (C if C is not None else alone.chosen_["C"])
    np.testing.assert_allclose(_decision(doubled, X_new), _decision(alone, X_new), rtol=1e-2, atol=1e-2)
    # the unscaled penalty gives another model: the check above can tell
    unscaled = Head(kind, options={"C": doubled.chosen_["C"]}).fit(np.concatenate([X, X]), np.concatenate([y, y]))
    assert np.abs(_decision(unscaled, X_new) - _decision(alone, X_new)).max() > 0.05
    refit = fit_with_copies(doubled.frozen(), X, y, X, y)
    np.testing.assert_allclose(_decision(refit, X_new), _decision(alone, X_new), rtol=1e-2, atol=1e-2)


def test_fuse_mean_with_one_block_warns_and_a_bad_second_backbone_names_backbones(data, cache, tmp_path, capsys):
    assert main(["fit-head", str(data), "--cache", str(cache), "--fuse", "mean", "--out", str(tmp_path / "a")]) == 0
    assert "featx: warning: --fuse mean averages one head per backbone" in capsys.readouterr().err
    assert main(["fit-head", str(data), "--cache", str(cache), "--backbones", "mobilenet_v2,foo",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("featx: error: --backbones: unknown backbone 'foo'"), err


def test_cache_ls_says_which_caches_hold_mirrored_images(data, tmp_path, capsys):
    from featx.extract import extract

    extract(data, "mobilenet_v2", cache_dir=tmp_path, flip=True, progress=False)
    assert main(["cache", "ls", "--cache", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "mobilenet_v2-" in line]
    assert len(lines) == 2 and sum(line.endswith("mirrored images (flip)") for line in lines) == 1, lines


def test_expected_cost_of_a_flip_candidate_grows_with_the_family():
    """Twice the rows: about twice the time for a linear head, far more for a kernel SVM (measured 4.4x on
    flowers5), so a flip candidate that cannot fit the budget is skipped instead of overrunning it."""
    from featx.selection import FLIP_COST_FACTOR, PRIOR_MIN_SECONDS, expected_seconds

    costs = {("logistic", "none"): 2.0, ("rbf_svm", "none"): 30.0}
    assert expected_seconds("logistic", "none", costs, 3000) == 2.0
    assert expected_seconds("logistic", "flip", costs, 3000) == 4.0
    assert expected_seconds("rbf_svm", "flip", costs, 3000) == 30.0 * FLIP_COST_FACTOR["rbf_svm"] >= 4 * 30.0
    costs[("rbf_svm", "flip")] = 141.0  # once timed, its own time
    assert expected_seconds("rbf_svm", "flip", costs, 3000) == 141.0
    assert expected_seconds("rbf_svm", "none", costs, 3000) == 30.0  # the flip timing does not replace it
    # untimed: the median of the timed families, raised to the family's prior
    assert expected_seconds("linear_svm", "none", costs, 3000) == 16.0
    assert expected_seconds("dense", "none", costs, 100) == PRIOR_MIN_SECONDS["dense"]


@pytest.mark.parametrize("extra", [["--head", "auto"], ["--tta", "flip"], ["--backbones", "mobilenet_v2,efficientnet_lite0"]])
def test_views_with_a_route_that_cannot_train_on_them_is_refused_not_ignored(data, tmp_path, capsys, extra):
    """Views are copies of one backbone's codes for one named head; with auto, flip or several backbones
    they were dropped while the header said "on 2 augmented views too".  One line, before any work."""
    cache = tmp_path / "cache"
    rc = main(["fit-head", str(data), "--cache", str(cache), "--views", "2", "--out", str(tmp_path / "o")] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("featx: error: --views: augmented views train one"), err
    assert not cache.exists() and not (tmp_path / "o").exists()


def test_auto_budget_zero_scores_the_first_candidate_and_says_flip_was_skipped(data, cache, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "o"
    assert main(["fit-head", str(data), "--cache", str(cache), "--head", "auto", "--tta", "flip", "--budget", "0",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    table = pd.read_csv(out / "selection.csv")
    assert (table["status"] == "done").sum() == 1 and (table[table["tta"] == "flip"]["status"] == "skipped").all()
    assert "flip TTA candidates were skipped: the time budget was spent" in text
    assert "flip TTA was a candidate; the chosen one does not use it" not in text
    assert json.loads((out / "metrics.json").read_text())["cv"]["flip_scored"] == 0


def test_misaligned_mirrors_and_copies_are_refused():
    from featx.errors import FeatxError
    from featx.heads import fit_with_copies

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 8)), np.repeat(["a", "b", "c"], 10)
    with pytest.raises(FeatxError, match="flipped view of block 'codes' has shape"):
        select_head({"codes": X}, y, flip={"codes": X[:, :4]}, budget=1)
    with pytest.raises(FeatxError, match="flipped view of block 'codes' has shape"):
        select_head({"codes": X}, y, flip={"codes": X[:20]}, budget=1)
    with pytest.raises(FeatxError, match="expected a number of seconds, got 'abc'") as exc:
        select_head({"codes": X}, y, budget="abc")
    assert exc.value.param == "budget"
    with pytest.raises(ValueError, match="30 copies but 0 labels"):
        fit_with_copies(Head("logistic"), X, y, X, [])
    with pytest.raises(ValueError, match="a copy needs the same columns"):
        fit_with_copies(Head("logistic"), X, y, X[:, :4], y)


def test_auto_is_made_above_the_heads_and_every_head_name_through_selection():
    from featx.errors import FeatxError
    from featx.selection import make_head as make_any_head

    auto = make_any_head("auto", class_weight="balanced", budget=5)
    assert isinstance(auto, AutoHead) and auto.options == {"budget": 5} and auto.class_weight == "balanced"
    assert type(make_any_head("knn")) is Head
    with pytest.raises(FeatxError, match="featx.selection"):
        make_head("auto")
    with pytest.raises(FeatxError, match="unknown head 'forest'; choose from auto, logistic"):
        make_any_head("forest")
    with pytest.raises(FeatxError, match="expected 'balanced' or None"):
        make_any_head("auto", class_weight="rare").check_params()
