"""``featx advise``: which route fits DATA (a head on cached codes, or fine-tuning), from measured
transferability of every tap."""

from __future__ import annotations

import argparse
from pathlib import Path

from featx.cli.checks import check_backbones, check_folder, check_out_folder
from featx.cli.options import backbone_names, backbone_option, cache_option, data_argument, nonnegative_float, \
    out_option, positive_int, precision_option, split_kwargs, split_options, verbose_option
from featx.cli.parser import add_command
from featx.vocabulary import ADVISE_SCORES


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "advise", "which route fits DATA, from measured transferability of every tap")
    data_argument(p)
    backbone_option(p)
    p.add_argument("--backbones", default=None, metavar="A[,B]",
                   help="rank the taps of several backbones together (default: --backbone alone)")
    cache_option(p)
    p.add_argument("--score", default="logme", choices=ADVISE_SCORES,
                   help="rank every tap by LogME (seconds) or by a 3-fold cross-validated logistic probe")
    p.add_argument("--room", type=nonnegative_float, default=0.05,
                   help="recommend fine-tuning only when the best cached probe accuracy is below 1 - ROOM")
    p.add_argument("--sample", type=positive_int, default=300, metavar="N",
                   help="images the ImageNet classifier scores, shown as context")
    p.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)  # old flag: every tap is measured now
    p.add_argument("--large-per-class", type=positive_int, default=500, metavar="N",
                   help="a dataset with at least N images per class (median) counts as large")
    out_option(p, "print only; DIR gets advice.json and advice.txt")
    split_options(p)
    precision_option(p)
    verbose_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.advise import advise

    check_folder(args.data, "DATA")
    check_backbones(args)
    check_out_folder(args.out)
    advice = advise(args.data, backbone=backbone_names(args), cache_dir=args.cache, sample=args.sample,
                    score=args.score, large_per_class=args.large_per_class, room=args.room, **split_kwargs(args),
                    out=args.out, precision=args.precision)
    print(advice)
    if args.out:
        print(f"written: {Path(args.out) / 'advice.json'}, {Path(args.out) / 'advice.txt'}")
    return 0
