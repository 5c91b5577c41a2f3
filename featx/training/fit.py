"""``fit_head``: a head on cached codes, end to end -- the cached route of the study.

It extracts whatever codes are missing (usually nothing: the backbone ran once), splits the dataset the
same way every time, trains a head in seconds, evaluates it once on test and writes a bundle, metrics, a
confusion matrix and a runs-log row. The workflow is :func:`fit_head`; each step below it is a function of
its own: :func:`plan_fit` (check options), :func:`load_design` (codes -> design matrix),
:func:`fit_final` (select or fit, refit), :func:`evaluate` (test once, with TTA), :func:`fit_metrics` and
:func:`write_fit_outputs`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from featx.cells import write_csv
from featx.backbones.registry import DEFAULT_BACKBONE
from featx.bundle import Bundle, save_bundle
from featx.cache import default_cache_dir
from featx.datasets import Dataset, SplitSpec, discover, make_split
from featx.errors import FeatxError
from featx.gallery import error_records, plot_codes_map, write_run_gallery
from featx.heads import fit_with_copies
from featx.outputs import RunOutputs, RunResult
from featx.quality import NEAR_DUPLICATE_MODES, NEAR_DUPLICATE_THRESHOLD, DuplicateGroups, near_duplicates
from featx.selection import BlockHead, make_head, select_head
from featx.stats import accuracy_of_rate, accuracy_summary
from featx.training.codes import LabelledCodes, accuracy_of, backbone_list, common_rows, labelled_codes
from featx.training.fit_text import fit_report_text
from featx.vocabulary import FUSE_MODES, SPLITS, TTA_MODES, check_choice, one_value


@dataclass(frozen=True)
class FitOptions:
    """How ``fit_head`` extracts, splits, trains and evaluates: every option but the data, backbones and taps.

    Fields keep :func:`fit_head`'s keyword names; ``split`` holds ``val_fraction``, ``test_fraction`` and
    ``seed``; ``extract`` the options passed on to :func:`featx.extract.extract` (``engine``,
    ``batch_size``, ``workers``, ``progress``, ``retry_failed``, ...).
    """

    pooling: str = "avg"
    dtype: str = "float32"
    weights: object = "imagenet"
    class_weight: object = None
    l2: object = None
    standardize: object = None
    pca: object = None
    head_params: dict | None = None
    views: int = 0
    refit: bool = True
    fuse: str = "concat"
    tta: str = "none"
    budget: object = None
    recipe: str = "default"
    near_duplicates: str = "report"
    duplicate_threshold: float = NEAR_DUPLICATE_THRESHOLD
    gallery: bool = True
    split: SplitSpec = field(default_factory=SplitSpec)
    extract: dict = field(default_factory=dict)

    @classmethod
    def from_keywords(cls, **keywords) -> "FitOptions":
        """Options from ``fit_head``'s keywords: known fields, the split's three, the rest for extraction."""
        split = SplitSpec.resolve(keywords.pop("split", None), keywords)
        own = {f.name for f in fields(cls)} - {"split", "extract"}
        given = {k: keywords.pop(k) for k in list(keywords) if k in own}
        return cls(**given, split=split, extract=keywords)


@dataclass(frozen=True)
class FitPlan:
    """A checked fit: the backbones and taps, the options (``views`` resolved), the unfitted head."""

    backbones: list
    taps: list
    head: str
    options: FitOptions
    model: object  # the unfitted featx.heads.Head

    @property
    def flip(self) -> bool:
        return self.options.tta == "flip"

    @property
    def label(self) -> str:
        """The head's name in the runs log and the default folder (``logistic+flip``, ``dense-study``...)."""
        o = self.options
        return self.head + (f"+views{o.views}" if o.views else "") + ("+flip" if self.flip else "") + \
            (f"+{o.fuse}" if len(self.backbones) > 1 and o.fuse != "concat" else "") + \
            ("" if o.recipe == "default" or self.head != "dense" else f"-{o.recipe}")


