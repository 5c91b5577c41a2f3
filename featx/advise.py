"""Which route fits a dataset, decided by measurement and explained with CS231n's four cases.

The decision comes from the cached codes themselves:

1. every tap of the backbone (and every backbone, when several are given)
   is ranked by a transferability score computed on the train+val images
   (never the test images) in seconds: LogME (You et al., ICML 2021,
   :func:`featx.selection.logme`) by default, or a 3-fold cross-validated
   logistic probe (``score="probe"``);
2. the best few by that score, and ``pre_logits``, are then measured with the
   cross-validated probe (logistic, best C of three), which gives an accuracy; the recommended tap is the
   one with the best probe accuracy (ties go to the deeper tap);
3. fine-tuning is recommended only when there is enough data for it (a
   median of ``large_per_class`` images per class or more) *and* the best
   cached probe accuracy leaves clear room (below ``1 - room``); otherwise a
   head on the cached codes of the recommended tap.

CS231n's quadrant then explains the outcome rather than deciding it:

=========  ================================  ==============================
           top codes fit (similar data)      an earlier tap fits (different)
=========  ================================  ==============================
small      linear head on ``pre_logits``     head on an earlier tap
large      fine-tune the top blocks          fine-tune more of the network
=========  ================================  ==============================

"Similar" is read from the measurement (is the best tap the top one?), not
from how confident the ImageNet classifier is: fine-grained classes that
ImageNet lumps together get a low top-1 probability and still transfer well.
The ImageNet classifier's confidence is reported as context only.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from featx.atomic import write_text
from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone
from featx.datasets import Dataset, SplitSpec, check_classes, discover
from featx.errors import FeatxError
from featx.extract import load_features
from featx.heads import Head
from featx.peek import softmax
from featx.selection import logme
from featx.stats import accuracy_of_rate, small_test_warning
from featx.training.codes import backbone_list, labelled_codes
from featx.vocabulary import ADVISE_SCORES, check_choice, one_value

SCORES = ADVISE_SCORES
TOP_TAPS = ("pre_logits", "features")  # the codes a linear probe reads by default


@dataclass
class Advice:
    """What ``advise`` found and recommends; ``str(advice)`` is the readable report.

    Attributes
    ----------
    case : str
        CS231n's quadrant, e.g. ``"small, similar"`` (explanation, decided by measurement).
    route : str
        The recommended route in words.
    commands : list of str
        Commands to run next, with the caller's options (cache, seed, fractions) carried in.
    evidence : dict
        Counts, per-tap scores (``scores``: ``{"backbone/tap": {"logme": float, "probe": float|None}}``),
        the best tap and its probe accuracy, the ImageNet classifier's confidence (context only).
    """

    case: str
    route: str
    commands: list
    evidence: dict = field(default_factory=dict)

    def text(self) -> str:
        ev = self.evidence
        lines = [
            f"{ev['dataset']}: {ev['images']} images in {ev['classes']} classes, median {ev['median_per_class']:.0f} "
            f"per class: {'large' if ev['large'] else 'small'} (large means a median of at least "
            f"{ev['large_per_class']} per class, enough to fine-tune without overfitting)",
            f"transferability of each tap on the {ev['rows_scored']} train+val images "
            f"(LogME: higher is better; probe: {ev['probe_folds']}-fold CV accuracy of a logistic head, best C):",
        ]
        width = max(len(k) for k in ev["scores"])
        n = ev["rows_scored"]
        for name, sc in sorted(ev["scores"].items(), key=lambda kv: -kv[1]["logme"]):
            probe = "" if sc.get("probe") is None else f"  probe {accuracy_of_rate(sc['probe'], n, 'cv')['text']}"
            mark = "  <- best" if name == ev["best"] else ""
            lines.append(f"  {name:<{width}}  LogME {sc['logme']:7.3f}{probe}{mark}")
        room = 1 - ev["best_probe"]
        if ev.get("warning"):
            lines.append(ev["warning"])
        lines.append(f"best cached probe accuracy {ev['best_probe']:.3f}: "
                     + (f"{room:.3f} of room, {'more' if room > ev['room'] else 'not more'} than the "
                        f"{ev['room']:.2f} that makes fine-tuning worth its cost"))
        if ev.get("imagenet_confidence") is not None:
            lines.append(f"context: the ImageNet classifier's mean top-1 probability is "
                         f"{ev['imagenet_confidence']:.2f} over {ev['sampled']} images (not used to decide: "
                         "fine-grained classes score low and still transfer well)")
        lines.append(f"CS231n's case: {self.case} -> {self.route}")
        lines.append("recommended:")
        lines += [f"  {c}" for c in self.commands]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=float)


def imagenet_similarity(dataset: Dataset, backbone: str, cache_dir=None, sample: int = 300, seed: int = 0, **kw):
    """Mean top-1 probability and normalised entropy of the ImageNet classifier on a sample of images.

    Returns
    -------
    (confidence, entropy, sampled) : (float, float, int)
        Mean max softmax probability in [0, 1], mean entropy divided by log(1000) in [0, 1], images used.
    """
    paths = list(dataset.paths)
    if len(paths) > sample:
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), sample, replace=False))]
    feats = load_features(paths, backbone, ["logits"], cache_dir=cache_dir, **kw)
    p = softmax(feats.codes["logits"].astype(np.float64))
    entropy = -(p * np.log(p + 1e-12)).sum(axis=1) / np.log(p.shape[1])
    return float(p.max(axis=1).mean()), float(entropy.mean()), len(paths)


PROBE_C = (0.01, 0.1, 1.0)


def probe_accuracy(X, y, folds: int = 3, seed: int = 0) -> float:
    """Cross-validated accuracy of the best-regularised linear probe on ``X``.

    A logistic head on standardised columns for each C in :data:`PROBE_C`, mean stratified
    ``folds``-fold accuracy, the best C's score (a fixed C favours some dimensionalities over others).
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    _, counts = np.unique(y, return_counts=True)
    k = max(2, min(folds, int(counts.min())))
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    return max(float(cross_val_score(Head("logistic", standardize=True, options={"C": C}), X, y, cv=cv,
                                     n_jobs=1 if len(y) < 1000 else 2).mean()) for C in PROBE_C)


