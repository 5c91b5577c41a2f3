"""``featx baseline``: the study's CNN trained from scratch on the same split, the yardstick for transfer."""

from __future__ import annotations

from featx.cli.checks import check_folder, check_fractions, check_out_folder
from featx.cli.options import cache_option, class_weight_option, class_weight_value, data_argument, number, \
    out_option, positive_int, split_kwargs, split_options, verbose_option
from featx.cli.output import plural, train_accuracy
from featx.cli.parser import add_command
from featx.vocabulary import BASELINE_ARCHS


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "baseline", "the study's CNN trained from scratch (cnn1 or cnn6), same split")
    data_argument(p)
    p.add_argument("--arch", default="cnn1", choices=BASELINE_ARCHS,
                   help="cnn1: one conv layer and a 1024-unit dense layer (about 72M parameters at --size 96); "
                        "cnn6: six conv layers, far fewer parameters")
    p.add_argument("--size", type=number(int, 16, what="a whole number of 16 or more"), default=96, metavar="PIXELS",
                   help="input side in pixels")
    p.add_argument("--epochs", type=positive_int, default=20, metavar="N", help="training epochs at most")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="images per training step")
    class_weight_option(p, "balanced")
    cache_option(p)
    out_option(p, "featx-out/<dataset>-<arch>")
    split_options(p)
    verbose_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.training import train_baseline

    check_folder(args.data, "DATA")
    check_fractions(args)
    check_out_folder(args.out)
    result = train_baseline(args.data, arch=args.arch, size=args.size, epochs=args.epochs,
                            batch_size=args.batch_size, class_weight=class_weight_value(args.class_weight),
                            cache_dir=args.cache, out_dir=args.out, **split_kwargs(args))
    m = result["metrics"]
    print(f"{m['dataset']}: {m['arch']} from scratch ({m['params']:,} parameters), "
          f"{plural(m['epochs_run'], 'epoch')} in {m['train_seconds']:.0f}s: accuracy train {train_accuracy(m)}, "
          f"val {m['accuracy_text']['val']}")
    print(f"{m['evaluated_on']} accuracy {m['accuracy_text'][m['evaluated_on']]}")
    print(f"outputs: {result['out_dir']}")
    return 0
