"""Issue 14: one vocabulary, errors from the subcommand used, help with every default, validation before
work, the FeatureExtractor contract, outputs a reader trusts, the HTML report, no empty journal folders."""

import argparse
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import write_image
from featx.cli import build_parser, main
from featx.errors import FeatxError
from conftest import tinted

# ---- help: every option described, every default shown -----------------------------------------------


def test_every_option_has_help_text_and_shows_its_default():
    commands = build_parser().commands
    assert len(commands) >= 13
    missing = []
    for name, sub in commands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(f"{label}: no help text")
                continue
            if action.option_strings and "default" not in formatter._get_help_string(action).lower():
                missing.append(f"{label}: default not shown")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("command", ["extract", "fit-head", "predict", "sweep", "finetune", "baseline", "serve",
                                     "peek", "report", "cache", "advise", "demo"])
def test_help_output_lists_the_vocabulary_and_hides_old_spellings(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: featx {command}")
    assert "--tap " not in text and "--tap," not in text  # the old spelling is a hidden alias
    if command in ("extract", "fit-head", "sweep", "finetune"):
        assert "--taps A[,B]" in text
    if command not in ("cache",):
        assert "--cache DIR" in text and "DIR/engines" in text
    if command in ("fit-head", "predict", "sweep", "finetune", "baseline", "report", "demo"):
        assert "--out" in text
    defaults = {"finetune": ["(default: the recipe's, 4 or 10)", "(default: the recipe's, 32 or 16)", "(default: balanced)",
                             "(default: default)"],
                "baseline": ["(default: 20)", "(default: cnn1)", "72M parameters"],
                "serve": ["(default: 8000)", "(default: 5)"],
                "fit-head": ["(default: none)", "(default: pre_logits)"]}
    for needle in defaults.get(command, []):
        assert needle in " ".join(text.split()), needle


# ---- one vocabulary, old spellings as warned aliases ----------------------------------------------------


@pytest.mark.parametrize("command", ["fit-head", "finetune"])
def test_taps_everywhere_and_tap_is_a_warned_alias(command, capsys):
    parser = build_parser()
    args = parser.parse_args([command, "DATA", "--taps", "stage4"])
    assert args.taps == ["stage4"]
    assert parser.parse_args([command, "DATA"]).taps == ["pre_logits"]
    old = parser.parse_args([command, "DATA", "--tap", "stage3"])
    assert old.taps == ["stage3"]
    assert "--tap is now --taps" in capsys.readouterr().err


def test_class_weight_none_and_tta_values_parse_the_same_everywhere():
    parser = build_parser()
    for command in ("fit-head", "finetune", "baseline"):
        assert parser.parse_args([command, "D", "--class-weight", "none"]).class_weight == "none"
        assert parser.parse_args([command, "D", "--class-weight", "balanced"]).class_weight == "balanced"
    assert parser.parse_args(["predict", "B", "I"]).tta == "none"
    assert parser.parse_args(["predict", "B", "I", "--tta"]).tta == "views"  # the old bare flag
    assert parser.parse_args(["predict", "B", "I", "--tta", "views"]).tta == "views"
    for command in ("fit-head", "predict", "sweep", "extract"):
        args = parser.parse_args([command, "D", *(["I"] if command == "predict" else []), "--workers", "3",
                                  "--batch-size", "8"])
        assert (args.workers, args.batch_size) == (3, 8)


def test_cache_ls_takes_cache_like_every_command(tmp_path, capsys):
    assert main(["cache", "ls", "--cache", str(tmp_path)]) == 0
    assert f"no caches in {tmp_path}" in capsys.readouterr().out
    assert main(["cache", "ls", str(tmp_path)]) == 0  # the old positional form, for one release
    captured = capsys.readouterr()
    assert f"no caches in {tmp_path}" in captured.out and "is now 'featx cache ls --cache" in captured.err


# ---- errors from the subcommand used, with a "did you mean" ----------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["fit-head", "DATA", "--tapz", "stage4"], "unrecognized arguments: --tapz stage4; did you mean --taps?"),
    (["fit-head", "DATA", "--engine", "kera"], "invalid choice: 'kera'"),
    (["predict", "B", "I", "--tta", "view"], "did you mean 'views'?"),
    (["extract", "DATA", "--batch-size", "0"], "argument --batch-size: expected a whole number of 1 or more"),
    (["fit-head", "DATA", "--val-fraction", "1.5"], "expected a fraction in [0, 1)"),
    (["serve", "B", "--port", "99999"], "expected a port number"),
    (["baseline", "DATA", "--size", "4"], "expected a whole number of 16 or more"),
    (["fit-head", "DATA", "--class-weight", "balance"], "did you mean 'balanced'?"),
    (["fit-head", "DATA", "--val-frac", "0.1"], "did you mean --val-fraction?"),  # no silent abbreviations
])
def test_argument_errors_come_from_the_subcommand_with_a_suggestion(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"featx {argv[0]}: error:") and message in err  # the subcommand's, not featx's
    assert err.count("\n") == 1 and err.endswith(f"; see 'featx {argv[0]} --help'\n"), err  # no usage block


