"""The ``featx`` command: parses arguments and calls the Python API, nothing more."""

from __future__ import annotations

import argparse
import sys

from featx.errors import FeatxError


def _weights(value: str):
    return None if value.lower() == "none" else value


def cmd_backbones(args) -> int:
    from featx.backbones.registry import list_backbones

    rows = [("name", "input", "code dim", "taps", "weights", "offline")]
    for b in list_backbones():
        rows.append((b.name, str(b.input_size), str(b.code_dim), ",".join(b.tap_names), b.source,
                     "yes" if b.offline else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_peek(args) -> int:
    from featx.peek import peek

    results = peek(args.images, backbone=args.backbone, top=args.top, weights=_weights(args.weights))
    for path, top in zip(args.images, results):
        print(path)
        for rank, (index, name, prob) in enumerate(top, 1):
            print(f"  {rank}. {name:<30} {prob:6.1%}  (class {index})")
    return 0


def _taps(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def cmd_extract(args) -> int:
    from featx.extract import extract

    report = extract(
        args.data, backbone=args.backbone, taps=_taps(args.taps), pooling=args.pooling,
        batch_size=args.batch_size, cache_dir=args.cache, dtype=args.dtype, weights=_weights(args.weights),
        workers=args.workers, mixed_precision=args.mixed_precision,
    )
    print(report.summary())
    skipped = report.dataset.skipped
    if sum(skipped.values()):
        print("not images: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()) if n))
    for path, reason in report.failures:
        print(f"skipped {path}: {reason}")
    return 3 if report.failures else 0


def cmd_cache(args) -> int:
    import json

    from featx.cache import FeatureCache, default_cache_dir, list_caches

    if args.action == "ls":
        folder = args.target or default_cache_dir()
        files = list_caches(folder)
        if not files:
            print(f"no caches in {folder}")
        for path in files:
            info = FeatureCache(path).info()
            taps = ", ".join(f"{t} {v['rows']}x{v['dim']}" for t, v in info["taps"].items())
            print(f"{path}  {info['size_bytes'] / 1e6:.1f} MB  {taps}")
        return 0
    if not args.target:
        raise FeatxError(f"featx cache {args.action}: give the cache FILE")
    from pathlib import Path

    cache = FeatureCache(args.target)
    if not Path(args.target).is_file():
        raise FeatxError(f"{args.target}: no such cache file; list them with 'featx cache ls'")
    if args.action == "info":
        print(json.dumps(cache.info(), indent=2, default=str))
        return 0
    problems = cache.verify()
    for p in problems:
        print(f"{args.target}: {p}")
    if not problems:
        print(f"{args.target}: ok")
    return 1 if problems else 0


def cmd_demo(args) -> int:
    import sklearn.datasets
    from pathlib import Path

    images = sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))
    args.images, args.top = [str(p) for p in images], 5
    return cmd_peek(args)


def _extractor_options(p):
    from featx.backbones.registry import DEFAULT_BACKBONE

    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"see 'featx backbones' (default {DEFAULT_BACKBONE})")
    p.add_argument("--taps", default="pre_logits", help="comma-separated taps (default pre_logits)")
    p.add_argument("--pooling", default="avg", choices=["avg", "max", "avgmax", "none"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="storage type")
    p.add_argument("--weights", default="imagenet", help="'imagenet' (default), a weights file, or 'none'")
    p.add_argument("--cache", default=None, help="cache folder (default $FEATX_CACHE or ./cache)")


def build_parser() -> argparse.ArgumentParser:
    from featx import __version__
    from featx.backbones.registry import DEFAULT_BACKBONE

    parser = argparse.ArgumentParser(prog="featx", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backbones", help="list the backbones, their taps and weight sources")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("peek", help="ImageNet top-K classes for some images (a quick sanity check)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--weights", default="imagenet", help="'imagenet' (default), a weights file, or 'none'")
    p.add_argument("--top", type=int, default=5)
    p.set_defaults(func=cmd_peek)

    p = sub.add_parser("extract", help="run a backbone once over DATA and cache its codes",
                       description="Exit status: 0 done, 2 error, 3 done but some images were skipped.")
    p.add_argument("data", metavar="DATA", help="folder of class folders (or train/val/test), or of images")
    _extractor_options(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="decode threads (default 2)")
    p.add_argument("--mixed-precision", action="store_true", help="float16 compute on a GPU")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("cache", help="list, describe or verify cache files")
    p.add_argument("action", choices=["ls", "info", "verify"])
    p.add_argument("target", nargs="?", help="cache folder for ls, cache FILE for info/verify")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("demo", help="the main job on data that ships with scikit-learn")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--weights", default="imagenet")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FeatxError as exc:
        print(f"featx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
