"""``featx predict``: classify images with a bundle and print (or write) a CSV of predictions."""

from __future__ import annotations

import sys
from pathlib import Path

from featx.cells import safe_frame
from featx.cli.checks import check_file, check_out_file, check_weights
from featx.cli.options import EXIT_STATUS, batch_options, cache_option, engine_option, out_option, positive_int, \
    trust_option, verbose_option, weights_value
from featx.cli.parser import add_command
from featx.errors import FeatxError
from featx.vocabulary import TTA_MODES


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "predict", "classify images with a bundle; CSV of predictions",
                    description="Classify images with a bundle and print (or write) a CSV of predictions. A folder "
                                "of class folders adds a true_label column and the accuracy with its 95% interval. "
                                + EXIT_STATUS)
    p.add_argument("bundle", metavar="BUNDLE",
                   help="model.featx from fit-head, or model.keras from finetune or baseline")
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_DIR", help="image files or folders")
    out_option(p, "print the CSV", metavar="FILE")
    p.add_argument("--top", type=positive_int, default=None, metavar="K",
                   help="add the 2nd..Kth classes and their probabilities (default: the predicted class only)")
    cache_option(p)
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="the backbone's weights file, when not where the bundle says (default: the bundle's)")
    p.add_argument("--tta", nargs="?", const="views", default="none", choices=TTA_MODES,
                   help="test-time augmentation: flip averages over each image and its mirror (one cached view); "
                        "views over cached augmented views (a bare --tta means views)")
    engine_option(p)
    batch_options(p)
    trust_option(p)
    verbose_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.prediction import PROBABILITY_FORMAT, predict

    _check(args)
    table = predict(args.bundle, args.images, top=args.top, out=args.out, cache_dir=args.cache,
                    trust=args.trust_bundle, weights=None if args.weights is None else weights_value(args.weights),
                    tta=args.tta, engine=args.engine, batch_size=args.batch_size, workers=args.workers)
    if args.out:
        print(f"{len(table)} predictions written to {args.out}")
    else:
        print(safe_frame(table).to_csv(index=False, float_format=PROBABILITY_FORMAT), end="")
    if "true_label" in table:
        _print_accuracy(table)
    for note in table.attrs.get("notes", []):
        print(f"featx: note: {note}", file=sys.stderr)
    for path, reason in table.attrs["failures"]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 3 if table.attrs["failures"] else 0


def _check(args) -> None:
    """The bundle, every image or folder, the output file and a weights file exist (or can be written)."""
    check_file(args.bundle, "BUNDLE")
    for image in args.images:
        if not Path(image).exists():
            raise FeatxError(f"IMAGES_OR_DIR: {image}: no such file or folder")
    check_out_file(args.out)
    if args.weights is not None:
        check_weights(args.weights)


def _print_accuracy(table) -> None:
    """The accuracy against the folder names with its interval, and warnings when it is a weak estimate."""
    from featx.stats import accuracy_summary

    summary = accuracy_summary(table["true_label"].astype(str), table["predicted"].astype(str))
    print(f"accuracy against the folder names: {summary['text']}  95% Wilson interval")
    if summary["warning"]:
        print(summary["warning"])
    seen = table.attrs.get("seen_in_training", 0)
    if seen:
        print(f"warning: {seen} of these {len(table)} images were in the model's own train/val split, so this "
              "accuracy is not a held-out estimate (the test accuracy fit-head printed is one)")
