"""``check``: see a labelled dataset through its codes -- near-duplicates, suspected label errors, outliers.

The workflow is :func:`check`: the cached codes of the chosen backbone and taps with fit-head's split
(:func:`featx.training.codes.labelled_codes`, extracting what is missing), then :func:`analyse` (the
analyses of :mod:`featx.quality` on those codes), then :func:`write_check` (``check.json`` and the
self-contained ``check.html``). :meth:`CheckResult.summary` is the console text and
:meth:`CheckResult.problems` what ``--fail-on`` tests.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx.backbones.registry import DEFAULT_BACKBONE
from featx.datasets import SplitSpec
from featx.errors import FeatxError
from featx.gallery import ThumbnailBudget, card, page
from featx.quality import (NEAR_DUPLICATE_THRESHOLD, OUTLIER_NEIGHBOURS, DuplicateGroups, LabelIssues,
                           confused_pairs, label_issues, near_duplicates, neighbours, out_of_fold_probabilities,
                           outliers)
from featx.training.codes import labelled_codes
from featx.vocabulary import SPLITS

#: What ``--fail-on`` may test: each is a kind of problem that makes ``featx check`` exit 1 when found.
FAIL_ON = ("leakage", "label-conflicts", "label-errors", "outliers", "near-duplicates")

#: Tukey's far-out fence (Q3 + 3 IQR of the outlier scores): images beyond it are *flagged* outliers (for
#: ``--fail-on outliers`` and the count); every image is still ranked.
OUTLIER_FENCE_IQR = 3.0

#: Thumbnails ``check.html`` shows per section at most (the page as a whole: featx.gallery.MAX_THUMBNAILS).
GROUPS_SHOWN, GROUP_MEMBERS_SHOWN, SUSPECTS_SHOWN, OUTLIERS_SHOWN = 40, 6, 60, 30


#: Column heads of the page's table of findings.
PROBLEM_NAMES = {"leakage": "groups straddling the split", "label-conflicts": "groups under two labels",
                 "label-errors": "suspected label errors", "outliers": "outliers beyond the fence",
                 "near-duplicates": "near-duplicate groups"}


@dataclass(frozen=True)
class CheckOptions:
    """How ``check`` looks at the codes.

    threshold : cosine similarity of near-duplicates (:data:`featx.quality.NEAR_DUPLICATE_THRESHOLD`).
    neighbours : k of the kNN outlier score.
    folds : folds of the out-of-fold probabilities (confident learning).
    top : suspects and outliers listed in ``check.json`` beyond the flagged ones (at least this many).
    pooling, dtype, weights : the extractor's other fields; split : fit-head's split; extract : options of
    :func:`featx.extract.extract` (``engine``, ``batch_size``, ...).
    """

    threshold: float = NEAR_DUPLICATE_THRESHOLD
    neighbours: int = OUTLIER_NEIGHBOURS
    folds: int = 5
    top: int = 50
    pooling: str = "avg"
    dtype: str = "float32"
    weights: object = "imagenet"
    split: SplitSpec = field(default_factory=SplitSpec)
    extract: dict = field(default_factory=dict)

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise FeatxError(f"expected a cosine similarity in (0, 1], got {self.threshold}", param="threshold")
        for name in ("neighbours", "top"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise FeatxError(f"expected a positive whole number, got {getattr(self, name)!r}", param=name)
        if not isinstance(self.folds, int) or self.folds < 2:
            raise FeatxError(f"expected 2 or more, got {self.folds!r}", param="folds")


@dataclass
class CheckResult:
    """What ``check`` found. Rows are the dataset's decoded images, in its order.

    ``paths`` (n,) str; ``labels`` (n,) str; ``split`` (n,) 'train'/'val'/'test'; ``duplicates``; ``issues``
    (confident learning); ``outlier_scores`` (n,) float; ``predicted`` (n,) str, the out-of-fold prediction;
    ``about``: dataset, backbone, taps, split id, seconds; ``skipped``: [path, reason] of unreadable files.
    """

    paths: list
    labels: np.ndarray
    split: np.ndarray
    class_names: list
    duplicates: DuplicateGroups
    issues: LabelIssues
    outlier_scores: np.ndarray
    predicted: np.ndarray
    about: dict
    skipped: list = field(default_factory=list)
    files: dict = field(default_factory=dict)  # "json", "html" -> Path once written

    @property
    def leakage(self) -> list[int]:
        """Near-duplicate groups that straddle train/val/test."""
        return self.duplicates.straddling(self.split)

    @property
    def conflicts(self) -> list[int]:
        """Near-duplicate groups under more than one label."""
        return self.duplicates.conflicting(self.labels)

    @property
    def outlier_fence(self) -> float:
        q1, q3 = np.percentile(self.outlier_scores, [25, 75])
        return float(q3 + OUTLIER_FENCE_IQR * (q3 - q1))

    @property
    def outlier_rank(self) -> np.ndarray:
        return np.argsort(-self.outlier_scores, kind="stable")

    def counts(self) -> dict:
        """class -> {train, val, test}: images per split."""
        return {c: {s: int(((self.labels == c) & (self.split == s)).sum()) for s in SPLITS}
                for c in self.class_names}

    def problems(self) -> dict:
        """Kind (one of :data:`FAIL_ON`) -> how many were found."""
        return {"leakage": len(self.leakage), "label-conflicts": len(self.conflicts),
                "label-errors": int(self.issues.flagged.sum()),
                "outliers": int((self.outlier_scores > self.outlier_fence).sum()),
                "near-duplicates": len(self.duplicates.groups)}

    def confused(self, top: int = 5) -> list:
        return confused_pairs(self.labels, self.predicted, top)

    def summary(self, limit: int = 3) -> str:
        """A few console lines: counts of each finding and the first of each."""
        a, p = self.about, self.problems()
        n, dup = len(self.paths), self.duplicates
        lines = [f"{a['dataset']}: {n} images, {len(self.class_names)} classes, codes of {a['backbone']}/"
                 f"{'+'.join(a['taps'])} ({a['seconds']:.1f}s)",
                 f"near-duplicates: {len(dup.groups)} group(s) of {sum(map(len, dup.groups))} images at cosine >= "
                 f"{dup.threshold:.2f}; {p['leakage']} straddle the split (leakage), {p['label-conflicts']} carry "
                 "two labels"]
        for g in (self.leakage or list(range(len(dup.groups))))[:limit]:
            lines.append("  " + " = ".join(f"{self.paths[i]} ({self.labels[i]}, {self.split[i]})"
                                           for i in dup.groups[g][:3]))
        lines.append(f"suspected label errors: {p['label-errors']} (confident learning on out-of-fold "
                     f"probabilities)")
        for i in self.issues.ranked[:min(limit, p["label-errors"])]:
            lines.append(f"  {self.paths[i]}: labelled {self.labels[i]}, looks like {self.issues.suggested[i]} "
                         f"(score {self.issues.quality[i]:.3f})")
        lines.append(f"outliers: {p['outliers']} beyond the fence ({self.outlier_fence:.3f}, mean cosine distance to "
                     f"{a['neighbours']} nearest)")
        for i in self.outlier_rank[:min(limit, p["outliers"])]:
            lines.append(f"  {self.paths[i]} ({self.labels[i]}): {self.outlier_scores[i]:.3f}")
        confused = self.confused(3)
        if confused:
            lines.append("most confused: " + "; ".join(f"{x} <-> {y} ({k})" for x, y, k in confused))
        if self.skipped:
            lines.append(f"skipped: {len(self.skipped)} unreadable image(s) (listed in check.json)")
        return "\n".join(lines)


def analyse(X, labels, split, paths, options: CheckOptions | None = None, about: dict | None = None) -> CheckResult:
    """Every analysis of ``check`` on codes already in memory.

    Parameters
    ----------
    X : array (n, d)
        Codes, one row per image.
    labels : array (n,) of str
    split : array (n,) of 'train'/'val'/'test'
    paths : sequence of n paths
    options : CheckOptions, optional
    about : dict, optional
        Shown in the outputs (dataset, backbone, taps, split_id, seconds).

    Returns
    -------
    CheckResult
    """
    options = options or CheckOptions()
    labels, split = np.asarray(labels).astype(str), np.asarray(split).astype(str)
    if not len(labels) == len(split) == len(paths) == len(X):
        raise ValueError("analyse: X, labels, split and paths must have one entry per image")
    start = time.perf_counter()
    found = neighbours(X, options.neighbours, options.threshold)
    duplicates = near_duplicates(X, options.threshold, found)
    proba = out_of_fold_probabilities(X, labels, options.folds, options.split.seed)
    issues = label_issues(X, labels, probabilities=proba)
    about = {"dataset": "", "backbone": "", "taps": [], "split_id": None, "seconds": 0.0, **(about or {}),
             "neighbours": options.neighbours, "threshold": options.threshold, "folds": options.folds,
             "top": options.top}
    about["analysis_seconds"] = time.perf_counter() - start
    return CheckResult([str(p) for p in paths], labels, split, sorted(set(labels.tolist())), duplicates, issues,
                       outliers(found), issues.suggested, about)


def check(data, backbone=DEFAULT_BACKBONE, taps=("pre_logits",), *, cache_dir=None, out_dir=None,
          options: CheckOptions | None = None, **keywords) -> CheckResult:
    """Look at a labelled dataset through its cached codes and write ``check.json`` and ``check.html``.

    Parameters
    ----------
    data : str, Path or Dataset
        A labelled dataset folder (class folders, or train/val/test folders of class folders).
    backbone, taps : the extractor whose codes are read (extracted first when missing)
    cache_dir : path, optional
        Default ``$FEATX_CACHE`` or ``./cache``.
    out_dir : path, optional
        Where ``check.json`` and ``check.html`` go (default ``featx-out/<dataset>-check``); None and
        ``write=False`` in keywords writes nothing.
    options : CheckOptions, optional
        Or its fields as keywords; the split's ``val_fraction``, ``test_fraction``, ``seed`` and extraction
        options (``engine``, ``batch_size``, ...) as keywords too.

    Returns
    -------
    CheckResult
        ``files`` names what was written.

    Raises
    ------
    FeatxError
        Not a labelled dataset of two classes, a class of one image, or a bad option.
    """
    write = keywords.pop("write", True)
    if options is None:
        split = SplitSpec.resolve(keywords.pop("split", None), keywords)
        own = {"threshold", "neighbours", "folds", "top", "pooling", "dtype", "weights"}
        options = CheckOptions(**{k: keywords.pop(k) for k in list(keywords) if k in own}, split=split,
                               extract=keywords)
    elif keywords:
        raise TypeError(f"check: give options= or its fields, not both ({', '.join(keywords)})")
    taps = [taps] if isinstance(taps, str) else list(taps)
    codes = labelled_codes(data, backbone, taps, options.pooling, options.dtype, options.weights, cache_dir,
                           split=options.split, **options.extract)
    about = {"dataset": codes.name, "backbone": str(backbone), "taps": taps, "split_id": codes.split_id,
             "seconds": codes.extract_seconds}
    result = analyse(codes.features.matrix(taps), codes.y, codes.split, codes.features.paths, options, about)
    result.skipped = [[str(p), str(r)] for p, r in codes.features.failures]
    if write:
        write_check(result, Path(out_dir) if out_dir else Path("featx-out") / f"{codes.name}-check")
    return result


# ---- outputs ------------------------------------------------------------------------------------------

def check_record(result: CheckResult) -> dict:
    """``check.json``: every finding with its files (str paths), counts, and how it was computed."""
    r, dup, issues = result, result.duplicates, result.issues
    top = r.about["top"]
    leak, conflict = set(r.leakage), set(r.conflicts)
    groups = []
    for g, rows in enumerate(dup.groups):
        in_group = np.isin(dup.pairs, rows).all(axis=1)
        groups.append({"files": [{"path": r.paths[i], "label": r.labels[i], "split": r.split[i]} for i in rows],
                       "max_similarity": round(float(dup.pair_similarity[in_group].max()), 4),
                       "leakage": g in leak, "label_conflict": g in conflict})
    n_flagged = int(issues.flagged.sum())
    suspects = [{"path": r.paths[i], "given": r.labels[i], "suggested": str(issues.suggested[i]),
                 "score": round(float(issues.quality[i]), 4), "flagged": bool(issues.flagged[i]),
                 "split": r.split[i]} for i in issues.ranked[:max(top, n_flagged)]]
    fence = r.outlier_fence
    n_out = int((r.outlier_scores > fence).sum())
    ranked_out = [{"path": r.paths[i], "label": r.labels[i], "split": r.split[i],
                   "score": round(float(r.outlier_scores[i]), 4), "flagged": bool(r.outlier_scores[i] > fence)}
                  for i in r.outlier_rank[:max(top, n_out)]]
    return {
        "featx_check": 1, "about": r.about, "images": len(r.paths), "classes": r.class_names,
        "counts": r.counts(), "problems": r.problems(),
        "near_duplicates": {"threshold": dup.threshold, "measure": "cosine similarity of L2-normalised codes",
                            "groups": groups},
        "label_issues": {"method": "confident learning (cleanlab.filter.find_label_issues, prune_by_noise_rate) "
                                   "on out-of-fold logistic probabilities; score: self-confidence (lower = more "
                                   "suspect)", "flagged": n_flagged, "suspects": suspects},
        "outliers": {"score": f"mean cosine distance to the {r.about['neighbours']} nearest other images",
                     "fence": round(fence, 4), "flagged": n_out, "ranked": ranked_out},
        "confused": [{"a": a, "b": b, "count": k} for a, b, k in r.confused(10)],
        "skipped": r.skipped,
    }


def write_check(result: CheckResult, out_dir) -> dict:
    """``check.json`` and ``check.html`` in ``out_dir`` (created); returns and records their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = check_record(result)
    json_path = out_dir / "check.json"
    json_path.write_text(json.dumps(record, indent=1, ensure_ascii=True, default=str))
    html_path = out_dir / "check.html"
    html_path.write_text(render_check(result, record), encoding="utf-8", errors="backslashreplace")
    result.files = {"json": json_path, "html": html_path}
    return result.files