def plan_fit(backbone, taps, head: str, options: FitOptions) -> FitPlan:
    """Check every option before any extraction or training.

    Raises
    ------
    FeatxError
        Unknown tta, fuse, head, backbone or head option; augmented views with a route that cannot use them.
    """
    check_choice(options.tta, TTA_MODES, "tta")
    check_choice(options.fuse, FUSE_MODES, "fuse")
    check_choice(options.near_duplicates, NEAR_DUPLICATE_MODES, "near_duplicates")
    if not 0 < options.duplicate_threshold <= 1:
        raise FeatxError(f"expected a cosine similarity in (0, 1], got {options.duplicate_threshold}",
                         param="duplicate_threshold")
    if options.tta == "views":
        options = replace(options, views=options.views or 4)
    backbones = backbone_list(backbone)
    if options.views:
        # augmented views are copies of one backbone's codes for one head: no other route trains on them
        other = ("--head auto (its search runs on the images)" if head == "auto" else
                 "--tta flip" if options.tta == "flip" else
                 "several backbones" if len(backbones) > 1 else None)
        if other:
            raise FeatxError(f"augmented views train one backbone's named head; they do not combine with {other}: "
                             f"drop --views / --tta views, or use one backbone and a named head", param="views")
    params = dict(options.head_params or {})
    if options.recipe != "default":
        params["recipe"] = options.recipe
    model = make_head(head, class_weight=options.class_weight, l2=options.l2, standardize=options.standardize,
                      pca=options.pca, random_state=options.split.seed, **params)
    model.check_params()  # the head's options fail here, before any extraction
    taps = [taps] if isinstance(taps, str) else list(taps)
    return FitPlan(backbones, taps, head, options, model)


@dataclass
class Design:
    """The design matrix of a fit: every backbone's codes of every tap, side by side, on common rows.

    ``X`` (n, d_total): clean blocks then, with flip TTA, the mirrored blocks in the same order; ``y`` (n,)
    class names; ``split`` (n,) 'train'/'val'/'test'; ``clean``/``flipped``: block name -> (n, d_block);
    ``layout``: the bundle's description of the columns.
    """

    codes_list: list
    rows: list
    y: np.ndarray
    split: np.ndarray
    names: list
    clean: dict
    flipped: dict
    layout: list
    X: np.ndarray
    views: int = 0
    taps: list = field(default_factory=list)
    duplicates: DuplicateGroups | None = None  # near-duplicate groups of the design's rows (first backbone)

    @property
    def codes(self) -> LabelledCodes:
        """The first backbone's labelled codes (names, split id, class names)."""
        return self.codes_list[0]

    @property
    def n(self) -> dict:
        return {s: int((self.split == s).sum()) for s in SPLITS}

    def part(self, name: str):
        """``(X, y)`` of one split."""
        mask = self.split == name
        return self.X[mask], self.y[mask]

    def view_codes(self, mask) -> np.ndarray:
        """The cached augmented views of the rows in ``mask``: (m, K, d)."""
        return self.codes.features.views_matrix(self.taps)[self.rows[0]][mask]

    def with_views(self, splits):
        """Design rows of these splits and their augmented views as copies: ``(X, y, X_copies, y_copies)``."""
        mask = np.isin(self.split, splits)
        X, y = self.X[mask], self.y[mask]
        if self.views:  # one backbone, no flip: checked before any work
            V = self.view_codes(mask)
            return X, y, V.reshape(-1, V.shape[-1]), np.repeat(y, V.shape[1])
        return X, y, X[:0], y[:0]

    def fit_rows(self, estimator, splits, validation_data=None):
        """Fit ``estimator`` on these splits' rows; views are copies, so a C chosen by CV is chosen on images."""
        X, y, Xc, yc = self.with_views(splits)
        if isinstance(estimator, BlockHead):
            return estimator.fit(X, y, validation_data=validation_data, copies=(Xc, yc) if len(yc) else None)
        return fit_with_copies(estimator, X, y, Xc, yc, validation_data=validation_data)


