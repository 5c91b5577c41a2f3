"""``featx demo``: the main job end to end on scikit-learn's digits, offline, to see featx work."""

from __future__ import annotations

from featx.cli.checks import check_extractor, check_out_folder
from featx.cli.options import backbone_option, cache_option, positive_int, weights_option, weights_value
from featx.cli.parser import add_command


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "demo", "the main job end to end on scikit-learn's digits (offline)")
    backbone_option(p)
    weights_option(p)
    cache_option(p)
    p.add_argument("--out", default="featx-out/demo", metavar="DIR", help="where the outputs go")
    p.add_argument("--per-class", type=positive_int, default=40, metavar="N", help="digit images per class")
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.demo import run_demo

    check_extractor(args)
    check_out_folder(args.out)
    run_demo(out_dir=args.out, backbone=args.backbone, cache_dir=args.cache, per_class=args.per_class,
             weights=weights_value(args.weights))
    return 0