def _counts_table(result: CheckResult) -> str:
    e = html.escape
    counts = result.counts()
    rows = "".join(f"<tr><td>{e(c)}</td>" + "".join(f'<td class="num">{v[s]}</td>' for s in SPLITS)
                   + f'<td class="num">{sum(v.values())}</td></tr>' for c, v in counts.items())
    totals = "".join(f'<td class="num">{sum(v[s] for v in counts.values())}</td>' for s in SPLITS)
    return ("<table><thead><tr><th>class</th>" + "".join(f"<th>{s}</th>" for s in SPLITS) + "<th>all</th></tr>"
            f"</thead><tbody>{rows}<tr><th>all</th>{totals}<td class=\"num\">{len(result.paths)}</td></tr>"
            "</tbody></table>")


def _groups_html(result: CheckResult, record: dict, budget: ThumbnailBudget) -> list[str]:
    groups = record["near_duplicates"]["groups"]
    # leakage and conflicts first: they are what a user acts on
    order = sorted(range(len(groups)), key=lambda g: (not groups[g]["leakage"], not groups[g]["label_conflict"], g))
    out = []
    for g in order[:GROUPS_SHOWN]:
        grp = groups[g]
        badges = ('<span class="badge leak">leakage</span>' if grp["leakage"] else "") + \
                 ('<span class="badge conflict">label conflict</span>' if grp["label_conflict"] else "")
        cards = [card(f["path"], [f"{f['label']} · {f['split']}"], budget) for f in grp["files"][:GROUP_MEMBERS_SHOWN]]
        more = len(grp["files"]) - GROUP_MEMBERS_SHOWN
        out.append(f'<div class="group"><div class="head"><b>group {g + 1}</b>: {len(grp["files"])} images, '
                   f'cosine up to {grp["max_similarity"]:.3f}{badges}</div><div class="strip">{"".join(cards)}</div>'
                   + (f'<p class="note">and {more} more in check.json</p>' if more > 0 else "") + "</div>")
    shown = ['<div class="groups">' + "".join(out) + "</div>"] if out else []
    if len(groups) > GROUPS_SHOWN:
        shown.append(f'<p class="note">{len(groups) - GROUPS_SHOWN} more group(s) in check.json.</p>')
    return shown or ['<p class="note">No near-duplicates at this threshold.</p>']


