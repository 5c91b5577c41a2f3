"""``featx cache``: list, describe, verify, compact or export the feature caches.

Named ``cache_cmd`` so that it is not mistaken for :mod:`featx.cache`, the cache itself, which it calls.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from featx.names import shown
from featx.cli.options import cache_option, default_cache_folder, out_option
from featx.cli.parser import add_command
from featx.errors import FeatxError
from featx.vocabulary import CACHE_ACTIONS, EXPORT_FORMATS


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "cache", "list, describe, verify, compact, export or repair caches",
                    description="featx cache ls [--cache DIR] | featx cache info|verify|compact|repair CACHE | "
                                "featx cache export CACHE [--format npy|parquet] [--data DATA] [--out DIR] "
                                "(verify: exit status 1 when a problem is found; repair: rebuild a lost or "
                                "damaged MANIFEST.json from the segments' own headers).")
    p.add_argument("action", choices=CACHE_ACTIONS, help="what to do")
    p.add_argument("target", nargs="?", metavar="CACHE",
                   help="one cache folder, for info, verify, compact, export and repair; a legacy .h5 cache file is "
                        "accepted (default: none)")
    cache_option(p)
    p.add_argument("--format", choices=EXPORT_FORMATS, default="npy",
                   help="export: .npy files plus metadata (embedding-reader's layout) or one Parquet table per tap "
                        "(default: npy)")
    p.add_argument("--data", default=None, metavar="DATA",
                   help="export: only DATA's images, in its order, with path and label columns (default: every row)")
    p.add_argument("--taps", default=None, metavar="A[,B]", help="export: the taps to write (default: all)")
    out_option(p, "./<cache name>-export")
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.cache import FeatureCache, export, list_caches

    if args.action == "ls":
        folder = _ls_folder(args)
        files = list_caches(folder)
        if not files:
            print(f"no caches in {folder}")
        for path in files:
            try:
                print(_cache_line(path, FeatureCache(path).info()))
            except FeatxError as exc:  # one damaged cache does not hide the others
                print(f"{path}  damaged: {exc}")
        return 0
    cache = FeatureCache(_target(args))
    if not cache.exists():
        raise FeatxError(f"{args.target}: no cache here; list them with 'featx cache ls --cache DIR' "
                         f"(DIR: the cache folder, default $FEATX_CACHE or ./cache)")
    if args.action == "info":
        print(json.dumps(cache.info(), indent=2, default=str))
        return 0
    if args.action == "compact":
        done = cache.compact()
        print(f"{cache.path}: {done['before']} segment(s) -> {done['after']}; rows "
              + ", ".join(f"{t} {n}" for t, n in done["rows"].items()))
        return 0
    if args.action == "repair":
        return _print_repaired(cache.path, cache.repair())
    if args.action == "export":
        out = Path(args.out) if args.out else Path(f"{cache.path.name}-export")
        keys, meta = _data_rows(args.data)
        done = export(cache, out, args.format, taps=args.taps.split(",") if args.taps else None, keys=keys,
                      meta=meta)
        _print_exported(done, out)
        return 0
    return _print_problems(args.target, cache.verify())


def _ls_folder(args):
    """The folder ``ls`` lists: --cache, else the old positional CACHE (warned), else the default."""
    if args.target and not args.cache:
        print(f"featx: warning: 'featx cache ls {args.target}' is now 'featx cache ls --cache {args.target}'; "
              "the old form goes in the next release", file=sys.stderr)
    return args.cache or args.target or default_cache_folder()


def _cache_line(path, info: dict) -> str:
    """One cache in ``ls``: size, segments, rows x dim per tap, and what views of the images it holds."""
    taps = ", ".join(f"{t} {v['rows']}x{v['dim']}" for t, v in info["taps"].items())
    views = (info.get("config") or {}).get("views")  # a cache of mirrored or augmented views of images
    kind = "" if not views else "  mirrored images (flip)" if views == "flip" else f"  augmented views ({views})"
    return f"{path}  {info['size_bytes'] / 1e6:.1f} MB  {info['segments']} segment(s)  {taps}{kind}"


def _target(args):
    """CACHE, which every action but ``ls`` needs."""
    if not args.target:
        raise FeatxError(f"CACHE: featx cache {args.action} needs a cache folder; list them with 'featx cache ls'")
    return args.target


def _data_rows(data):
    """``export --data``: DATA's image keys, in its order, and their path and label columns; (None, None)
    without --data (every row)."""
    if not data:
        return None, None
    from featx.extract import image_keys  # only with --data: scanning a dataset is extract's job

    dataset, keys = image_keys(data)
    meta = {"path": [shown(p) for p in dataset.paths]}  # any name as text (featx.names): the Parquet/CSV columns
    if dataset.labels is not None:
        meta["label"] = [shown(dataset.class_names[i]) for i in dataset.labels]
    return keys, meta


def _print_exported(done: dict, out: Path) -> None:
    for tap, n in done["rows"].items():
        missing = f" ({done['missing'][tap]} of DATA's images have no row)" if done["missing"][tap] else ""
        print(f"{tap}: {n} rows{missing}")
    print(f"wrote {len(done['files'])} file(s) under {out}")


def _print_repaired(path, done) -> int:
    """``repair``'s report: what the rebuilt manifest names, and each segment left out with why."""
    if not done.needed:
        print(f"{path}: the manifest is sound; nothing to repair (featx cache verify {path} checks every row)")
        return 0
    for name, why in done.left_out.items():
        print(f"{path}: left out {name}: {why} (the file stays on disk)")
    moved = f"; the damaged one is kept as {done.moved}" if done.moved else ""
    print(f"{path}: rebuilt MANIFEST.json from {len(done.kept)} segment(s); rows "
          + ", ".join(f"{t} {n}" for t, n in done.rows.items()) + moved)
    return 0


def _print_problems(target, problems: list) -> int:
    """``verify``'s report: each problem found, or ``ok``; exit status 1 when there is a problem."""
    for p in problems:
        print(f"{target}: {p}")
    if not problems:
        print(f"{target}: ok")
    return 1 if problems else 0
