"""The study's write-up from the runs log: a summary table (Markdown and tidy CSV), a chart, learning
curves, and (``html=True``) one self-contained HTML page with all of it.

Each cell of the summary is the run with the best *validation* accuracy for its dataset, split, backbone and
route (model selection never looks at test), reported by its *test* accuracy with a 95% Wilson interval
(:mod:`featx.stats`).  Only comparable validation figures are compared: a held-out validation accuracy and a
cross-validated one (``--head auto``) are ranked apart, in separate columns.  Runs of one dataset on
different splits are separate rows, never compared side by side silently.
"""

from __future__ import annotations

import base64
import html
import math
import time
from pathlib import Path

import numpy as np

from featx.atomic import whole, write_text
from featx.cells import markdown_cell, plain_cell, write_csv
from featx.gallery import CARD_CSS, PAGE_CSS, ThumbnailBudget, run_section
from featx.names import unshown
from featx.runs import MAX_FIGURE_INCHES, RUN_COLUMNS, plain_text, plot_curves, pyplot
from featx.stats import KINDS, SMALL_TEST_IMAGES, accuracy_of_rate, wilson_interval

ROUTE_ORDER = {"cached": 0, "finetune": 1, "baseline": 2}

#: Columns of ``summary.csv``: one header row, one row per summary cell.
SUMMARY_COLUMNS = ["dataset", "split_id", "backbone", "route", "head", "taps", "n_train", "n_val", "n_test",
                   "val_acc", "test_acc", "test_low", "test_high", "seconds", "output", "val_kind", "val_n"]


#: Columns of the runs log that hold numbers (counts, accuracies, seconds).
NUMERIC_RUN_COLUMNS = ["n_train", "n_val", "n_test", "train_acc", "val_acc", "test_acc", "extract_s", "fit_s",
                       "val_n"]

#: Columns a runs log must have for a summary (the others may be missing: filled in empty).
REQUIRED_RUN_COLUMNS = ["dataset", "route", "backbone", "test_acc"]

#: Of those, the text columns every run must fill (a run without them would drop out of the summary).
_KEY_COLUMNS = ["dataset", "route", "backbone"]

#: Most bars in ``summary.png`` (the best by test accuracy; every row stays in the tables).
MAX_CHART_BARS = 60
#: Most learning-curve plots drawn (the latest runs'; 2,000 runs took over a minute).
MAX_CURVES = 50

#: Largest image count accepted in the runs log (larger is a corrupt cell, and overflows the intervals).
MAX_COUNT = 10 ** 12

_COUNTS, _ACCURACIES, _SECONDS = ["n_train", "n_val", "n_test", "val_n"], ["train_acc", "val_acc", "test_acc"], \
    ["extract_s", "fit_s"]
_ALLOWED = {**{c: f"a whole number from 0 to {MAX_COUNT:.0e}, or empty" for c in _COUNTS},
            **{c: "a number from 0 to 1, or empty (no such split)" for c in _ACCURACIES},
            **{c: "a finite number >= 0, or empty" for c in _SECONDS}}


def _count(value) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def _interval(acc, n) -> tuple[float, float] | tuple[None, None]:
    n = _count(n)
    if acc is None or (isinstance(acc, float) and math.isnan(acc)) or not n:
        return None, None
    return wilson_interval(int(round(acc * n)), n)


def _bad_cells(raw, values, column):
    """Per row, why its cell of ``column`` (``raw`` text, ``values`` parsed) is not allowed; "" where it is."""
    import pandas as pd

    filled = raw != ""
    why = pd.Series("", index=raw.index, dtype=object)
    finite = values.abs() < math.inf  # False for NaN too
    why[filled & values.isna()] = "not a number"
    why[filled & values.notna() & ~finite] = "not finite"
    ok = filled & finite
    if column in _COUNTS:
        why[ok & ((values < 0) | (values > MAX_COUNT))] = "out of range"
        why[ok & (values >= 0) & (values <= MAX_COUNT) & (values != values.round())] = "not a whole number"
    elif column in _ACCURACIES:
        why[ok & ((values < 0) | (values > 1))] = "out of range"
    else:
        why[ok & (values < 0)] = "negative"
    return why