def measure_taps(blocks: dict, y, score: str = "logme", probe_top: int = 2, seed: int = 0):
    """Rank code blocks by transferability and pick the best by probe accuracy.

    Parameters
    ----------
    blocks : dict of str -> (backbone, tap, array of shape (n, d))
        Candidate codes of the same n images, listed shallow to deep (ties go to the later one).
    y : array of shape (n,)
        Labels.
    score : {"logme", "probe"}
        ``logme``: LogME on every block, then the probe on the ``probe_top`` best and on every
        ``pre_logits``; ``probe``: the probe on every block.

    Returns
    -------
    (scores, best) : (dict, str)
        ``scores[name] = {"logme": float, "probe": float or None}``; ``best`` the name with the best probe.
    """
    scores = {name: {"logme": logme(X, y), "probe": None} for name, (_, _, X) in blocks.items()}
    ranked = sorted(scores, key=lambda k: -scores[k]["logme"])[:probe_top]
    for name, (_, t, X) in blocks.items():
        if score == "probe" or name in ranked or t == "pre_logits":
            scores[name]["probe"] = probe_accuracy(X, y, seed=seed)
    probed = {k: v["probe"] for k, v in scores.items() if v["probe"] is not None}
    top = max(probed.values())
    order = {n: i for i, n in enumerate(blocks)}
    best = max((k for k, v in probed.items() if v >= top - 1e-9), key=lambda k: order[k])
    return scores, best


def carried_flags(cache_dir, split: SplitSpec) -> str:
    """The caller's cache and split as command-line flags, so a recommended command uses the same ones."""
    flags = []
    for flag, value, default in (("--cache", cache_dir, None),
                                 ("--val-fraction", split.val_fraction, 0.2),
                                 ("--test-fraction", split.test_fraction, 0.2),
                                 ("--seed", split.seed, 0)):
        if value is not None and value != default:
            flags.append(f"{flag} {value}")
    return (" " + " ".join(flags)) if flags else ""


