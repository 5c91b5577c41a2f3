"""Outputs safe to open (issue 27): formula-looking names neutralised in every CSV and Markdown featx writes (numbers
stay numbers), and a report that renders what it can, names what it skipped, and draws bounded figures."""

import csv

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featx.cells import FORMULA_STARTS, markdown_cell, safe_cell, safe_frame

EVIL = ["=HYPERLINK(\"http://x\",\"y\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(1)", "\tlead", "\rlead"]


@pytest.mark.parametrize("text", EVIL)
def test_formula_looking_text_is_prefixed_with_a_quote(text):
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["-0.5", "+3", "-", "plain", "a=b", 3, -2.5, None, "1e-3"])
def test_numbers_and_plain_text_stay_as_they_are(value):
    assert safe_cell(value) == value


def test_frames_keep_numeric_columns_and_markdown_escapes_pipes():
    frame = pd.DataFrame({"name": ["=x", "ok"], "delta": [-0.25, 1.0], "n": [-3, 4]})
    safe = safe_frame(frame)
    assert safe["name"].tolist() == ["'=x", "ok"] and frame["name"].tolist() == ["=x", "ok"]  # a copy
    assert safe["delta"].tolist() == [-0.25, 1.0] and safe["n"].dtype == frame["n"].dtype
    assert markdown_cell("a|b\nc") == "a\\|b c" and markdown_cell("@x") == "'@x"


def _cells(path):
    with open(path, newline="") as f:
        return [cell for row in csv.reader(f) for cell in row]


def _assert_neutral(cells):
    """No cell a spreadsheet would evaluate: formula-looking text (plain numbers and a lone "-" are fine)."""
    def number(c):
        try:
            float(c)
        except ValueError:
            return False
        return c == c.strip()

    live = [c for c in cells if c.startswith(FORMULA_STARTS) and c != "-" and not number(c)]
    assert live == [], live


def test_every_csv_writer_neutralises_names(tmp_path):
    from featx.cache.exporting import write_csv
    from featx.prediction.table import prediction_table
    from featx.runs import append_run

    classes = ["=a", "-b", "c"]
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    prediction_table(["/d/=cmd.jpg", "/d/@x.png"], proba, classes, 2, tmp_path / "pred.csv", true_labels=["=a", "c"])
    cells = _cells(tmp_path / "pred.csv")
    _assert_neutral(cells)
    assert "'=cmd" in cells and "'=a" in cells and "p_'=a" not in cells  # header "p_=a" starts with p
    assert float(next(c for c in cells if c.startswith("0.7"))) == pytest.approx(0.7)
    append_run(tmp_path / "runs.csv", {"dataset": "=evil", "route": "cached", "backbone": "-x", "test_acc": 0.5})
    _assert_neutral(_cells(tmp_path / "runs.csv"))
    assert "'=evil" in _cells(tmp_path / "runs.csv")
    write_csv(tmp_path / "meta.csv", {"path": ["@a.jpg", "b.jpg"], "label": ["+1", "=x"], "n": [-1, 2]})
    cells = _cells(tmp_path / "meta.csv")
    _assert_neutral(cells)
    assert cells == ["path", "label", "n", "'@a.jpg", "+1", "-1", "b.jpg", "'=x", "2"]  # numbers stay numbers


_RUN = dict(time="t", dataset="dogs", route="cached", backbone="vgg16", taps="stage5", head="logistic",
            split_id="s1", n_train=8, n_val=2, n_test=40, train_acc=1.0, val_acc=0.5, test_acc=0.5,
            extract_s=1.0, fit_s=1.0, output="")


