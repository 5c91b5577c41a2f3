"""The same number everywhere: one run's validation figure reads the same, and says what it is, on the
console, in metrics.json, the runs log, the report (page and summary) and the server's model information;
the summary ranks runs only against runs whose validation figure is of the same kind.

What it can catch: the report rebuilding an auto run's cross-validated accuracy over the validation split's
n (0.833 over 78 images shown as 0.812 [0.570, 0.934] (n=16)); a summary that picks between a
cross-validated and a held-out figure as if they were one measure; a console line without n or interval."""

import json
import re

import pandas as pd
import pytest

from newuser import newuser  # noqa: F401 -- the shared new user's folder (a fixture)
from featx.cli import main
from featx.report import read_runs, summary_table, write_report
from featx.runs import RUN_COLUMNS, append_run
from featx.stats import accuracy_from_counts, describe_accuracy, stated_accuracies


@pytest.fixture(scope="module")
def auto_run(newuser, tmp_path_factory):  # noqa: F811
    """The shared photos/ (its codes cached), with a runs log and outputs of this module's own."""
    root = tmp_path_factory.mktemp("same")
    (root / "cache").mkdir()
    for entry in (newuser / "cache").iterdir():  # the cached codes, not the other tests' runs log
        if entry.name != "runs.csv":
            (root / "cache" / entry.name).symlink_to(entry)
    return root, newuser / "photos"


@pytest.mark.slow
def test_an_auto_run_shows_one_validation_figure_everywhere(auto_run, capsys):
    root, data = auto_run
    cache, out = root / "cache", root / "out"
    assert main(["fit-head", str(data), "--head", "auto", "--budget", "5", "--taps", "stage3", "--cache", str(cache),
                 "--out", str(out)]) == 0
    console = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    v = metrics["validation"]
    assert v["kind"] == "cv" and v["n"] == metrics["n"]["train"] + metrics["n"]["val"]  # the folds held train+val
    sentence = describe_accuracy(v)  # "cross-validated accuracy 0.xxx [l, h] (n=N)"
    assert sentence.startswith("cross-validated accuracy ") and f"(n={v['n']})" in sentence
    assert sentence in console, console
    runs = pd.read_csv(cache / "runs.csv")
    assert runs.iloc[-1]["val_kind"] == "cv" and runs.iloc[-1]["val_n"] == v["n"]
    assert runs.iloc[-1]["val_acc"] == pytest.approx(v["accuracy"], abs=1e-4)
    report = write_report(cache / "runs.csv", root / "report", html=True)
    page = report["html"].read_text()
    assert f"<th>cross-validated accuracy [95% interval]</th><td>{v['text']}</td>" in page, page[-3000:]
    assert f"(n={metrics['n']['val']})</td>" not in page.split("cross-validated accuracy")[1][:80]
    summary = pd.read_csv(report["csv"])
    assert summary.iloc[0]["val_kind"] == "cv" and summary.iloc[0]["val_n"] == v["n"]
    assert stated_accuracies(metrics)["validation"] == sentence  # what serve's /health shows
    assert stated_accuracies(metrics)["test"] == describe_accuracy(
        accuracy_from_counts(metrics["test"]["correct"], metrics["test"]["n"], "test"))


def row(head, val, test, kind=""):
    return {"dataset": "d", "route": "cached", "backbone": "b", "taps": "t", "head": head, "split_id": "s",
            "n_train": 60, "n_val": 16, "n_test": 20, "train_acc": 1.0, "val_acc": val, "test_acc": test,
            "extract_s": 1.0, "fit_s": 1.0, "output": f"{head}/model.featx", "val_kind": kind,
            "val_n": 76 if kind == "cv" else None}


