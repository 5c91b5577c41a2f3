"""``featx check``: near-duplicates, suspected label errors and outliers of DATA, seen through its cached codes."""

from __future__ import annotations

import argparse
import difflib

from featx.cli.checks import check_extractor, check_folder, check_fractions, check_out_folder
from featx.cli.options import (data_argument, extractor_options, number, out_option, positive_int,
                               split_kwargs, split_options, verbose_option, weights_value)
from featx.cli.parser import add_command

#: Kept in step with featx.check.FAIL_ON (importing featx.check here would load scikit-learn for --help).
FAIL_ON = ("leakage", "label-conflicts", "label-errors", "outliers", "near-duplicates")


def fail_on_list(value: str) -> list[str]:
    """``"leakage,label-errors"`` -> the kinds, each checked; else a usage error naming the choices."""
    kinds = [v.strip() for v in value.split(",") if v.strip()]
    bad = [k for k in kinds if k not in FAIL_ON]
    if bad or not kinds:
        close = difflib.get_close_matches(bad[0], FAIL_ON, n=1) if bad else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise argparse.ArgumentTypeError(f"unknown kind {', '.join(map(repr, bad)) or repr(value)}{hint}; "
                                         f"choose from {', '.join(FAIL_ON)}")
    return kinds


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "check", "near-duplicates, suspected label errors and outliers of DATA, from its "
                                         "cached codes; writes check.json and check.html")
    data_argument(p)
    extractor_options(p)
    p.add_argument("--threshold", type=number(float, 0, 1, low_open=True, what="a cosine similarity in (0, 1]"), default=None,
                   metavar="COSINE",
                   help="cosine similarity of near-duplicates (default: 0.92, calibrated on planted copies with "
                        "mobilenet_v2 pre_logits; see docs/check.md)")
    p.add_argument("--neighbours", type=positive_int, default=5, metavar="K",
                   help="outlier score: mean cosine distance to the K nearest images")
    p.add_argument("--top", type=positive_int, default=50, metavar="N",
                   help="suspects and outliers listed in check.json beyond the flagged ones")
    p.add_argument("--fail-on", type=fail_on_list, default=[], metavar="KIND[,KIND]",
                   help="exit 1 when any of these is found (for pipelines): " + ", ".join(FAIL_ON)
                        + " (default: none; the exit status is 0 whatever is found)")
    out_option(p, "featx-out/<dataset>-check")
    split_options(p)
    verbose_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.check import check
    from featx.quality import NEAR_DUPLICATE_THRESHOLD

    check_folder(args.data, "DATA")
    check_extractor(args, args.taps)
    check_fractions(args)
    check_out_folder(args.out)
    result = check(args.data, args.backbone, args.taps, cache_dir=args.cache, out_dir=args.out,
                   threshold=args.threshold or NEAR_DUPLICATE_THRESHOLD, neighbours=args.neighbours, top=args.top,
                   pooling=args.pooling, dtype=args.dtype, weights=weights_value(args.weights), **split_kwargs(args),
                   engine=args.engine, batch_size=args.batch_size, workers=args.workers)
    print(result.summary())
    print(f"check: {result.files['json']}, {result.files['html']}")
    problems = result.problems()
    found = [f"{k} ({problems[k]})" for k in args.fail_on if problems[k]]
    if found:
        print(f"featx: check failed on {', '.join(found)} (--fail-on)")
        return 1
    return 0