def read_runs(runs_csv, skip_bad: bool = False):
    """The runs log as a DataFrame with every column of :data:`featx.runs.RUN_COLUMNS` (missing ones empty).

    ``skip_bad``: leave out the lines with a bad cell instead of raising, and list them, one line each
    (``"line 7: test_acc is 'x', ..."``), in ``attrs["skipped"]`` (a report renders what it can).

    Every row is checked once: counts (``n_*``) are whole numbers >= 0, accuracies (``*_acc``) lie in
    [0, 1], seconds (``*_s``) are finite and >= 0; each may be empty (a run without a test set).  Blank
    lines are skipped.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The log has no runs, lacks one of :data:`REQUIRED_RUN_COLUMNS`, or has a row with an empty
        dataset/route/backbone or a count, accuracy or seconds cell that is not a number in its range (a
        stray header line from concatenating two logs, a hand edit): the message names the first such
        line (the header is line 1), its column, the value and what is allowed.
    """
    import pandas as pd

    runs_csv = Path(runs_csv)
    if not runs_csv.exists():
        raise FileNotFoundError(runs_csv)
    # as text, with no "NA"/"nan" guessing: an empty cell is empty, a literal "nan" or "inf" is an error;
    # blank lines kept as rows so that row i is line i + 2
    raw = pd.read_csv(runs_csv, dtype=str, keep_default_na=False, skip_blank_lines=False).fillna("")
    raw = raw.map(plain_cell)  # the log's cells were made spreadsheet-safe (featx.cells): read the names back
    raw = raw[(raw != "").any(axis=1)]
    missing = [c for c in REQUIRED_RUN_COLUMNS if c not in raw]
    if missing:
        raise ValueError(f"its header (line 1) lacks the column(s) {', '.join(missing)} that a summary needs; "
                         "give the runs.csv that fit-head, finetune and baseline write")
    if raw.empty:
        raise ValueError(f"{runs_csv} has no runs")
    for column in RUN_COLUMNS:  # an older log without the newer columns: empty
        if column not in raw:
            raw[column] = ""
    problems = []  # (row, column, value, why)
    for column in _KEY_COLUMNS:
        empty = raw[column].str.strip() == ""
        problems += [(row, column, "", "empty") for row in raw.index[empty]]
    runs = raw.replace("", np.nan)
    for column in NUMERIC_RUN_COLUMNS:
        values = pd.to_numeric(raw[column].str.strip(), errors="coerce")
        why = _bad_cells(raw[column].str.strip(), values, column)
        problems += [(row, column, raw.at[row, column], why[row]) for row in raw.index[why != ""]]
        runs[column] = values
    skipped = []
    if problems:
        first = {}
        for p in sorted(problems, key=lambda p: (p[0], RUN_COLUMNS.index(p[1]))):
            first.setdefault(p[0], p)
        messages = {row: _problem_text(*p) for row, p in first.items()}
        if not skip_bad or len(first) == len(runs):
            row = min(messages)
            raise ValueError(f"{messages[row]}; fix or remove that line ({len(first)} such line(s))")
        skipped = [messages[row] for row in sorted(messages)]
        runs = runs.drop(index=list(first))
    runs["split_id"] = runs["split_id"].fillna("-").astype(str)  # an old log without split ids: one split "-"
    kind = raw["val_kind"].str.strip().replace("", "val").loc[runs.index]  # no column: held-out validation
    bad = ~kind.isin(["val", "cv"])
    if bad.any():
        row = kind.index[bad][0]
        raise ValueError(f"line {row + 2}: val_kind is {raw.at[row, 'val_kind']!r}; allowed: val, cv or empty; "
                         f"fix or remove that line ({int(bad.sum())} such line(s))")
    # a log begun before val_kind: --head auto's figure was its cross-validation over train+val (with refit)
    older_auto = ((raw["val_kind"].str.strip() == "") & (raw["head"].str.strip() == "auto")).loc[runs.index]
    kind[older_auto] = "cv"
    runs.loc[older_auto & runs["val_n"].isna(), "val_n"] = (runs["n_train"] + runs["n_val"])[older_auto]
    runs["val_kind"] = kind
    runs = runs.reset_index(drop=True)
    runs.attrs["skipped"] = skipped
    return runs


def _problem_text(row, column, value, why) -> str:
    """One bad line of the runs log in words (the header is line 1)."""
    problem = f"{column} is empty; every run names its dataset, route and backbone" if why == "empty" else \
        f"{column} is {value!r}, {why}; allowed: {_ALLOWED[column]}"
    return f"line {row + 2}: {problem}"


