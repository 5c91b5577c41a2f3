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


def cmd_demo(args) -> int:
    import sklearn.datasets
    from pathlib import Path

    images = sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))
    args.images, args.top = [str(p) for p in images], 5
    return cmd_peek(args)


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