def test_the_summary_ranks_only_comparable_validation_figures(tmp_path):
    log = tmp_path / "runs.csv"
    for r in (row("logistic", 0.90, 0.70, "val"), row("auto", 0.95, 0.60, "cv"), row("knn", 0.80, 0.90, "val"),
              row("auto", 0.85, 0.65, "cv")):
        append_run(log, r)
    summary = summary_table(read_runs(log))
    picked = dict(zip(summary["val_kind"], summary["head"] + " " + summary["test_acc"].astype(str)))
    # a CV accuracy of 0.95 does not outrank the held-out 0.90: each kind is its own cell
    assert picked == {"val": "logistic 0.7", "cv": "auto 0.6"}, summary


def test_a_runs_log_begun_before_val_kind_stays_aligned_and_reads_auto_as_cv(tmp_path):
    log = tmp_path / "runs.csv"
    old = [c for c in RUN_COLUMNS if c not in ("val_kind", "val_n")]
    log.write_text(",".join(old) + "\n")
    append_run(log, row("auto", 0.95, 0.60, "cv"))
    append_run(log, row("logistic", 0.90, 0.70, "val"))
    assert log.read_text().splitlines()[0] == ",".join(old)  # the header is kept: rows stay aligned
    runs = read_runs(log)
    assert list(runs["val_kind"]) == ["cv", "val"] and runs.loc[0, "val_n"] == 76  # n_train + n_val


def test_console_validation_line_names_kind_n_and_interval():
    from featx.training.fit_text import validation_text

    m = {"evaluated_on": "test", "refit": True, "validation": accuracy_from_counts(65, 78, "cv"),
         "cv": {"sd": 0.041}}
    assert validation_text(m) == "cross-validated accuracy 0.833 [0.735, 0.900] (n=78), ± 0.041 over 3 folds"
    m = {"evaluated_on": "test", "refit": True, "validation": accuracy_from_counts(13, 16, "val")}
    assert re.fullmatch(r"held-out validation accuracy 0\.812 \[0\.570, 0\.934\] \(n=16\) \(before refit\)",
                        validation_text(m))


# ---- small samples flagged everywhere: sweep, advise, predict ---------------------------------------------

@pytest.mark.slow
def test_sweep_gives_intervals_and_the_small_test_warning(auto_run, capsys):
    from featx.stats import wilson_interval

    root, data = auto_run
    out = root / "sweep"
    assert main(["sweep", str(data), "--taps", "stage2,stage3", "--cache", str(root / "cache"), "--out", str(out)]) == 0
    console = capsys.readouterr().out
    table = pd.read_csv(out / "sweep.csv")
    n_test = int(re.search(r"test \[95% interval\] \(n=(\d+)\)", console)[1])
    assert 3 <= n_test <= 7  # the stored split of 24 images holds out about 20%
    for r in table.itertuples():
        low, high = wilson_interval(round(r.test_acc * n_test), n_test)
        assert (r.test_low, r.test_high) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))
        assert f"{r.test_acc:.3f} [{low:.3f}, {high:.3f}]" in console
    assert f"warning: the test set is small ({n_test} images" in console and "should not rank taps" in console


def test_advise_probes_carry_intervals_and_the_small_sample_warning():
    from featx.advise import Advice, small_sample_warning

    y = ["a"] * 9 + ["b"] * 4
    evidence = {"dataset": "d", "images": 16, "classes": 2, "median_per_class": 8, "large_per_class": 500,
                "large": False, "rows_scored": 13, "probe_folds": 3, "scores": {"pre_logits": {"logme": 1.0,
                "probe": 12 / 13}, "stage4": {"logme": 0.5, "probe": None}}, "best": "pre_logits",
                "best_probe": 12 / 13, "room": 0.05, "warning": small_sample_warning(y)}
    text = Advice("small, similar", "a head", ["featx fit-head d"], evidence).text()
    assert "probe 0.923 [0.667, 0.986] (n=13)  <- best" in text, text
    assert "cross-validated on few images (13, smallest class 4)" in text and "should not rank taps" in text
    assert small_sample_warning(["a"] * 30 + ["b"] * 30) is None