def summary_table(runs):
    """One row per (dataset, split, backbone, route, kind of validation figure): the run with the best one.

    A cross-validated accuracy (``--head auto``) and a held-out validation accuracy are not comparable, so
    runs are ranked only against runs whose figure is of the same kind; each kind is its own cell.

    Parameters
    ----------
    runs : pandas.DataFrame
        The runs log (:func:`read_runs`).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SUMMARY_COLUMNS`; ``seconds`` is extraction plus fitting, ``test_low``/``test_high``
        the 95% Wilson interval of ``test_acc`` (empty when ``n_test`` is unknown).  Sorted by dataset,
        split, route, backbone.
    """
    import pandas as pd

    runs = runs.copy()
    runs["seconds"] = runs["extract_s"].fillna(0) + runs["fit_s"].fillna(0)
    runs["_val"] = runs["val_acc"].fillna(-1)
    runs["_order"] = runs["route"].map(ROUTE_ORDER).fillna(9)
    best = (runs.reset_index().sort_values(["_val", "index"])
            .groupby(["dataset", "split_id", "backbone", "route", "val_kind"], sort=False).tail(1))
    best = best.sort_values(["dataset", "split_id", "_order", "backbone"])
    low, high = zip(*[_interval(a, n) for a, n in zip(best["test_acc"], best["n_test"])]) if len(best) else ((), ())
    best = best.assign(test_low=list(low), test_high=list(high), val_n=best["val_n"].astype("Int64"))
    return pd.DataFrame(best[SUMMARY_COLUMNS]).reset_index(drop=True)


def _row_label(dataset: str, split: str, splits_of: dict) -> str:
    return dataset if splits_of[dataset] == 1 else f"{dataset} [split {split}]"


def _duration(seconds) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _cell(row) -> str:
    head = row.head if isinstance(row.head, str) else "-"
    if row.test_acc != row.test_acc:
        return f"- ({_duration(row.seconds)}, {head})"
    interval = "" if row.test_low is None or row.test_low != row.test_low else \
        f" [{row.test_low:.3f}, {row.test_high:.3f}]"
    return f"{row.test_acc:.3f}{interval} ({_duration(row.seconds)}, {head})"


def _sizes(row) -> str:
    n = [_count(getattr(row, f"n_{s}")) for s in ("train", "val", "test")]
    return "" if all(v is None for v in n) else "/".join("-" if v is None else str(v) for v in n)


def _column(backbone, route, kind) -> str:
    """``mobilenet_v2 cached``; runs chosen by a cross-validated figure get their own column, ``... (cv)``."""
    return f"{backbone} {route}" + (" (cv)" if kind == "cv" else "")


def _figure(run, split: str) -> tuple[str, str]:
    """(label, text) of a run's accuracy on ``split``, from :mod:`featx.stats` as the console printed it:
    the validation figure says whether it is held out or cross-validated, with its own n."""
    kind = "cv" if split == "val" and run.get("val_kind") == "cv" else split
    n = _count(run["val_n"] if kind == "cv" else run[f"n_{split}"])
    acc = run[f"{split}_acc"]
    label = f"{KINDS[kind]} accuracy [95% interval]"
    if acc != acc:
        return label, "-" if n is None else f"- (n={n})"
    if not n:
        return label, f"{acc:.3f}"
    return label, accuracy_of_rate(acc, n, kind)["text"]


def pivot(summary):
    """The Markdown/HTML layout of a summary: rows dataset (and split), columns ``<backbone> <route>``.

    Returns
    -------
    rows : list of (label, split_id, sizes, {column: cell text})
    columns : list of str
    """
    splits_of = summary.groupby("dataset")["split_id"].nunique().to_dict()
    ordered = summary.assign(_o=summary["route"].map(ROUTE_ORDER).fillna(9), _k=summary["val_kind"] == "cv")
    ordered = ordered.sort_values(["_o", "backbone", "_k"])
    columns = list(dict.fromkeys(_column(b, r, k) for b, r, k in
                                 zip(ordered["backbone"], ordered["route"], ordered["val_kind"])))
    rows = {}
    for row in summary.itertuples(index=False):
        label = _row_label(row.dataset, row.split_id, splits_of)
        entry = rows.setdefault(label, [label, row.split_id, _sizes(row), {}])
        entry[3][_column(row.backbone, row.route, row.val_kind)] = _cell(row)
        entry[2] = entry[2] or _sizes(row)
    return [tuple(r) for r in rows.values()], columns


