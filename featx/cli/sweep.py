"""``featx sweep``: a logistic head on every tap of a backbone, to see whether earlier layers suit DATA better."""

from __future__ import annotations

from featx.cli.checks import check_extractor, check_folder, check_fractions, check_out_folder
from featx.cli.options import data_argument, extractor_options, out_option, split_kwargs, split_options, \
    verbose_option, weights_value
from featx.cli.parser import add_command


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "sweep", "a linear head on every tap: are earlier layers better for DATA?")
    data_argument(p)
    extractor_options(p, taps_default=None)
    out_option(p, "featx-out/<dataset>-<backbone>-sweep")
    split_options(p)
    verbose_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.training import sweep
    from featx.training.sweep import sweep_text

    check_folder(args.data, "DATA")
    check_extractor(args, args.taps)
    check_fractions(args)
    check_out_folder(args.out)
    table = sweep(args.data, backbone=args.backbone, taps=args.taps, pooling=args.pooling, dtype=args.dtype,
                  weights=weights_value(args.weights), cache_dir=args.cache, out_dir=args.out, **split_kwargs(args),
                  engine=args.engine, batch_size=args.batch_size, workers=args.workers, precision=args.precision)
    print(f"{table.attrs['dataset']}: logistic head on each tap of {args.backbone} (split {table.attrs['split_id']})")
    print(sweep_text(table))
    print(f"plot and table: {table.attrs['out_dir']}")
    return 0