@dataclass(frozen=True)
class AdviceRules:
    """The thresholds ``advise`` decides by (the module docstring says how each is used).

    ``sample``: images the ImageNet classifier's confidence is measured on; ``large_per_class``: median images
    per class from which fine-tuning is considered; ``room``: fine-tuning is recommended only when the best
    probe accuracy is below ``1 - room``; ``probe_top``: taps (best by LogME) that get the probe;
    ``max_rows``: train+val images scored at most (a stratified sample beyond it), to keep advise to seconds.
    """

    sample: int = 300
    large_per_class: int = 500
    room: float = 0.05
    probe_top: int = 2
    max_rows: int = 3000

    @staticmethod
    def fields_in(options: dict) -> dict:
        """The rules' fields named in ``options``, removed from it."""
        return {f: options.pop(f) for f in ("sample", "large_per_class", "room", "probe_top", "max_rows")
                if f in options}


def scored_blocks(dataset: Dataset, backbones: list, rules: AdviceRules, cache_dir, split: SplitSpec,
                  options: dict) -> tuple[dict, np.ndarray]:
    """Every tap's codes of the train+val images (a stratified sample of ``max_rows`` at most), and their labels.

    Returns ``({name: (backbone, tap, (n, d) codes)}, y)``, names shallow to deep, ``backbone/tap`` when
    several backbones are given.
    """
    blocks, y = {}, None
    for b in backbones:
        taps = [t for t in get_backbone(b).tap_names if t != "logits"]
        codes = labelled_codes(dataset, b, taps, cache_dir=cache_dir, split=split, **options)
        rows = np.flatnonzero(np.isin(codes.split, ["train", "val"]))
        if len(rows) > rules.max_rows:
            from sklearn.model_selection import train_test_split

            rows = np.sort(train_test_split(rows, train_size=rules.max_rows, stratify=codes.y[rows],
                                            random_state=split.seed)[0])
        y = codes.y[rows]
        for t in taps:
            blocks[t if len(backbones) == 1 else f"{b}/{t}"] = (b, t, codes.features.codes[t][rows])
    return blocks, y


def small_sample_warning(y) -> str | None:
    """fit-head's small-test warning (:func:`featx.stats.small_test_warning`) for the images the probes were
    cross-validated on: with few of them, taps whose probes differ by an image or two are not told apart."""
    counts = np.unique(np.asarray(y), return_counts=True)[1]
    warning = small_test_warning(len(y), int(counts.min()) if len(counts) else None)
    if warning is None:
        return None
    return (f"warning: the probes are cross-validated on few images ({len(y)}, smallest class "
            f"{int(counts.min())}); their accuracies have wide intervals and should not rank taps")


def recommend(dataset: Dataset, best: tuple, top: float, large: bool, rules: AdviceRules,
              flags: str) -> tuple[str, str, list]:
    """CS231n's case, the route in words and the commands to run, from the measured best tap and probe."""
    best_backbone, best_tap = best
    similar = best_tap in TOP_TAPS
    fine_tune = large and (1 - top) > rules.room
    data_arg, b_arg = str(dataset.root), f"--backbone {best_backbone}"
    head_cmd = f"featx fit-head {data_arg} {b_arg} --taps {best_tap} --head auto{flags}"
    if not fine_tune:
        route = (f"a head on the cached codes of {best_tap}"
                 + ("" if similar else " (an earlier tap than the top codes)")
                 + ("; the best cached probe leaves too little room for fine-tuning to pay" if large else
                    "; too few images per class to fine-tune without overfitting"))
        commands = [head_cmd]
    else:
        unfreeze = "top:2" if similar else "all"
        route = (f"fine-tune {'the top blocks' if similar else 'the whole network'}, starting from a head "
                 f"trained on the cache (the best cached probe reaches only {top:.3f})")
        commands = [head_cmd + "    # the cached baseline first",
                    f"featx finetune {data_arg} {b_arg} --taps {best_tap} --unfreeze {unfreeze}{flags}"]
    return f"{'large' if large else 'small'}, {'similar' if similar else 'different'}", route, commands