def load_design(data, plan: FitPlan, cache_dir: Path) -> Design:
    """Each backbone's labelled codes (extracting what is missing), aligned on common rows, as one matrix."""
    o = plan.options
    data = data if isinstance(data, Dataset) else discover(data)  # one scan for every backbone
    codes_list = [labelled_codes(data, b, plan.taps, o.pooling, o.dtype, o.weights, cache_dir, views=o.views,
                                 flip=plan.flip, split=o.split, **o.extract) for b in plan.backbones]
    if o.near_duplicates == "group":
        group_split(codes_list[0], plan.taps, o)
    rows = common_rows(codes_list)
    names, clean, flipped = [], {}, {}
    for b, c, r in zip(plan.backbones, codes_list, rows):
        for t in plan.taps:
            name = t if len(plan.backbones) == 1 else f"{b}/{t}"
            names.append(name)
            clean[name] = c.features.codes[t][r]
            if plan.flip:
                flipped[name] = c.features.flipped[t][r]
    if o.fuse == "mean" and len(names) == 1:
        print("featx: warning: --fuse mean averages one head per backbone (or tap); with one backbone and one tap "
              "there is one head, so it changes nothing", file=sys.stderr)
    views_used = ("clean", "flip") if plan.flip else ("clean",)
    layout = [{"extractor": i, "tap": t, "view": v} for v in views_used
              for i in range(len(plan.backbones)) for t in plan.taps]
    X = np.concatenate([clean[n] for n in names] + [flipped[n] for n in names if plan.flip], axis=1)
    first = codes_list[0]
    duplicates = None if o.near_duplicates == "off" else \
        near_duplicates(first.features.matrix(plan.taps)[rows[0]], o.duplicate_threshold)
    return Design(codes_list, rows, first.y[rows[0]], first.split[rows[0]], names, clean, flipped, layout, X,
                  o.views, plan.taps, duplicates)


def group_split(codes: LabelledCodes, taps, options: FitOptions) -> None:
    """Re-split ``codes`` so that no near-duplicate group straddles train/val/test (``near_duplicates="group"``).

    Each group's members get one shared key and :func:`featx.datasets.make_split` keeps equal keys together,
    as it keeps byte-identical files; the split gets its own id (stored beside the plain one). Split folders the
    user made are kept as they are (only a validation set carved from train/ can move). The byte-identical
    leakage and label-conflict lists stay those of the plain split.
    """
    feats = codes.features
    groups = near_duplicates(feats.matrix(taps), options.duplicate_threshold)
    if not groups.groups:
        return
    labels = np.searchsorted(np.asarray(feats.class_names), codes.y) if feats.labels is None else feats.y  # indices
    s = options.split
    made = make_split(groups.group_keys(feats.keys), labels, feats.given_splits, s.val_fraction, s.test_fraction,
                      s.seed, store=feats.cache_file.parent if feats.cache_file else None,
                      class_names=feats.class_names, paths=feats.paths)
    codes.split, codes.split_id = made.assignment, made.id


@dataclass
class Fitted:
    """The final model and how it was chosen."""

    final: object
    chosen: object
    val_acc: float | None
    fit_splits: list
    seconds: float
    selection: object = None


def block_estimator(plan: FitPlan, design: Design):
    """The plain head for one block of clean codes, else a :class:`BlockHead` over the blocks (fuse, flip)."""
    if len(design.names) == 1 and not plan.flip:
        return plan.model
    widths = [design.clean[nm].shape[1] for nm in design.names]
    off = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    total = int(off[-1])
    ranges = [(int(off[i]), int(off[i + 1])) for i in range(len(design.names))]
    groups = [[r] for r in ranges] if plan.options.fuse == "mean" else [ranges]
    flip_groups = [[(a + total, b + total) for a, b in g] for g in groups] if plan.flip else None
    return BlockHead(plan.model, groups, flip_groups)


def select_auto(plan: FitPlan, design: Design, fit_splits: list) -> Fitted:
    """``--head auto``: cross-validated selection on the fit splits; its CV accuracy stands for validation."""
    o = plan.options
    mask = np.isin(design.split, fit_splits)
    blocks = {k: v[mask] for k, v in design.clean.items()}
    mirrored = {k: v[mask] for k, v in design.flipped.items()} if plan.flip else None
    selection = select_head(blocks, design.y[mask], flip=mirrored, budget=o.budget, fuse=o.fuse,
                            class_weight=o.class_weight, random_state=o.split.seed)
    final = selection.estimator
    if "val" not in fit_splits and design.n["val"]:
        val_acc = accuracy_of(final, *design.part("val"))
    else:  # validation rows were in the CV folds: the chosen candidate's CV accuracy is the estimate
        t = selection.table
        val_acc = float(t.loc[t["candidate"] == selection.best.name, "cv_mean"].iloc[0])
    return Fitted(final, {"candidate": selection.best.name}, val_acc, fit_splits, 0.0, selection)