@pytest.mark.parametrize("argv", [["fit-head", "{root}/bird10"], ["extract", "{root}/bird10"],
                                  ["predict", "{root}/model.featz", "{root}"]])
def test_a_missing_path_beside_a_close_name_gets_did_you_mean(argv, tmp_path, capsys):
    (tmp_path / "birds10" / "wren").mkdir(parents=True)
    (tmp_path / "model.featx").write_bytes(b"x")
    code = main([a.format(root=tmp_path) for a in argv])
    err = capsys.readouterr().err
    right = "birds10" if "bird10" in argv[1] else "model.featx"
    assert code == 2 and err.count("\n") == 1, err
    assert err.rstrip().endswith(f"; did you mean {tmp_path / right}?"), err


def test_a_missing_path_with_nothing_close_gets_no_guess(tmp_path, capsys):
    (tmp_path / "leaves3").mkdir()
    assert main(["fit-head", str(tmp_path / "birds10")]) == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and "did you mean" not in err, err


def test_misspelt_command_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit):
        main(["fit-hed", "DATA"])
    assert "did you mean 'fit-head'?" in capsys.readouterr().err


def test_alias_suggests_its_new_name():
    parser = build_parser()
    assert parser.commands["fit-head"].suggestion("unrecognized arguments: --tapps") == "; did you mean --taps?"


# ---- validation before the first expensive or writing step -----------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv") / "colours"
    for c, name in enumerate(("red", "green", "blue")):
        for i in range(6):
            write_image(root / name / f"{name}{i}.jpg", tinted(300 + 10 * c + i, c))
    return root