def test_report_renders_what_it_can_and_names_what_it_skipped(tmp_path):
    from featx.report import write_report

    good = tmp_path / "good" / "model.featx"
    bad = tmp_path / "bad" / "model.featx"
    for folder, text in ((good.parent, "epoch,loss,accuracy\n0,1.0,0.5\n1,0.5,0.8\n"),
                         (bad.parent, "epoch,loss\n0,\"unterminated\n1,zz\n")):
        folder.mkdir()
        (folder / "history.csv").write_text(text)
    runs = pd.DataFrame([dict(_RUN, dataset="=HYPERLINK(1)", output=str(good)),
                         dict(_RUN, dataset="costs $\\undefinedcmd$ in dollars", backbone="-neg", output=str(bad)),
                         dict(_RUN, dataset="broken", test_acc="oops"),
                         dict(_RUN, dataset="@birds", test_acc=0.75)]).astype(str)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    result = write_report(tmp_path / "runs.csv", tmp_path / "report", html=True)
    md = result["markdown"].read_text()
    assert "| '=HYPERLINK(1) |" in md and "| '@birds |" in md and "costs $\\undefinedcmd$ in dollars" in md
    _assert_neutral(_cells(result["csv"]))
    assert sorted(pd.read_csv(result["csv"])["test_acc"]) == [0.5, 0.5, 0.75]  # the bad line left out, numbers kept
    skipped = result["skipped"]
    assert any(s.startswith("line 4: test_acc is 'oops'") for s in skipped), skipped
    assert any("bad/history.csv: unreadable" in s for s in skipped), skipped
    assert len(result["curves"]) == 1 and Image.open(result["chart"]).size[0] > 500
    assert "Skipped (the rest is reported)" in md and "oops" in result["html"].read_text()


def test_the_chart_is_bounded_however_many_datasets(tmp_path, monkeypatch):
    """2,000 datasets drew a 131-megapixel PNG: the chart keeps the best MAX_CHART_BARS rows (8 here, to keep
    the test fast; 60 by default), and no figure passes MAX_FIGURE_INCHES; every row stays in the tables."""
    import featx.report as report
    from featx.runs import MAX_FIGURE_INCHES

    monkeypatch.setattr(report, "MAX_CHART_BARS", 8)
    runs = pd.DataFrame([dict(_RUN, dataset=f"d{i:03d}", test_acc=round(i / 40, 3)) for i in range(40)])
    runs.to_csv(tmp_path / "runs.csv", index=False)
    result = report.write_report(tmp_path / "runs.csv", tmp_path / "report")
    width, height = Image.open(result["chart"]).size
    assert height < (0.32 * 2 * 8 + 2) * 110 and width < 1000, (width, height)  # 40 bars would need 2,900 px
    assert height <= MAX_FIGURE_INCHES * 110
    assert len(result["table"]) == 40 and result["markdown"].read_text().count("\n| d") == 40


@pytest.mark.parametrize("name", ["=x", "'=x", "''=x", "'hello", "-", "-0.5", "@out2/model.featx", "plain", "\tz"])
def test_featx_reads_its_own_neutralised_cells_back_to_the_same_text(name):
    from featx.cells import plain_cell

    assert plain_cell(safe_cell(name)) == name


def test_a_carriage_return_in_a_name_stays_in_its_cell(tmp_path):
    """A hostile file name holding "\\r" split its row of the predictions CSV: 8 rows read back as 18."""
    from featx.prediction.table import prediction_table

    paths = [f"/d/a\rb{i}.jpg" for i in range(8)]
    proba = np.tile([[0.75, 0.25]], (8, 1))
    prediction_table(paths, proba, ["x\ry", "z"], 1, tmp_path / "pred.csv")
    back = pd.read_csv(tmp_path / "pred.csv")
    assert len(back) == 8
    assert back.filter(like="p_").sum(axis=1).round(6).eq(1.0).all()  # every probability under its own column


def test_the_report_reads_the_runs_log_names_without_the_spreadsheet_quote(tmp_path):
    """A run written with --out=@out2 showed as '@out2/model.featx in report.html and lost its gallery."""
    from featx.report import read_runs
    from featx.runs import append_run

    append_run(tmp_path / "runs.csv", dict(_RUN, dataset="@evil", output="@out2/model.featx"))
    runs = read_runs(tmp_path / "runs.csv")
    assert runs.loc[0, "dataset"] == "@evil" and runs.loc[0, "output"] == "@out2/model.featx"