def fit_named(plan: FitPlan, design: Design, fit_splits: list) -> Fitted:
    """A named head: fitted on train (validation chooses C or epochs), then refitted on train+val if asked."""
    Xv, yv = design.part("val")
    try:
        estimator = design.fit_rows(block_estimator(plan, design), ["train"], (Xv, yv) if len(yv) else None)
    except ValueError as exc:  # scikit-learn's word on data this head cannot fit (too few images, ...)
        raise FeatxError(f"{plan.head} head on {design.n['train']} training images: {exc}", param="head") from None
    val_acc = accuracy_of(estimator, Xv, yv)
    final = estimator
    if "val" in fit_splits:
        final = design.fit_rows(estimator.frozen(), fit_splits)
    return Fitted(final, getattr(estimator, "chosen_", {}), val_acc, fit_splits, 0.0)


def fit_final(plan: FitPlan, design: Design) -> Fitted:
    """The final model: selected (auto) or fitted, refitted on train+val unless ``refit=False``; timed."""
    fit_splits = ["train", "val"] if plan.options.refit and design.n["val"] else ["train"]
    start = time.perf_counter()
    fitted = (select_auto if plan.head == "auto" else fit_named)(plan, design, fit_splits)
    fitted.seconds = time.perf_counter() - start
    return fitted


@dataclass
class Evaluation:
    """The one evaluation on held-out images: test, or validation when there is no test image."""

    split: str
    y: np.ndarray
    pred: np.ndarray
    summary: dict
    per_class: dict
    accuracy: dict


def evaluate(plan: FitPlan, design: Design, fitted: Fitted) -> Evaluation:
    """Predict the held-out split once (averaging cached views with ``tta="views"``); accuracy per split."""
    from sklearn.metrics import classification_report

    final = fitted.final
    eval_split = "test" if design.n["test"] else "val"
    Xe, ye = design.part(eval_split)
    pred = final.predict(Xe) if len(ye) else np.array([])
    if plan.options.tta == "views" and len(ye):
        V = design.view_codes(design.split == eval_split)
        per_view = final.predict_proba(V.reshape(-1, V.shape[-1])).reshape(len(ye), V.shape[1], -1)
        proba = (final.predict_proba(Xe) + per_view.sum(axis=1)) / (V.shape[1] + 1)
        pred = np.asarray(final.classes_)[proba.argmax(axis=1)]
    class_names = design.codes.features.class_names
    report = classification_report(ye, pred, labels=class_names, zero_division=0,
                                   output_dict=True) if len(ye) else {}
    per_class = {c: {"precision": report[c]["precision"], "recall": report[c]["recall"],
                     "support": int(report[c]["support"])} for c in class_names} if report else {}
    summary = accuracy_summary(ye, pred, kind=eval_split, classes=class_names)
    accuracy = {"train": accuracy_of(final, *design.part("train")), "val": fitted.val_acc,
                "test": summary["accuracy"] if eval_split == "test" else None}
    if eval_split == "val":
        accuracy["val"] = summary["accuracy"]
    return Evaluation(eval_split, ye, pred, summary, per_class, accuracy)


def validation_figure(design: Design, fitted: Fitted, evaluation: Evaluation) -> dict | None:
    """What model selection saw, said as what it is (:func:`featx.stats.accuracy_of_rate`): ``cv`` when the
    validation rows were in ``--head auto``'s folds (n = the images in the folds), else ``val`` on the
    held-out validation split; None without validation images."""
    acc = evaluation.accuracy["val"]
    cv = fitted.selection is not None and "val" in fitted.fit_splits and evaluation.split == "test"
    n = int(np.isin(design.split, fitted.fit_splits).sum()) if cv else design.n["val"]
    if acc is None or not n:
        return None
    figure = accuracy_of_rate(acc, n, "cv" if cv else "val")
    figure.pop("warning")  # the small-sample warning is the evaluated split's (test), printed once
    return figure


