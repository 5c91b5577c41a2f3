"""``featx finetune``: fine-tune the backbone end to end, starting from a head trained on the cached codes."""

from __future__ import annotations

import argparse

from featx.cli.checks import check_extractor, check_file, check_folder, check_fractions, check_out_folder
from featx.cli.options import backbone_option, cache_option, class_weight_option, class_weight_value, count, \
    data_argument, nonnegative_float, out_option, positive_float, positive_int, split_kwargs, split_options, \
    taps_option, trust_option, verbose_option, weights_option, weights_value
from featx.cli.output import plural, train_accuracy
from featx.cli.parser import add_command
from featx.errors import FeatxError
from featx.vocabulary import AUGMENTATIONS, RECIPES


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "finetune", "fine-tune the backbone end to end, starting from a cached-route head")
    data_argument(p)
    backbone_option(p)
    taps_option(p)
    p.add_argument("--unfreeze", default=None, metavar="POLICY",
                   help="all, from:<tap|layer|index>, top:<N stages> (default: all for VGG, from:94 for "
                        "Inception/Xception, top:2 otherwise)")
    p.add_argument("--init-head", default=None, metavar="BUNDLE",
                   help="a dense-head bundle from fit-head (default: train one on the cache first)")
    _recipe_options(p)
    class_weight_option(p, "balanced")
    weights_option(p)
    cache_option(p)
    out_option(p, "featx-out/<dataset>-<backbone>-finetune")
    trust_option(p)
    split_options(p)
    verbose_option(p)
    p.set_defaults(func=run)


def _recipe_options(p) -> None:
    """The recipe and the settings that override it one by one (each defaults to the recipe's)."""
    p.add_argument("--recipe", default="default", choices=RECIPES,
                   help="default: head warm-up, then AdamW with a cosine schedule, light augmentation, a few "
                        "epochs; study: the 2017 recipe (SGD 1e-4, momentum 0.9, the study's augmentation) "
                        "(default: default)")
    p.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                   help="training epochs at most (default: the recipe's, 4 or 10)")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="images per training step (default: the recipe's, 32 or 16)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate (default: the recipe's, 1e-4 for both: AdamW peak, SGD constant)")
    p.add_argument("--momentum", type=nonnegative_float, default=None,
                   help="SGD momentum, study recipe (default: 0.9)")
    p.add_argument("--warmup", type=nonnegative_float, default=None, metavar="EPOCHS",
                   help="head-only warm-up before unfreezing, in epochs (default: the recipe's, 0.25 or 0)")
    p.add_argument("--augment", default=None, choices=AUGMENTATIONS,
                   help="training augmentation, Keras 1.2.2 semantics (default: the recipe's, light or study)")
    p.add_argument("--patience", type=count, default=None, metavar="N",
                   help="stop after N epochs without a better validation loss (default: the recipe's, 2 or 3)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="per-step progress bar with images/s and ETA (default: when stderr is a terminal)")


def run(args) -> int:
    from featx.training import finetune

    _check(args)
    result = finetune(
        args.data, backbone=args.backbone, taps=args.taps, unfreeze=args.unfreeze, init_head=args.init_head,
        recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        momentum=args.momentum, warmup=args.warmup, augment=args.augment,
        class_weight=class_weight_value(args.class_weight), patience=args.patience,
        weights=weights_value(args.weights), cache_dir=args.cache, out_dir=args.out, **split_kwargs(args),
        trust=args.trust_bundle, progress=args.progress,
    )
    m = result["metrics"]
    print(f"{m['dataset']}: fine-tuned {m['backbone']} ({m['recipe']} recipe, {m['unfreeze']}), "
          f"{plural(m['epochs_run'], 'epoch')} in {m['train_seconds']:.0f}s: accuracy train {train_accuracy(m)}, "
          f"val {m['accuracy_text']['val'] if m['n']['val'] else '-'}")
    print(f"test accuracy {m['accuracy_text']['test'] if m['n']['test'] else '- (no test images)'}; "
          f"{m['total_seconds']:.0f}s in all")
    print(f"model: {result['model']}  (history.csv, curves.png, metrics.json beside it)")
    return 0


def _check(args) -> None:
    """Everything finetune can check before loading a network: paths, backbone, one tap, fractions."""
    check_folder(args.data, "DATA")
    check_extractor(args, args.taps)
    if len(args.taps) != 1:
        raise FeatxError(f"--taps: finetune trains on one tap, got {','.join(args.taps)}")
    check_fractions(args)
    check_out_folder(args.out)
    if args.init_head is not None:
        check_file(args.init_head, "--init-head")
