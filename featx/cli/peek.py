"""``featx peek``: the ImageNet top-K classes of a few images, a quick check that a backbone sees them."""

from __future__ import annotations

from featx.cli.checks import check_extractor, check_file
from featx.cli.options import backbone_option, cache_option, engine_option, positive_int, weights_option, \
    weights_value
from featx.cli.parser import add_command


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "peek", "ImageNet top-K classes for some images (a quick sanity check)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    backbone_option(p)
    weights_option(p)
    p.add_argument("--top", type=positive_int, default=5, metavar="K", help="classes shown per image")
    engine_option(p, default="auto", extra="; auto uses LiteRT only when its conversion is already in the cache "
                                           "(for a few images a conversion costs more than it saves)")
    cache_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.peek import peek

    for image in args.images:
        check_file(image, "IMAGE")
    check_extractor(args)
    results = peek(args.images, backbone=args.backbone, top=args.top, weights=weights_value(args.weights),
                   engine=args.engine, cache_dir=args.cache)
    for path, top in zip(args.images, results):
        print(path)
        for rank, (index, name, prob) in enumerate(top, 1):
            print(f"  {rank}. {name:<30} {prob:6.1%}  (class {index})")
    return 0