def fit_metrics(plan: FitPlan, design: Design, fitted: Fitted, evaluation: Evaluation) -> dict:
    """``metrics.json`` of a fit-head run (:data:`featx.outputs.METRICS_SCHEMA` plus the cached route's keys)."""
    o, codes, n, fit_splits = plan.options, design.codes, design.n, fitted.fit_splits
    selection = fitted.selection
    metrics = {
        "dataset": codes.name, "route": "cached",
        "backbone": "+".join(plan.backbones), "backbones": plan.backbones, "taps": plan.taps, "head": plan.head,
        "pooling": o.pooling, "views": o.views, "tta": o.tta, "fuse": o.fuse, "recipe": o.recipe,
        # what the final model does at test time: auto may choose a candidate without the flip it was offered
        "tta_used": selection.best.tta if selection is not None and plan.flip else o.tta,
        "split_id": codes.split_id,
        "n": n,
        "refit": "val" in fit_splits,
        "n_fit": {s: (n[s] if s in fit_splits else 0) for s in SPLITS},
        "chosen": fitted.chosen,
        "accuracy": evaluation.accuracy,
        "val_note": ("validation accuracy of the model trained on train alone, before the refit on train+val"
                     if "val" in fit_splits and plan.head != "auto" else
                     "the chosen candidate's 3-fold cross-validated accuracy on train+val (what selected it)"
                     if "val" in fit_splits else None),
        "evaluated_on": evaluation.split,
        evaluation.split: {k: v for k, v in evaluation.summary.items() if k != "text"},
        "per_class": evaluation.per_class,
        "classes_not_evaluated": evaluation.summary["classes_missing"],
        "fit_seconds": fitted.seconds,
        "extract_seconds": sum(c.extract_seconds for c in design.codes_list),
        "skipped_images": [[str(p), r] for c in design.codes_list for p, r in c.features.failures],
        "leakage": codes.split_report.leakage,
        "label_conflicts": codes.split_report.label_conflicts,
        "validation": validation_figure(design, fitted, evaluation),
    }
    if design.duplicates is not None:
        metrics["near_duplicates"] = near_duplicate_metrics(plan, design, fitted, evaluation)
    if selection is not None:
        best = selection.table[selection.table["candidate"] == selection.best.name].iloc[0]
        metrics["cv"] = {"mean": float(best["cv_mean"]), "sd": float(best["cv_sd"]),
                         "rows": int(np.isin(design.split, fit_splits).sum()), "budget_s": selection.budget,
                         "seconds": selection.seconds, "logme": selection.logme,
                         "flip_scored": int(((selection.table["tta"] == "flip")
                                             & (selection.table["status"] == "done")).sum())}
    return metrics


#: Straddling near-duplicate pairs fit-head lists in metrics.json and its console report at most.
TOP_PAIRS = 10


def near_duplicate_metrics(plan: FitPlan, design: Design, fitted: Fitted, evaluation: Evaluation) -> dict:
    """``metrics.json``'s ``near_duplicates``: the groups that straddle the split, the held-out images with a
    near-copy among the images the final model was fitted on (*leaked*), and the held-out accuracy without them.

    The accuracy without the leaked images is the plain held-out accuracy over the other rows
    (:func:`featx.stats.accuracy_summary`), so the two figures sit side by side on the same footing.
    """
    dup, split = design.duplicates, design.split
    held = evaluation.split
    leaked = dup.leaked(split, held_out=held, seen=fitted.fit_splits)
    keep = ~leaked[split == held]
    clean = accuracy_summary(evaluation.y[keep], evaluation.pred[keep], kind=held) if keep.any() else None
    paths = [str(p) for p in np.asarray(design.codes.features.paths, dtype=object)[design.rows[0]]]
    straddling = dup.straddling(split)
    top = [[paths[a], str(split[a]), paths[b], str(split[b]), round(float(sim), 4)]
           for (a, b), sim in zip(dup.pairs, dup.pair_similarity) if split[a] != split[b]][:TOP_PAIRS]
    return {"mode": plan.options.near_duplicates, "threshold": dup.threshold,
            "measure": "cosine similarity of L2-normalised codes (first backbone, its taps)",
            "groups": len(dup.groups), "images_in_groups": int((dup.group_of >= 0).sum()),
            "straddling_groups": len(straddling), f"leaked_{held}_images": int(leaked.sum()),
            "leaked": [paths[i] for i in np.flatnonzero(leaked)],
            f"{held}_accuracy": evaluation.summary["accuracy"],
            f"{held}_accuracy_without_leaked": None if clean is None else clean["accuracy"],
            f"{held}_without_leaked": None if clean is None else {k: v for k, v in clean.items() if k != "text"},
            "top_pairs": top}