def render_check(result: CheckResult, record: dict) -> str:
    """``check.html``: counts, confused pairs, near-duplicate groups, suspects and outliers with thumbnails."""
    e = html.escape
    a, p = result.about, record["problems"]
    budget = ThumbnailBudget()
    body = [f"<h1>featx check: {e(a['dataset'])}</h1>",
            f'<p class="note">{len(result.paths)} images, codes of {e(a["backbone"])}/{e("+".join(a["taps"]))}, '
            f'split {e(str(a["split_id"]))}. Near-duplicates: cosine similarity &ge; {a["threshold"]:.2f}. '
            f'Written {e(time.strftime("%Y-%m-%d %H:%M"))}; every finding and file is in check.json.</p>',
            "<table><tr>" + "".join(f"<th>{e(PROBLEM_NAMES[k])}</th>" for k in p) + "</tr><tr>"
            + "".join(f'<td class="num">{v}</td>' for v in p.values()) + "</tr></table>",
            '<h2 id="counts">Images per class and split</h2>', _counts_table(result)]
    confused = record["confused"]
    if confused:
        body += ['<h2 id="confused">Classes confused most (out-of-fold predictions)</h2><table><tr><th>classes</th>'
                 "<th>images</th></tr>" + "".join(f'<tr><td>{e(c["a"])} &harr; {e(c["b"])}</td><td class="num">'
                                                  f'{c["count"]}</td></tr>' for c in confused[:5]) + "</table>"]
    body += [f'<h2 id="near-duplicates">Near-duplicate groups ({len(record["near_duplicates"]["groups"])}; '
             f'{p["leakage"]} straddle the split, {p["label-conflicts"]} carry two labels)</h2>',
             *_groups_html(result, record, budget)]
    suspects = [s for s in record["label_issues"]["suspects"] if s["flagged"]][:SUSPECTS_SHOWN]
    body += [f'<h2 id="label-errors">Suspected label errors ({p["label-errors"]})</h2>',
             f'<p class="note">The {len(suspects)} most suspect shown, ranked by the out-of-fold probability of the '
             "given label (lowest first); every one is in check.json.</p>",
             '<div class="strip">' + "".join(card(s["path"], [f"given: {s['given']}", f"suggested: {s['suggested']}",
                                                             f"score {s['score']:.3f}"], budget)
                                             for s in suspects) + "</div>"]
    outliers_ = record["outliers"]["ranked"][:OUTLIERS_SHOWN]
    body += [f'<h2 id="outliers">Outliers ({p["outliers"]} beyond the fence {record["outliers"]["fence"]:.3f}; '
             f"the {len(outliers_)} furthest shown)</h2>",
             '<div class="strip">' + "".join(card(o["path"], [f"{o['label']} · {o['split']}", f"score {o['score']:.3f}"],
                                                  budget) for o in outliers_) + "</div>"]
    if budget.held_back:
        body.append(f'<p class="warn">{budget.held_back} thumbnail(s) not shown: the page holds at most '
                    f"{budget.shown} (featx.gallery.MAX_THUMBNAILS).</p>")
    return page(f"featx check: {a['dataset']}", body)
