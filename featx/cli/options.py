"""The options several commands share, declared once: their value types, names, defaults and help.

Why one module: the same thing has the same option name, meaning and choices in every command (the table in
the README), so ``--taps``, ``--cache``, ``--engine``, the split and the batch options are written here and
each command adds the ones it takes.  The allowed values come from :mod:`featx.vocabulary`; a value type
checks its text while parsing, before any work, and says what it expected.
"""

from __future__ import annotations

import argparse
import math

from featx.cli.parser import add_alias
from featx.vocabulary import CLASS_WEIGHTS, DTYPES, ENGINES, POOLINGS, PRECISIONS

CACHE_HELP = "the cache folder; converted LiteRT engines live in DIR/engines (default: $FEATX_CACHE or ./cache)"
EXIT_STATUS = "Exit status: 0 done, 2 error, 3 done but some images were skipped."
DATA_HELP = "folder of class folders (or train/val/test)"

# ---- value types: checked while parsing, before any work -------------------------------------------


def number(kind, low=None, high=None, low_open=False, high_open=False, what="a number"):
    """An argparse type: ``kind(text)`` within ``[low, high]`` (open at an end when asked), finite, else an
    error saying ``expected WHAT, got 'TEXT'``."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if kind is float and not math.isfinite(value):  # nan passes every comparison; inf is no setting
            raise argparse.ArgumentTypeError(f"expected {what} (finite), got {text!r}")
        if (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and (value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = number(int, 1, what="a whole number of 1 or more")
count = number(int, 0, what="a whole number of 0 or more")
fraction = number(float, 0.0, 1.0, high_open=True, what="a fraction in [0, 1)")
positive_float = number(float, 0.0, low_open=True, what="a number above 0")
nonnegative_float = number(float, 0.0, what="a number of 0 or more")
port_number = number(int, 0, 65535, what="a port number 0..65535")


def taps_list(value: str) -> list[str]:
    """``'stage4, pre_logits'`` -> ``['stage4', 'pre_logits']``."""
    taps = [t.strip() for t in value.split(",") if t.strip()]
    if not taps:
        raise argparse.ArgumentTypeError("give at least one tap, e.g. pre_logits or stage4,pre_logits")
    return taps


# ---- parsed values as the Python API takes them ------------------------------------------------------


def weights_value(value: str):
    """``--weights`` for the API: ``none`` (any case) is ``None``, random weights; else the text."""
    return None if value.lower() == "none" else value


def class_weight_value(value: str):
    """``--class-weight`` for the API: ``none`` is ``None``."""
    return None if value == "none" else value


def backbone_names(args) -> list[str]:
    """``--backbones`` (or a comma list in ``--backbone``) as a list of names."""
    return [b.strip() for b in (getattr(args, "backbones", None) or args.backbone).split(",") if b.strip()]


def default_cache_folder():
    """The folder ``--cache`` means when it is not given (:data:`CACHE_HELP`: ``$FEATX_CACHE`` or ./cache)."""
    from featx.cache import default_cache_dir

    return default_cache_dir()


def split_kwargs(args) -> dict:
    """The split's options (:func:`split_options`) as the API's keywords, which travel together."""
    return {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "seed": args.seed}


# ---- shared options ---------------------------------------------------------------------------------


def data_argument(p, help: str = DATA_HELP) -> None:
    """The ``DATA`` folder, first positional argument of the commands that read a dataset."""
    p.add_argument("data", metavar="DATA", help=help)


def backbone_option(p) -> None:
    from featx.backbones.registry import DEFAULT_BACKBONE

    p.add_argument("--backbone", default=DEFAULT_BACKBONE, metavar="NAME",
                   help="the pretrained network; see 'featx backbones'")


def weights_option(p, default="imagenet") -> None:
    p.add_argument("--weights", default=default, metavar="imagenet|none|FILE",
                   help="the backbone's weights: 'imagenet', a weights file, or 'none' (random, seeded)")


def cache_option(p) -> None:
    p.add_argument("--cache", default=None, metavar="DIR", help=CACHE_HELP)


def taps_option(p, default="pre_logits", help_default=None) -> None:
    """``--taps A[,B]`` (a list; ``default`` None means every tap), with ``--tap`` as its hidden old name."""
    p.add_argument("--taps", type=taps_list, default=[default] if default else None, metavar="A[,B]",
                   help="comma-separated taps (layers) to read codes from; several are concatenated; see "
                        "'featx backbones'" + (f" (default: {help_default})" if help_default else ""))
    add_alias(p, "--tap", "--taps", dest="taps", type=taps_list)


def engine_option(p, engines=ENGINES, default=None, extra="") -> None:
    """``--engine``; ``default`` None means the API's (``$FEATX_ENGINE`` or auto); ``extra`` ends the help."""
    p.add_argument("--engine", default=default, choices=list(engines),
                   help="inference engine: auto (LiteRT on a CPU when installed and checked), keras, litert"
                        + (", or ray (Ray Data actors)" if "ray" in engines else "") + extra
                        + (" (default: $FEATX_ENGINE or auto)" if default is None else ""))


def precision_option(p) -> None:
    """``--precision``: the network's arithmetic (int8: LiteRT only, calibrated on the data; docs/int8.md)."""
    p.add_argument("--precision", default="float32", choices=PRECISIONS,
                   help="the network's arithmetic: float32, or int8 (LiteRT only, faster on a CPU, calibrated on "
                        "100 of the data's training images, its own cache; off for backbones whose heads lost "
                        "accuracy; see docs/int8.md)")


def batch_options(p) -> None:
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="images per network batch")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="decode threads (default: the cores left beside the engine, at least 1)")


def extractor_options(p, taps_default="pre_logits", engines=ENGINES) -> None:
    """Everything that says how codes are computed and stored: backbone, taps, pooling, dtype, precision,
    weights, cache, engine, batch."""
    backbone_option(p)
    taps_option(p, taps_default, None if taps_default else "every tap of the backbone")
    p.add_argument("--pooling", default="avg", choices=POOLINGS,
                   help="how a tap's feature map becomes one vector (none: keep the whole map)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="storage type of the codes")
    precision_option(p)
    weights_option(p)
    cache_option(p)
    engine_option(p, engines)
    batch_options(p)


def split_options(p) -> None:
    p.add_argument("--val-fraction", type=fraction, default=0.2, metavar="F", help="validation share of the images")
    p.add_argument("--test-fraction", type=fraction, default=0.2, metavar="F",
                   help="held-out test share when DATA has no test/ folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (stored by content) and of training")


def class_weight_option(p, default: str) -> None:
    p.add_argument("--class-weight", choices=CLASS_WEIGHTS, default=default,
                   help="balanced: weight each class by the inverse of its share of the training images")


def out_option(p, default_help: str, metavar="DIR") -> None:
    """``--out`` with no default value: ``default_help`` says what happens without it."""
    p.add_argument("--out", default=None, metavar=metavar, help=f"where the outputs go (default: {default_help})")


def trust_option(p) -> None:
    p.add_argument("--trust-bundle", action="store_true",
                   help="load a model.featx bundle, or a model.keras with its featx.json, not signed by featx for "
                        "this user (a bundle is a pickle: only if you trust it; a model's size checks still apply)")


def verbose_option(p) -> None:
    p.add_argument("--verbose", "-v", action="store_true",
                   help="name every file the folder scan leaves out (default: only count them)")