def near_duplicate_text(metrics: dict) -> str:
    """The console lines of ``metrics["near_duplicates"]`` (empty when the search was off)."""
    nd = metrics.get("near_duplicates")
    if not nd:
        return ""
    held = metrics["evaluated_on"]
    lines = [f"near-duplicates (cosine >= {nd['threshold']:.2f}): {nd['groups']} group(s), "
             f"{nd['straddling_groups']} straddle the split" + (" (kept together: --near-duplicates group)"
                                                                 if nd["mode"] == "group" else "")]
    if nd[f"leaked_{held}_images"]:
        without = nd[f"{held}_accuracy_without_leaked"]
        lines.append(f"  {nd[f'leaked_{held}_images']} {held} image(s) have a near-copy in the fitted images; "
                     f"{held} accuracy {nd[f'{held}_accuracy']:.3f}, without them "
                     + ("-" if without is None else f"{without:.3f} (n={nd[f'{held}_without_leaked']['n']})"))
        for a, sa, b, sb, sim in nd["top_pairs"][:3]:
            lines.append(f"  {a} ({sa}) ~ {b} ({sb}): {sim:.3f}")
        lines.append("  keep groups on one side with --near-duplicates group; see them all with featx check")
    return "\n".join(lines)


def write_gallery(plan: FitPlan, design: Design, fitted: Fitted, evaluation: Evaluation, folder: Path,
                  title: str) -> Path | None:
    """``errors.json``, ``codes_map.png`` and ``gallery.html`` (:mod:`featx.gallery`) in the run's folder."""
    if not plan.options.gallery or not len(evaluation.y):
        return None
    mask = design.split == evaluation.split
    paths = np.asarray(design.codes.features.paths, dtype=object)[design.rows[0]]
    probability = None
    if hasattr(fitted.final, "predict_proba") and plan.options.tta != "views":
        try:
            proba = fitted.final.predict_proba(design.X[mask])
            column = {c: i for i, c in enumerate(np.asarray(fitted.final.classes_).tolist())}
            probability = proba[np.arange(len(proba)), [column[p] for p in evaluation.pred.tolist()]]
        except (AttributeError, KeyError, ValueError):  # a head without calibrated probabilities
            probability = None
    errors = error_records(paths[mask], evaluation.y, evaluation.pred, probability)
    marked = np.zeros(len(design.y), dtype=bool)
    marked[np.flatnonzero(mask)[evaluation.y != evaluation.pred]] = True
    codes = design.clean[design.names[0]]
    map_png = plot_codes_map(codes, design.y, marked, folder / "codes_map.png", f"{title}: map of the codes",
                             seed=plan.options.split.seed)
    return write_run_gallery(folder, errors, map_png, title)


def write_fit_outputs(plan: FitPlan, design: Design, fitted: Fitted, evaluation: Evaluation, metrics: dict,
                      outputs: RunOutputs) -> Path:
    """The bundle, selection.csv (auto), confusion.png and metrics.json, which appear together or not at all
    (:class:`featx.atomic.Together`: a failed plot leaves no finished-looking bundle), then the runs-log row;
    returns the bundle."""
    o = plan.options
    extractors = [{"backbone": b, "weights": None if o.weights is None else str(o.weights),
                   "weights_id": c.features.config["weights"], "taps": plan.taps, "pooling": o.pooling,
                   "dtype": o.dtype, "precision": c.features.config.get("precision", "float32"),
                   "calibration": c.features.config.get("calibration")}
                  for b, c in zip(plan.backbones, design.codes_list)]
    staged, together = outputs.together()
    with together:
        with staged.file("model.featx") as tmp:
            save_bundle(Bundle(fitted.final, extractors[0], list(design.codes.features.class_names),
                               design.codes.split_id, metrics, extractors=extractors, layout=design.layout), tmp)
        if fitted.selection is not None:
            with staged.file("selection.csv") as tmp:
                write_csv(fitted.selection.table, tmp, index=False, float_format="%.4f")
        staged.plot_confusion(evaluation.y, evaluation.pred, design.codes.features.class_names,
                              f"{metrics['dataset']}: {metrics['backbone']}/{'+'.join(plan.taps)}/{plan.head} "
                              f"({evaluation.split})")
        staged.write_metrics(metrics)  # last: a folder with metrics.json holds everything
    bundle_path = outputs.folder / "model.featx"
    write_gallery(plan, design, fitted, evaluation, outputs.folder,
                  f"{metrics['dataset']}: {metrics['backbone']}/{'+'.join(plan.taps)}/{plan.head} ({evaluation.split})")
    outputs.log_run(metrics, head=plan.label, output=bundle_path, extract_s=metrics["extract_seconds"],
                    fit_s=fitted.seconds)
    return bundle_path