def write_advice(advice: Advice, out) -> None:
    """``advice.json`` and ``advice.txt`` in the folder ``out`` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "advice.json", advice.to_json())  # each whole or absent (featx.atomic)
    write_text(out / "advice.txt", advice.text() + "\n")


def advise(data, backbone=DEFAULT_BACKBONE, cache_dir=None, *, score: str = "logme", out=None, with_sweep=None,
           rules: AdviceRules | None = None, split: SplitSpec | None = None, **options) -> Advice:
    """Recommend a route for ``data`` from measured transferability of its cached codes.

    Parameters
    ----------
    data : str, Path or Dataset
        A labelled dataset folder (class folders, or train/val/test of class folders).
    backbone : str or list of str
        One backbone, or several (``"a,b"``) to rank their taps together.
    score : {"logme", "probe"}
        How every tap is ranked first; the ``probe_top`` best (and ``pre_logits``) get the probe.
    out : str or Path, optional
        Folder to write ``advice.json`` and ``advice.txt`` into.
    with_sweep : ignored
        Kept for callers of the old API: every tap is now always measured.
    rules : AdviceRules, optional
        The thresholds; or give ``sample``, ``large_per_class``, ``room``, ``probe_top``, ``max_rows`` as
        keywords.
    split : SplitSpec, optional
        Or ``val_fraction``, ``test_fraction``, ``seed`` as keywords; other keywords are extraction options.

    Returns
    -------
    Advice

    Raises
    ------
    FeatxError
        An unknown backbone or score, or a dataset without at least 2 labelled classes.
    """
    check_choice(score, SCORES, "score")
    rules = one_value(rules, AdviceRules, AdviceRules.fields_in(options), "rules")
    split = SplitSpec.resolve(split, options)
    start = time.perf_counter()
    backbones = backbone_list(backbone)
    dataset = data if isinstance(data, Dataset) else discover(data)
    if not dataset.labelled or len(dataset.class_names) < 2:
        raise FeatxError(f"{dataset.root}: advise needs a labelled dataset with at least 2 class folders")
    for line in check_classes(dataset):
        print(f"featx: warning: {line}", file=sys.stderr)
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names))
    large = bool(np.median(counts) >= rules.large_per_class)
    blocks, y = scored_blocks(dataset, backbones, rules, cache_dir, split, options)
    scores, best = measure_taps(blocks, y, score=score, probe_top=rules.probe_top, seed=split.seed)
    top = scores[best]["probe"]
    best_backbone, best_tap, _ = blocks[best]
    case, route, commands = recommend(dataset, (best_backbone, best_tap), top, large, rules,
                                      carried_flags(cache_dir, split))
    evidence = {
        "dataset": Path(dataset.root).name, "images": int(counts.sum()), "classes": len(counts),
        "median_per_class": float(np.median(counts)), "large_per_class": rules.large_per_class, "large": large,
        "rows_scored": int(len(y)), "probe_folds": 3, "score": score, "scores": scores, "best": best,
        "best_backbone": best_backbone, "best_tap": best_tap, "best_probe": top, "room": rules.room,
        "imagenet_confidence": None, "sampled": 0,
        "best_probe_figure": accuracy_of_rate(top, len(y), "cv"),
        "warning": small_sample_warning(y),
    }
    if "logits" in get_backbone(backbones[0]).tap_names:
        conf, entropy, sampled = imagenet_similarity(dataset, backbones[0], cache_dir, rules.sample, split.seed,
                                                     **options)
        evidence.update(imagenet_confidence=conf, imagenet_entropy=entropy, sampled=sampled)
    evidence["seconds"] = time.perf_counter() - start
    advice = Advice(case, route, commands, evidence)
    if out is not None:
        write_advice(advice, out)
    return advice
