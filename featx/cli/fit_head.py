"""``featx fit-head``: train a classifier head (or several, fused) on the cached codes of DATA."""

from __future__ import annotations

import argparse

from featx.cli.checks import check_backbones, check_folder, check_fractions, check_out_folder
from featx.cli.options import class_weight_option, class_weight_value, count, data_argument, extractor_options, \
    nonnegative_float, number, out_option, positive_int, split_kwargs, split_options, verbose_option, weights_value
from featx.cli.parser import add_command
from featx.vocabulary import FUSE_MODES, HEADS, RECIPES, TTA_MODES

#: Kept in step with featx.quality.NEAR_DUPLICATE_MODES (importing it here would load numpy for --help).
NEAR_DUPLICATE_MODES = ("report", "group", "off")


def head_names() -> tuple:
    """The named heads ``--head`` offers, from :mod:`featx.vocabulary`: importing :mod:`featx.heads` would
    load scikit-learn, SciPy and pandas (about 150 MB and a second) for one help string."""
    return tuple(HEADS)


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "fit-head", "train a classifier head on the cached codes of DATA")
    data_argument(p)
    extractor_options(p)
    p.add_argument("--head", default="logistic", metavar="NAME",
                   help="the classifier: " + ", ".join(head_names()) + ", or auto (cross-validated choice of head, "
                        "regularisation, scaling, taps and flip TTA within --budget)")
    p.add_argument("--backbones", default=None, metavar="A[,B]",
                   help="several backbones, fused as --fuse says (a comma list in --backbone works too) "
                        "(default: --backbone alone)")
    p.add_argument("--fuse", default="concat", choices=FUSE_MODES,
                   help="with several backbones: one head on the concatenated codes, or one head per backbone "
                        "with their probabilities averaged")
    p.add_argument("--tta", default="none", choices=TTA_MODES,
                   help="flip: train on each image and its mirror and average both (one more cached view); "
                        "views: train on and average the cached augmented views (extract --views K)")
    p.add_argument("--budget", type=nonnegative_float, default=None, metavar="SECONDS",
                   help="time for --head auto's search (default: 45; 0 scores the first candidate only)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                   help="train the final model on train+val once validation has chosen C or epochs; "
                        "--no-refit keeps the model trained on train alone")
    p.add_argument("--recipe", default="default", choices=RECIPES,
                   help="the dense head's settings: featx's measured ones, or the study's exactly (raw "
                        "codes, RMSprop 1e-3, 20 epochs)")
    class_weight_option(p, "none")
    _preprocessing_options(p)
    out_option(p, "featx-out/<dataset>-<backbone>-<taps>-<head>")
    p.add_argument("--views", type=count, default=0, metavar="K", help="train on K cached augmented views too")
    p.add_argument("--near-duplicates", default="report", choices=NEAR_DUPLICATE_MODES,
                   help="report: list near-duplicate groups that straddle the split and the test accuracy without "
                        "the leaked test images; group: also keep each group on one side of the split (a split of "
                        "its own); off: skip the search")
    p.add_argument("--duplicate-threshold", type=number(float, 0, 1, low_open=True), default=None, metavar="COSINE",
                   help="cosine similarity of near-duplicates (default: 0.92, see docs/check.md)")
    p.add_argument("--gallery", action=argparse.BooleanOptionalAction, default=True,
                   help="write gallery.html: the misclassified test images and a map of the codes")
    split_options(p)
    verbose_option(p)
    p.set_defaults(func=run)


def _preprocessing_options(p) -> None:
    """What is done to the codes before the head sees them."""
    p.add_argument("--l2", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise each row of codes (default: the head's own choice)")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardise each column of codes (default: the head's own choice)")
    p.add_argument("--pca", type=positive_int, default=None, metavar="K",
                   help="reduce the codes to K dimensions first (default: no reduction)")


def run(args) -> int:
    from featx.training import fit_head

    check_folder(args.data, "DATA")
    check_backbones(args, args.taps)
    check_fractions(args)
    check_out_folder(args.out)
    result = fit_head(
        args.data, backbone=args.backbones or args.backbone, taps=args.taps, head=args.head,
        pooling=args.pooling, dtype=args.dtype, weights=weights_value(args.weights), cache_dir=args.cache,
        out_dir=args.out, class_weight=class_weight_value(args.class_weight), l2=args.l2,
        standardize=args.standardize, pca=args.pca, **split_kwargs(args), views=args.views, refit=args.refit,
        fuse=args.fuse, tta=args.tta, budget=args.budget, recipe=args.recipe, engine=args.engine,
        batch_size=args.batch_size, workers=args.workers, precision=args.precision, near_duplicates=args.near_duplicates,
        gallery=args.gallery, **({"duplicate_threshold": args.duplicate_threshold}
                                 if args.duplicate_threshold is not None else {}),
    )
    print(result.report)
    print(f"bundle: {result.bundle}")
    print(f"metrics, confusion matrix: {result.out_dir}")
    return 0