def fit_head(data, backbone=DEFAULT_BACKBONE, taps=("pre_logits",), head: str = "logistic", *, cache_dir=None,
             out_dir=None, options: FitOptions | None = None, **keywords) -> RunResult:
    """Train ``head`` on the cached codes of ``data``, evaluate it once on test, and write its outputs.

    Parameters
    ----------
    data : str, Path or Dataset
        A labelled dataset folder (class folders, or train/val/test folders of class folders).
    backbone : str or list of str
        One backbone, or several (``"a,b"``): their codes are concatenated (``fuse="concat"``) or one head
        per backbone is trained and their probabilities averaged (``fuse="mean"``).
    taps : str or list of str
        Taps whose codes are concatenated, in order.
    head : str
        ``logistic``, ``linear_svm``, ``rbf_svm``, ``knn``, ``dense`` or ``auto`` (cross-validated selection
        within ``budget`` seconds, :func:`featx.selection.select_head`).
    cache_dir, out_dir : path, optional
        The cache (default ``$FEATX_CACHE`` or ``./cache``) and the output folder (default
        ``featx-out/<dataset>-<backbones>-<taps>-<head>``).
    options : FitOptions, optional
        Every other option as one value; or give its fields as keywords (below).
    **keywords
        :class:`FitOptions` fields: ``pooling``, ``dtype``, ``weights``, ``class_weight``, ``l2``,
        ``standardize``, ``pca``, ``head_params``, ``views``, ``refit``, ``fuse``, ``tta``, ``budget``,
        ``recipe``; the split's ``val_fraction``, ``test_fraction``, ``seed``; and extraction options
        (``engine``, ``batch_size``, ``workers``, ...). Notably:

        - ``refit`` (default True): once validation has chosen (C, a dense head's epochs; for auto the
          cross-validation over train+val chooses), the final model is trained on train+val, as
          ``GridSearchCV(refit=True)``; False keeps the model trained on train alone.
        - ``tta``: ``flip`` trains on each image and its mirror and averages both at prediction; ``views``
          trains on ``views`` (default 4) cached augmented views too and averages them at prediction.
        - ``recipe``: the dense head's settings, featx's measured defaults or the study's exactly.
        - ``views``: also train on that many cached augmented views of each training image (single heads
          only).
        - ``near_duplicates``: ``report`` (default) finds near-duplicate groups (:mod:`featx.quality`, cosine
          >= ``duplicate_threshold``) and records in ``metrics.json`` those straddling the split and the test
          accuracy without the leaked test images; ``group`` also keeps each group on one side of the split
          (a split of its own id); ``off`` skips the search.
        - ``gallery`` (default True): ``errors.json``, ``codes_map.png`` and ``gallery.html`` (the misclassified
          test images and a t-SNE map of the codes, :mod:`featx.gallery`).

    Returns
    -------
    RunResult
        ``bundle`` (the ``model.featx`` path), ``metrics`` (also in ``metrics.json``: row counts of the final
        fit, test accuracy with its 95% Wilson interval and size), ``out_dir``, printable ``report`` and, for
        auto, the ``selection``.

    Raises
    ------
    FeatxError
        Unknown head, backbone, tap, fuse or tta value; a dataset with fewer than 2 classes.
    """
    options = one_value(options, FitOptions, keywords) if options is not None else \
        FitOptions.from_keywords(**keywords)
    plan = plan_fit(backbone, taps, head, options)
    cache_dir = Path(cache_dir or default_cache_dir())
    design = load_design(data, plan, cache_dir)
    fitted = fit_final(plan, design)
    evaluation = evaluate(plan, design, fitted)
    metrics = fit_metrics(plan, design, fitted, evaluation)
    outputs = RunOutputs(metrics["dataset"], "cached",
                         f"{metrics['backbone']}-{'+'.join(plan.taps)}-{plan.label}", out_dir, cache_dir)
    bundle_path = write_fit_outputs(plan, design, fitted, evaluation, metrics, outputs)
    text = "\n".join(t for t in (fit_report_text(metrics, evaluation.summary, fitted.selection),
                                  near_duplicate_text(metrics)) if t)
    return RunResult(bundle_path, metrics, outputs.folder, text, fitted.selection)


#: The former name of fit-head's result (now one type for every route).
FitResult = RunResult