@pytest.mark.parametrize("argv, message", [
    (["fit-head", "{data}", "--taps", "stage9"], "--taps: backbone mobilenet_v2 has no tap 'stage9'"),
    (["fit-head", "{data}", "--val-fraction", "0.6", "--test-fraction", "0.5"], "leaves nothing to train on"),
    (["fit-head", "{data}", "--weights", "{tmp}/missing.weights.h5"], "--weights:"),
    (["fit-head", "{tmp}/nope"], "DATA: {tmp}/nope: no such folder"),
    (["finetune", "{data}", "--taps", "stage4,pre_logits"], "--taps: finetune trains on one tap"),
    (["finetune", "{data}", "--init-head", "{tmp}/none.featx"], "--init-head:"),
    (["predict", "{tmp}/none.featx", "{data}"], "BUNDLE:"),
    (["sweep", "{data}", "--backbone", "resnet51"], "--backbone: unknown backbone 'resnet51'"),
    (["report", "--runs", "{tmp}/runs.csv"], "--runs:"),
    (["extract", "{data}", "--views", "2", "--engine", "ray"], "--views: augmented views run on the local engine"),
    (["baseline", "{data}", "--out", "{tmp}/file.txt"], "--out: {tmp}/file.txt is a file"),
])
def test_bad_options_fail_before_any_work_or_writing(argv, message, data, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    cache = tmp_path / "cache"
    argv = [a.format(data=data, tmp=tmp_path) for a in argv]
    code = main([*argv, "--cache", str(cache)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("featx: error: "), err
    assert message.format(tmp=tmp_path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no cache, runs log or output folder


def test_api_errors_name_the_parameter_not_a_flag(tmp_path):
    from featx.sklearn_api import FeatureExtractor

    with pytest.raises(FeatxError) as info:
        FeatureExtractor(taps=["stage9"]).fit()
    assert str(info.value).startswith("taps: ") and "--" not in str(info.value)
    with pytest.raises(FeatxError) as info:
        FeatureExtractor("resnet51").fit()
    assert str(info.value).startswith("backbone: ") and "--" not in str(info.value)
    with pytest.raises(FeatxError, match="^batch_size: "):
        FeatureExtractor(batch_size=0).fit()


# ---- FeatureExtractor: one row per input, progress on request ------------------------------------------


def test_feature_extractor_gives_one_row_per_input_and_refuses_folders(data, tmp_path, capsys):
    from featx.sklearn_api import FeatureExtractor, image_paths

    paths, labels = image_paths(data, return_labels=True)
    assert len(paths) == 18 and sorted(set(labels)) == ["blue", "green", "red"]
    fx = FeatureExtractor(cache_dir=tmp_path / "cache", taps="stage4").fit()
    X = [paths[0], paths[5], paths[0]]  # duplicates stay rows
    codes = fx.transform(X, progress=True)
    assert codes.shape == (3, 96) and codes.dtype == np.float32
    np.testing.assert_array_equal(codes[0], codes[2])
    assert "img" in capsys.readouterr().err  # the progress bar, asked for
    fx2 = FeatureExtractor(cache_dir=tmp_path / "cache2", taps="stage4").fit()
    fx2.transform(paths[:2])
    assert "img" not in capsys.readouterr().err  # not a terminal: quiet
    with pytest.raises(FeatxError, match=r"X\[1\] = .* is a folder; .*image_paths"):
        fx.transform([paths[0], str(data / "red")])


def test_fit_head_shows_progress_of_implicit_extraction_on_a_terminal_only(data, tmp_path, capsys, monkeypatch):
    import sys

    small = tmp_path / "small"
    for name in ("red", "green"):
        (small / name).mkdir(parents=True)
        for path in sorted((data / name).glob("*.jpg"))[:5]:
            shutil.copy(path, small / name / path.name)
    argv = ["fit-head", str(small), "--taps", "stage3", "--out", str(tmp_path / "out")]
    assert main([*argv, "--cache", str(tmp_path / "c1")]) == 0
    assert "img" not in capsys.readouterr().err  # not a terminal: quiet
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main([*argv, "--cache", str(tmp_path / "c2")]) == 0
    err = capsys.readouterr().err
    assert "extracting 10 images with mobilenet_v2" in err and "10/10" in err  # the line, then the bar


# ---- outputs: predict against labels, the per-class table, history from epoch 1 --------------------------


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory):
    from featx.training import fit_head

    root = tmp_path_factory.mktemp("fitted")
    result = fit_head(data, cache_dir=root / "cache", out_dir=root / "out")
    return result, root / "cache"


def test_predict_on_a_labelled_folder_adds_truth_and_accuracy_with_interval(fitted, data, tmp_path, capsys):
    result, cache = fitted
    out = tmp_path / "p.csv"
    assert main(["predict", str(result.bundle), str(data), "--cache", str(cache), "--out", str(out),
                 "--top", "2"]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(table.columns[:7]) == ["file", "id", "predicted", "probability", "true_label", "top2", "top2_prob"]
    assert "top1" not in table.columns  # predicted is the top class; no duplicate
    assert (table["true_label"] == [p.split("/")[-2] for p in table["file"]]).all()
    correct = int((table["predicted"] == table["true_label"]).sum())
    from featx.stats import format_accuracy

    assert f"accuracy against the folder names: {format_accuracy(correct, 18)}" in printed
    assert "test set is small" in printed
    # one probability format: the screen prints what the file holds
    assert main(["predict", str(result.bundle), str(data / "red" / "red0.jpg"), "--cache", str(cache)]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert re.search(r",\d\.\d{6},", row) and "true_label" not in row


def test_per_class_table_header_sits_over_its_numbers(fitted):
    result, _ = fitted
    lines = result.report.splitlines()
    header = next(i for i, line in enumerate(lines) if "precision" in line)
    row = lines[header + 1]
    for word in ("precision", "recall", "support"):
        end = lines[header].index(word) + len(word)
        assert row[end - 1] != " " and (end == len(row) or row[end] == " "), (lines[header], row)


def test_history_counts_epochs_from_one(tmp_path):
    from featx import _tf
    from featx.runs import history_logger

    keras = _tf.keras()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(8, 3)), np.arange(8) % 2
    model.fit(x, y, epochs=2, verbose=0, callbacks=[history_logger(tmp_path / "history.csv")])
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [1, 2]


def test_epoch_axis_has_whole_epochs_even_after_one_epoch(tmp_path, monkeypatch):
    import featx.runs as runs
    from featx.runs import epoch_ticks

    real, seen = runs.pyplot(), {}

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def subplots(self, *args, **kwargs):
            fig, axes = real.subplots(*args, **kwargs)
            seen["axes"] = axes
            return fig, axes

    monkeypatch.setattr(runs, "pyplot", Spy)
    runs.plot_curves({"loss": [1.0], "accuracy": [0.5], "val_loss": [1.2], "val_accuracy": [0.4]},
                     tmp_path / "curves.png", "one epoch")
    for ax in seen["axes"]:
        assert list(ax.get_xticks()) == [1.0] and ax.get_xlim()[0] > 0  # no 0.96, 0.98 .. ticks

    assert epoch_ticks(1) == [1] and epoch_ticks(3) == [1, 2, 3]
    ticks = epoch_ticks(57)
    assert ticks[0] == 1 and ticks[-1] == 57 and len(ticks) <= 10 and all(isinstance(t, int) for t in ticks)


def test_one_epoch_is_singular():
    from featx.cli import plural

    assert plural(1, "epoch") == "1 epoch" and plural(2, "epoch") == "2 epochs"


# ---- summary.csv, summary.png, the HTML report -----------------------------------------------------------


def _runs(n_datasets, tmp_path):
    rows = []
    for d in range(n_datasets):
        for route, backbone, acc in (("cached", "mobilenet_v2", 0.948), ("cached", "vgg16", 0.954),
                                     ("finetune", "mobilenet_v2", 0.97)):
            rows.append(dict(time="t", dataset=f"set{d}", route=route, backbone=backbone, taps="pre_logits",
                             head="logistic", split_id=f"s{d}", n_train=60, n_val=20, n_test=153, train_acc=1.0,
                             val_acc=0.9, test_acc=acc, extract_s=10.0, fit_s=1.0, output=""))
    path = tmp_path / f"runs{n_datasets}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_summary_csv_is_tidy_with_split_ids_and_intervals(tmp_path):
    from featx.report import SUMMARY_COLUMNS, write_report
    from featx.stats import wilson_interval

    result = write_report(_runs(2, tmp_path), tmp_path / "report")
    table = pd.read_csv(result["csv"])  # one header row
    assert list(table.columns) == SUMMARY_COLUMNS
    assert len(table) == 6 and set(table["split_id"]) == {"s0", "s1"}
    row = table[(table["dataset"] == "set0") & (table["backbone"] == "vgg16")].iloc[0]
    low, high = wilson_interval(round(0.954 * 153), 153)
    assert row["test_low"] == pytest.approx(low, abs=1e-4) and row["test_high"] == pytest.approx(high, abs=1e-4)
    md = result["markdown"].read_text()
    assert "| dataset | split | sizes |" in md and "60/20/153" in md and "0.954 [" in md


@pytest.mark.parametrize("n", [1, 12])
def test_summary_chart_stays_legible_at_any_number_of_datasets(n, tmp_path):
    from PIL import Image

    from featx.report import write_report

    result = write_report(_runs(n, tmp_path), tmp_path / "report")
    width, height = Image.open(result["chart"]).size
    assert 700 <= width <= 1100  # fixed width: grows down, not across
    assert height / (3 * n + n) >= 25  # at least ~25 px per bar row, however many datasets


def test_report_html_is_one_self_contained_page_that_chromium_renders(fitted, tmp_path, capsys):
    result, cache = fitted
    # a fine-tune-like run with learning curves beside its output
    ft = tmp_path / "ft"
    ft.mkdir()
    pd.DataFrame({"epoch": [1], "accuracy": [0.5], "loss": [1.0], "val_accuracy": [0.4], "val_loss": [1.2]}) \
        .to_csv(ft / "history.csv", index=False)
    runs = pd.read_csv(cache / "runs.csv")
    extra = runs.iloc[0].copy()
    extra["route"], extra["head"], extra["output"] = "finetune", "dense/top:2", str(ft / "model.keras")
    stale = runs.iloc[0].copy()  # an earlier run into the same output folder: its files are gone
    stale["test_acc"] = 0.1
    pd.concat([stale.to_frame().T, runs, extra.to_frame().T]).to_csv(tmp_path / "runs.csv", index=False)
    assert main(["report", "--runs", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "rep"), "--html"]) == 0
    assert "report.html" in capsys.readouterr().out
    page = tmp_path / "rep" / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text and "<script" not in text
    # chart, fit-head's confusion matrix and codes map (featx.gallery), fine-tune's curves
    assert text.count('src="data:image/png;base64,') == 4

    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium installed (Debian package 'chromium')")
    requests = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        pg = browser.new_page(viewport={"width": 1100, "height": 900})
        pg.on("request", lambda r: requests.append(r.url))
        pg.goto(page.as_uri())
        pg.wait_for_load_state("load")
        assert pg.title() == "featx report"
        cells = pg.locator("#summary-table tbody tr").first.locator("td").all_inner_texts()
        assert cells[0] == "colours" and re.fullmatch(r"\d+/\d+/\d+", cells[2])
        assert re.match(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", cells[3])
        assert pg.locator("section.run").count() == 2  # the stale run is left out, and said so
        assert "1 earlier run(s) whose output folder a later run reused" in pg.inner_text("body")
        assert pg.locator("figure.confusion img").count() >= 1 and pg.locator("figure.curves img").count() == 1
        widths = pg.eval_on_selector_all("img", "els => els.map(e => e.complete && e.naturalWidth)")
        assert widths and all(w > 100 for w in widths)  # every image decodes
        facts = pg.locator("section.run").first.inner_text()
        assert "test accuracy [95% interval]" in facts and "(n=" in facts
        pg.screenshot(path=str(tmp_path / "rep" / "report.png"), full_page=True)
        browser.close()
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []


# ---- no empty journal folder after a clean run -------------------------------------------------------------


def test_a_clean_extraction_leaves_no_journal_folder(data, tmp_path):
    from featx.extract import extract

    report = extract(data, taps=["stage4"], cache_dir=tmp_path / "cache")
    assert report.computed == 18
    left = [p for p in (tmp_path / "cache").rglob("*") if p.is_dir() and "journal" in p.name]
    assert left == []  # whatever the cache layout names its journal folder
    assert list((tmp_path / "cache").rglob("*.lock"))  # the lock file stays: it is what the flock holds