NOTE = ("Cells: test accuracy [95% Wilson interval] (training time incl. any extraction done by that run, head). "
        "Each cell is the run with the best validation accuracy; '(cv)' columns hold runs chosen by a "
        "cross-validated accuracy (--head auto), ranked only among themselves. Sizes: train/val/test images.")


def write_report(runs_csv, out_dir, html: bool = False) -> dict:
    """Write the study's summary of a runs log.

    Parameters
    ----------
    runs_csv : str or Path
        The runs log (``runs.csv`` in a cache folder).
    out_dir : str or Path
        Folder for ``summary.md``, ``summary.csv``, ``summary.png``, ``curves-*.png`` and, with ``html``,
        ``report.html`` (created).
    html : bool
        Also write ``report.html``: one self-contained page (images embedded, no external URLs).

    Returns
    -------
    dict
        ``markdown``, ``csv``, ``chart``, ``html`` (a Path, or None), ``curves`` (list of Path) and
        ``table`` (the summary DataFrame).

    Raises
    ------
    FileNotFoundError
        ``runs_csv`` does not exist.
    ValueError
        The runs log has no runs, lacks a needed column or has a bad cell (:func:`read_runs`).
    """
    runs_csv, out_dir = Path(runs_csv), Path(out_dir)
    runs = read_runs(runs_csv, skip_bad=True)
    skipped = list(runs.attrs["skipped"])
    summary = summary_table(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    with whole(out_dir / "summary.png") as tmp:  # each file whole or absent (featx.atomic)
        plot_summary(summary, tmp)
    chart = out_dir / "summary.png"
    curves = _learning_curves(runs, out_dir, skipped)
    write_markdown(summary, out_dir / "summary.md", skipped)
    with whole(out_dir / "summary.csv") as tmp:
        write_csv(summary, tmp, index=False, float_format="%.4f")
    page = None
    if html:
        page = write_text(out_dir / "report.html", render_html(runs_csv, runs, summary, chart, curves, skipped))
    return {"markdown": out_dir / "summary.md", "csv": out_dir / "summary.csv", "chart": chart, "html": page,
            "curves": sorted(set(curves.values())), "table": summary, "skipped": skipped}


def write_markdown(summary, path: Path, skipped: list) -> Path:
    """``summary.md``: the pivoted table (names spreadsheet-safe and ``|``-escaped, :mod:`featx.cells`; the
    cells featx computes, such as ``- (1.0 s, dense)``, as they are), the note, and what the report left out."""
    rows, columns = pivot(summary)
    lines = ["| " + " | ".join(markdown_cell(h) for h in ["dataset", "split", "sizes", *columns]) + " |",
             "|" + "---|" * (len(columns) + 3)]
    for label, split, sizes, cells in rows:  # names come from folders: neutralised; featx's own cells as they are
        lines.append("| " + " | ".join([markdown_cell(label), markdown_cell(split), sizes or "-",
                                        *(cells.get(c, "").replace("|", "\\|") for c in columns)]) + " |")
    text = "\n".join(lines) + "\n\n" + NOTE + "\n"
    if skipped:
        text += "\nSkipped (the rest is reported):\n\n" + "".join(f"- {markdown_cell(s)}\n" for s in skipped)
    return write_text(path, text)  # whole or absent (featx.atomic)


def _run_name(run) -> str:
    return f"{run['dataset']}-{run['backbone']}-{run['route']}-{run['head']}".replace("/", "_").replace(" ", "_")


def _learning_curves(runs, out_dir: Path, skipped: list) -> dict:
    """Run index -> curves PNG, for the latest :data:`MAX_CURVES` runs whose output folder has a
    ``history.csv`` (the last run that wrote to that folder).  An unreadable history is named in
    ``skipped`` (appended), as is the number of runs past the limit."""
    import pandas as pd

    curves, found = {}, []
    for i, run in runs.drop_duplicates("output", keep="last").iterrows():
        if isinstance(run["output"], str) and run["output"]:
            history = Path(unshown(run["output"])).parent / "history.csv"  # the log shows names (featx.names)
            if history.is_file() and history.stat().st_size:
                found.append((i, run, history))
    if len(found) > MAX_CURVES:
        skipped.append(f"learning curves of {len(found) - MAX_CURVES} earlier run(s): only the latest "
                       f"{MAX_CURVES} are drawn")
    for i, run, history in found[-MAX_CURVES:]:
        try:
            frame = pd.read_csv(history)
            if not (len(frame) and "loss" in frame):
                continue
            path = out_dir / f"curves-{_run_name(run)}.png"
            plot_curves({c: pd.to_numeric(frame[c], errors="raise").tolist() for c in frame.columns if c != "epoch"},
                        path, f"{run['dataset']}: {run['backbone']} {run['route']}")
            curves[i] = path
        except Exception as exc:  # noqa: BLE001 - one bad history never fails the report: named instead
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            skipped.append(f"learning curves of {history}: unreadable ({type(exc).__name__}: {detail})")
    return curves


def plot_summary(summary, path) -> Path:
    """Test accuracy with its 95% interval, one horizontal bar per summary row, grouped by dataset.

    At most :data:`MAX_CHART_BARS` bars (the best by test accuracy; the title says so) and at most
    :data:`featx.runs.MAX_FIGURE_INCHES` high, so 2,000 datasets draw a figure of ordinary size.
    The figure grows in height with the number of bars (width fixed), so it stays legible at any number
    of datasets; values are labelled with 3 decimals.

    Parameters
    ----------
    summary : pandas.DataFrame
        From :func:`summary_table`.
    path : str or Path
        The PNG to write.

    Returns
    -------
    Path
    """
    plt = pyplot()
    total = len(summary)
    if total > MAX_CHART_BARS:  # the best rows by test accuracy; every row stays in summary.md/csv
        summary = summary.loc[summary["test_acc"].fillna(-1).sort_values(ascending=False, kind="stable")
                              .index[:MAX_CHART_BARS]].sort_index()
    splits_of = summary.groupby("dataset")["split_id"].nunique().to_dict()
    groups = list(dict.fromkeys(_row_label(d, s, splits_of) for d, s in zip(summary["dataset"], summary["split_id"])))
    methods = list(dict.fromkeys(_column(b, r, k) for b, r, k in
                                 zip(summary["backbone"], summary["route"], summary["val_kind"])))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    ys, labels, y = [], [], 0.0
    fig_rows = len(summary) + len(groups)
    fig, ax = plt.subplots(figsize=(8.5, min(MAX_FIGURE_INCHES, max(3.2, 0.32 * fig_rows + 1.6))),
                           layout="constrained")
    group_ticks = []
    for g in groups:
        part = [r for r in summary.itertuples(index=False) if _row_label(r.dataset, r.split_id, splits_of) == g]
        start = y
        for r in part:
            value = 0.0 if r.test_acc != r.test_acc else float(r.test_acc)
            method = _column(r.backbone, r.route, r.val_kind)
            err = None
            if r.test_low is not None and r.test_low == r.test_low:
                # never negative: the CSV's accuracy is rounded to 4 decimals, the interval is not
                err = [[max(0.0, value - r.test_low)], [max(0.0, r.test_high - value)]]
            ax.barh(y, value, height=0.8, color=colours[method], xerr=err, capsize=2,
                    error_kw={"elinewidth": 0.8, "ecolor": "0.25"},
                    label=plain_text(method) if method not in labels else None)
            labels.append(method)
            ax.text((r.test_high if err else value) + 0.01, y, "-" if r.test_acc != r.test_acc else f"{value:.3f}",
                    va="center", ha="left", fontsize=8)
            ys.append(y)
            y += 1
        group_ticks.append(((start + y - 1) / 2, g))
        y += 1  # a gap between datasets
    ax.set_yticks([t for t, _ in group_ticks], [plain_text(g) for _, g in group_ticks])
    ax.set_ylim(y - 1.4, -0.6)  # top to bottom, no empty band after the last dataset
    ax.set_xlim(0, 1.12)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("test accuracy (bars: 95% Wilson interval)")
    ax.set_title("test accuracy by dataset, backbone and route" + (
        f" (the best {MAX_CHART_BARS} of {total} rows; all in summary.csv)" if total > MAX_CHART_BARS else ""))
    ax.grid(axis="x", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="outside lower center", ncol=min(4, len(names)), frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ---- the HTML page ----------------------------------------------------------------------------

def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _img(path: Path, alt: str) -> str:
    return f'<img src="{_data_uri(path)}" alt="{html.escape(alt)}">'


_CSS = PAGE_CSS + "img{max-width:100%;height:auto;border:1px solid #eee}.run{margin:1.5rem 0}\n"


def render_html(runs_csv, runs, summary, chart: Path, curves: dict, skipped: list = ()) -> str:
    """The report as one HTML document: table, chart, and per run its sizes, accuracies with intervals,
    confusion matrix and learning curves (images embedded as data URIs; no external URLs, no scripts).

    Parameters
    ----------
    runs_csv : Path
        Named in the page.
    runs : pandas.DataFrame
        The runs log (:func:`read_runs`); one section per row, in order, except rows whose output a
        later row reused (its confusion matrix and curves are the later run's).
    summary : pandas.DataFrame
        From :func:`summary_table`.
    chart : Path
        ``summary.png``.
    curves : dict
        Row index of ``runs`` -> learning-curves PNG.
    skipped : list of str
        What the report left out (bad lines of the log, unreadable histories), listed under the summary.

    Returns
    -------
    str
        The page, UTF-8 text.
    """
    e = html.escape
    rows, columns = pivot(summary)
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>featx report</title>", f"<style>{_CSS}{CARD_CSS}</style></head><body>",
           "<h1>featx report</h1>",
           f'<p class="note">From {e(str(runs_csv))}: {len(runs)} runs, written {e(time.strftime("%Y-%m-%d %H:%M"))}.'
           "</p>",
           '<h2 id="summary">Summary</h2>', '<table id="summary-table"><thead><tr>',
           "".join(f"<th>{e(h)}</th>" for h in ["dataset", "split", "train/val/test", *columns]),
           "</tr></thead><tbody>"]
    for label, split, sizes, cells in rows:
        out.append("<tr>" + "".join(f"<td>{e(v)}</td>" for v in [label, split, sizes or "-"])
                   + "".join(f'<td class="num">{e(cells.get(c, ""))}</td>' for c in columns) + "</tr>")
    out += ["</tbody></table>", f'<p class="note">{e(NOTE)}</p>']
    if skipped:
        out.append('<p class="warn">Skipped (the rest is reported):</p><ul class="skipped">'
                   + "".join(f"<li>{e(s)}</li>" for s in skipped) + "</ul>")
    out += [
            '<h2 id="chart">Chart</h2>', _img(chart, "test accuracy by dataset, backbone and route"),
            '<h2 id="runs">Runs</h2>']
    outputs = runs["output"].where(runs["output"].apply(lambda v: isinstance(v, str) and bool(v)))
    superseded = outputs.notna() & outputs.duplicated(keep="last")  # its files now hold a later run's results
    if superseded.any():
        out.append(f'<p class="note">{int(superseded.sum())} earlier run(s) whose output folder a later run '
                   "reused are left out here (they still count in the summary).</p>")
    budget = ThumbnailBudget()  # error galleries: featx.gallery's caps, per run and for the whole page
    for i, run in runs[~superseded].iterrows():
        output = run["output"] if isinstance(run["output"], str) else ""
        folder = Path(unshown(output)).parent if output else None
        confusion = folder / "confusion.png" if folder is not None else None
        title = f"{run['dataset']}: {run['backbone']} {run['route']}, {run['head']}"
        out.append(f'<section class="run" id="run-{i + 1}"><h3>{e(title)}</h3>')
        facts = [("split", str(run["split_id"])), ("taps", "" if run["taps"] != run["taps"] else str(run["taps"]))]
        facts += [_figure(run, s) for s in ("train", "val", "test")]
        facts.append(("time", _duration((run["extract_s"] if run["extract_s"] == run["extract_s"] else 0)
                                        + (run["fit_s"] if run["fit_s"] == run["fit_s"] else 0))))
        facts.append(("output", output or "-"))
        out.append('<table class="facts">' + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
                   + "</table>")
        n_test = _count(run["n_test"])
        if n_test is not None and n_test < SMALL_TEST_IMAGES:
            out.append(f'<p class="warn">The test set is small ({n_test} images): its interval is wide; do not '
                       "rank models by it.</p>")
        if confusion is not None and confusion.is_file():
            out.append(f'<figure class="confusion">{_img(confusion, "confusion matrix: " + title)}'
                       "<figcaption>confusion matrix</figcaption></figure>")
        if i in curves:
            out.append(f'<figure class="curves">{_img(curves[i], "learning curves: " + title)}'
                       "<figcaption>learning curves</figcaption></figure>")
        if folder is not None:
            out.append(run_section(folder, budget))  # error gallery and codes map, when the run wrote them
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)
