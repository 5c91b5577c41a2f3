"""``featx extract``: run a backbone once over DATA and cache its codes (locally or on Ray)."""

from __future__ import annotations

from featx.cli.checks import check_extractor, check_folder
from featx.cli.options import EXIT_STATUS, count, data_argument, extractor_options, nonnegative_float, \
    positive_int, verbose_option, weights_value
from featx.cli.parser import add_command
from featx.errors import FeatxError
from featx.vocabulary import EXTRACT_ENGINES


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "extract", "run a backbone once over DATA and cache its codes",
                    description="Run a backbone once over DATA and cache its codes. " + EXIT_STATUS)
    data_argument(p, "folder of class folders (or train/val/test), or of images")
    extractor_options(p, engines=EXTRACT_ENGINES)
    p.add_argument("--mixed-precision", action="store_true", help="float16 compute on a GPU")
    p.add_argument("--views", type=count, default=0, metavar="K",
                   help="also cache K augmented views of each image (the study's augmentation, seeded)")
    p.add_argument("--address", default=None,
                   help="with --engine ray: a Ray cluster's address (default: start one on this machine)")
    p.add_argument("--num-workers", type=positive_int, default=1, metavar="N",
                   help="with --engine ray: backbone actors")
    p.add_argument("--gpus-per-worker", type=nonnegative_float, default=0, metavar="G",
                   help="with --engine ray: GPUs per actor")
    p.add_argument("--retry-failed", action="store_true",
                   help="try again files whose exact bytes failed to decode before (default: skip them)")
    verbose_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.config import ExtractorConfig
    from featx.extract import extract

    check_folder(args.data, "DATA")
    check_extractor(args, args.taps)
    if args.views and args.engine == "ray":
        raise FeatxError("--views: augmented views run on the local engine; extract them without --engine ray")
    config = ExtractorConfig(args.backbone, args.taps, args.pooling, args.dtype, weights_value(args.weights),
                             args.mixed_precision, args.precision)
    report = extract(args.data, config, batch_size=args.batch_size, cache_dir=args.cache, workers=args.workers,
                     views=args.views, engine=_engine(args), retry_failed=args.retry_failed)
    print(report.summary())
    for path, reason in report.failures:
        print(f"skipped {path}: {reason}")
    return 3 if report.failures else 0


def _engine(args):
    """``--engine`` as extract takes it: the name, or a Ray engine built from the Ray options."""
    if args.engine != "ray":
        return args.engine
    from featx.engines.ray import RayEngine  # only with --engine ray: Ray is an optional dependency

    return RayEngine(address=args.address, num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker)
