"""Which route fits a dataset: CS231n's four cases of transfer learning.

Two questions decide it.  Is the dataset *small* (few images per class: a
network fine-tuned end to end would overfit) or *large*?  Is it *similar* to
ImageNet (the pretrained classifier recognises its images with confidence, so
the top codes already describe them) or *different*?  Optionally a layer
sweep adds direct evidence: when an earlier tap beats ``pre_logits``, the
top layers are too ImageNet-specific for this data.

=========  ================================  ==============================
           similar to ImageNet               different from ImageNet
=========  ================================  ==============================
small      linear head on ``pre_logits``     head on an earlier tap
large      fine-tune the top blocks          fine-tune everything
=========  ================================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from featx.backbones.registry import DEFAULT_BACKBONE, get_backbone
from featx.datasets import Dataset, discover
from featx.errors import FeatxError
from featx.extract import load_features
from featx.peek import softmax


@dataclass
class Advice:
    case: str  # e.g. "small, similar"
    route: str
    commands: list
    evidence: dict = field(default_factory=dict)

    def text(self) -> str:
        ev = self.evidence
        lines = [
            f"case: {self.case} -> {self.route}",
            f"evidence: {ev['images']} images in {ev['classes']} classes, median {ev['median_per_class']:.0f} "
            f"per class ({'>=' if ev['large'] else '<'} {ev['large_per_class']} counts as large); "
            f"ImageNet classifier's mean top-1 probability {ev['imagenet_confidence']:.2f} over "
            f"{ev['sampled']} images ({'>=' if ev['confidence_says_similar'] else '<'} "
            f"{ev['similar_confidence']} counts as similar), mean normalised entropy {ev['imagenet_entropy']:.2f}",
        ]
        if "sweep" in ev:
            accs = ", ".join(f"{t} {a:.3f}" for t, a in ev["sweep"].items())
            lines.append(f"sweep (validation accuracy by tap): {accs}; best {ev['best_tap']}")
        lines.append("recommended:")
        lines += [f"  {c}" for c in self.commands]
        return "\n".join(lines)


def imagenet_similarity(dataset: Dataset, backbone: str, cache_dir=None, sample: int = 300, seed: int = 0, **kw):
    """Mean top-1 probability and normalised entropy of the ImageNet classifier."""
    paths = list(dataset.paths)
    if len(paths) > sample:
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), sample, replace=False))]
    feats = load_features(paths, backbone, ["logits"], cache_dir=cache_dir, **kw)
    p = softmax(feats.codes["logits"].astype(np.float64))
    entropy = -(p * np.log(p + 1e-12)).sum(axis=1) / np.log(p.shape[1])
    return float(p.max(axis=1).mean()), float(entropy.mean()), len(paths)


def advise(data, backbone: str = DEFAULT_BACKBONE, cache_dir=None, sample: int = 300, with_sweep: bool = False,
           large_per_class: int = 500, similar_confidence: float = 0.5, seed: int = 0, **extract_options) -> Advice:
    spec = get_backbone(backbone)
    if "logits" not in spec.tap_names:
        raise FeatxError(f"--backbone: {backbone} has no ImageNet classifier to judge similarity with")
    dataset = data if isinstance(data, Dataset) else discover(data)
    if not dataset.labelled or len(dataset.class_names) < 2:
        raise FeatxError(f"{dataset.root}: advise needs a labelled dataset with at least 2 class folders")
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names))
    confidence, entropy, sampled = imagenet_similarity(dataset, backbone, cache_dir, sample, seed, **extract_options)
    large = bool(np.median(counts) >= large_per_class)
    similar = confidence >= similar_confidence
    evidence = {
        "images": int(counts.sum()), "classes": len(counts), "median_per_class": float(np.median(counts)),
        "large_per_class": large_per_class, "large": large,
        "imagenet_confidence": confidence, "imagenet_entropy": entropy, "sampled": sampled,
        "similar_confidence": similar_confidence, "confidence_says_similar": similar,
    }
    best_tap = "stage4" if "stage4" in spec.tap_names else spec.tap_names[-3]
    if with_sweep:
        from featx.fit import sweep

        candidates = [t for t in spec.tap_names if t != "logits"]
        table = sweep(dataset, backbone, candidates, cache_dir=cache_dir, seed=seed, **extract_options)
        scores = dict(zip(table["tap"], table["val_acc"].fillna(table["test_acc"])))
        evidence["sweep"] = scores
        top = max(scores.values())
        best_tap = [t for t, a in scores.items() if a >= top - 1e-9][-1]  # ties go to the deeper tap
        evidence["best_tap"] = best_tap
        if scores.get("pre_logits", 0.0) < top - 0.02:
            similar = False  # an earlier layer is clearly better: the top codes do not fit this data
    data_arg = str(dataset.root)
    b = f"--backbone {backbone}"
    if not large and similar:
        route = "a linear classifier on the top codes (pre_logits)"
        commands = [f"featx fit-head {data_arg} {b} --tap pre_logits --head logistic"]
    elif not large:
        route = ("a classifier on codes from an earlier layer" if not with_sweep else
                 f"a classifier on the tap the sweep measured best ({best_tap})")
        commands = [f"featx fit-head {data_arg} {b} --tap {best_tap} --head logistic"]
        if not with_sweep:
            commands.append(f"featx sweep {data_arg} {b}    # to choose the tap by measurement")
    elif similar:
        route = "fine-tune the top blocks, starting from a head trained on the cache"
        commands = [f"featx finetune {data_arg} {b} --unfreeze top:2"]
    else:
        route = "fine-tune the whole network, starting from a head trained on the cache"
        commands = [f"featx finetune {data_arg} {b} --unfreeze all"]
    case = f"{'large' if large else 'small'}, {'similar' if similar else 'different'}"
    return Advice(case, route, commands, evidence)
