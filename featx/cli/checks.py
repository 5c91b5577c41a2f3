"""Checks a command makes before its first expensive or writing step: paths, names, weights, fractions.

Why: a wrong path or backbone name found after minutes of extraction, or after an output folder was
half-written, costs the user that time; each check here is cheap (no TensorFlow) and raises a
:class:`~featx.errors.FeatxError` naming the option or argument to fix.
"""

from __future__ import annotations

import argparse
import difflib
import os
from pathlib import Path

from featx.cli.options import backbone_names, weights_value
from featx.errors import FeatxError


def did_you_mean(path) -> str:
    """``'; did you mean PATH?'`` when a name beside the missing ``path`` is close to its own (``bird10`` beside
    ``birds10``; difflib ratio at least 0.75, the closest one), else ``''``.  Only the parent folder is listed,
    and only when it exists and can be read."""
    path = Path(path)
    parent = path.parent
    try:
        names = [n for n in os.listdir(parent or ".") if not n.startswith(".")]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
    return f"; did you mean {parent / close[0]}?" if close else ""


def check_folder(path, option: str) -> Path:
    """``path`` as a Path; FeatxError naming ``option`` (and a close name beside it) when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise FeatxError(f"{option}: {path}: no such folder{did_you_mean(path)}")
    return path


def check_file(path, option: str) -> Path:
    """``path`` as a Path; FeatxError naming ``option`` (and a close name beside it) when it is not a file."""
    path = Path(path)
    if not path.is_file():
        missing = "no such file" if not path.exists() else "not a file"
        raise FeatxError(f"{option}: {path}: {missing}{did_you_mean(path) if not path.exists() else ''}")
    return path


def check_out_folder(path, option: str = "--out") -> None:
    """FeatxError when an output folder would have to replace an existing file."""
    if path is not None and Path(path).is_file():
        raise FeatxError(f"{option}: {path} is a file; give a folder for the outputs")


def check_out_file(path, option: str = "--out") -> None:
    """FeatxError when an output file would have to replace an existing folder."""
    if path is not None and Path(path).is_dir():
        raise FeatxError(f"{option}: {path} is a folder; give a file name, e.g. {Path(path) / 'predictions.csv'}")


def check_weights(weights: str) -> None:
    """FeatxError unless ``--weights`` is ``imagenet``, ``none`` or an existing file."""
    if weights_value(weights) not in (None, "imagenet") and not Path(weights).is_file():
        raise FeatxError(f"--weights: {weights} is not a file; give a weights file, 'imagenet' or 'none'")


def check_extractor(args, taps=None) -> None:
    """Backbone, taps and weights file: cheap to check (no TensorFlow), expensive to find out later."""
    from featx.backbones.registry import get_backbone

    spec = get_backbone(args.backbone)
    for t in taps or ():
        spec.tap(t)
    weights = getattr(args, "weights", None)
    if weights:
        check_weights(weights)


def check_backbones(args, taps=None) -> None:
    """:func:`check_extractor` for each backbone of ``--backbones`` (or of a comma list in ``--backbone``)."""
    for name in backbone_names(args):
        check_extractor(argparse.Namespace(**{**vars(args), "backbone": name}), taps)


def check_fractions(args) -> None:
    """FeatxError when ``--val-fraction`` and ``--test-fraction`` leave no image to train on."""
    if args.val_fraction + args.test_fraction >= 1:
        raise FeatxError(f"--val-fraction, --test-fraction: {args.val_fraction} + {args.test_fraction} leaves "
                         "nothing to train on; keep their sum below 1")
