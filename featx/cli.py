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

    results = peek(args.images, backbone=args.backbone, top=args.top, weights=_weights(args.weights),
                   engine=args.engine, cache_dir=args.cache)
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
        workers=args.workers, mixed_precision=args.mixed_precision, views=args.views, engine=args.engine,
        ray_address=args.address, num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker,
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


def _head_options(p):
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share (default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="held-out test share when DATA has no test/ folder (default 0.2)")
    p.add_argument("--seed", type=int, default=0)


def cmd_fit_head(args) -> int:
    from featx.fit import fit_head

    result = fit_head(
        args.data, backbone=args.backbone, taps=_taps(args.tap), head=args.head, pooling=args.pooling,
        dtype=args.dtype, weights=_weights(args.weights), cache_dir=args.cache, out_dir=args.out,
        class_weight=args.class_weight, l2=args.l2, standardize=args.standardize, pca=args.pca,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed, views=args.views,
        engine=args.engine,
    )
    print(result.report)
    print(f"bundle: {result.bundle}")
    print(f"metrics, confusion matrix: {result.out_dir}")
    return 0


def cmd_predict(args) -> int:
    from featx.fit import predict

    table = predict(args.bundle, args.images, top=args.top, out=args.out, cache_dir=args.cache,
                    trust=args.trust_bundle, weights=None if args.weights is None else _weights(args.weights),
                    tta=args.tta, engine=args.engine)
    if args.out:
        print(f"{len(table)} predictions written to {args.out}")
    else:
        print(table.to_csv(index=False, float_format="%.4f"), end="")
    for path, reason in table.attrs["failures"]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 3 if table.attrs["failures"] else 0


def cmd_sweep(args) -> int:
    from featx.fit import sweep

    table = sweep(args.data, backbone=args.backbone, taps=_taps(args.taps) if args.taps else None,
                  pooling=args.pooling, dtype=args.dtype, weights=_weights(args.weights), cache_dir=args.cache,
                  out_dir=args.out, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                  seed=args.seed, engine=args.engine)
    print(f"{table.attrs['dataset']}: logistic head on each tap of {args.backbone} (split {table.attrs['split_id']})")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"plot and table: {table.attrs['out_dir']}")
    return 0


def cmd_advise(args) -> int:
    from featx.advise import advise

    advice = advise(args.data, backbone=args.backbone, cache_dir=args.cache, sample=args.sample,
                    with_sweep=args.sweep, large_per_class=args.large_per_class, seed=args.seed)
    print(advice.text())
    return 0


def _accuracies(metrics: dict) -> str:
    acc = {k: "-" if v is None else f"{v:.3f}" for k, v in metrics["accuracy"].items()}
    return f"accuracy train {acc['train']}  val {acc['val']}  test {acc['test']}"


def cmd_finetune(args) -> int:
    from featx.finetune import finetune

    result = finetune(
        args.data, backbone=args.backbone, tap=args.tap, unfreeze=args.unfreeze, init_head=args.init_head,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, momentum=args.momentum,
        class_weight=None if args.class_weight == "none" else args.class_weight, patience=args.patience,
        weights=_weights(args.weights), cache_dir=args.cache, out_dir=args.out, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, seed=args.seed, trust=args.trust_bundle,
    )
    m = result["metrics"]
    print(f"{m['dataset']}: fine-tuned {m['backbone']} ({m['unfreeze']}), {m['epochs_run']} epochs in "
          f"{m['train_seconds']:.0f}s: {_accuracies(m)}")
    print(f"model: {result['model']}  (history.csv, curves.png, metrics.json beside it)")
    return 0


def cmd_baseline(args) -> int:
    from featx.baselines import train_baseline

    result = train_baseline(args.data, arch=args.arch, size=args.size, epochs=args.epochs,
                            batch_size=args.batch_size, cache_dir=args.cache, out_dir=args.out,
                            val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed)
    m = result["metrics"]
    print(f"{m['dataset']}: {m['arch']} from scratch ({m['params']:,} parameters), {m['epochs_run']} epochs in "
          f"{m['train_seconds']:.0f}s: {_accuracies(m)}")
    print(f"outputs: {result['out_dir']}")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from featx.cache import default_cache_dir
    from featx.runs import runs_log_path, write_report

    runs = Path(args.runs) if args.runs else runs_log_path(args.cache or default_cache_dir())
    if not runs.exists():
        raise FeatxError(f"--runs: {runs} does not exist; fit-head, finetune and baseline write it")
    try:
        result = write_report(runs, args.out)
    except (ValueError, KeyError) as exc:
        raise FeatxError(f"--runs: {runs} cannot be summarised ({exc})") from None
    print(result["markdown"].read_text(), end="")
    print(f"written: {result['markdown']}, {result['csv']}, {result['chart']}"
          + (f", {len(result['curves'])} learning-curve plots" if result["curves"] else ""))
    return 0


def cmd_serve(args) -> int:
    from featx.serve import serve

    serve(args.bundle, host=args.host, port=args.port, top=args.top, max_bytes=int(args.max_upload_mb * 1024 * 1024),
          trust=args.trust_bundle, engine=args.engine, cache_dir=args.cache)
    return 0


def cmd_demo(args) -> int:
    from featx.demo import run_demo

    run_demo(out_dir=args.out, backbone=args.backbone, cache_dir=args.cache, per_class=args.per_class,
             weights=_weights(args.weights))
    return 0


def _extractor_options(p, taps_flag="--taps", taps_default="pre_logits", engines=("auto", "keras", "litert")):
    from featx.backbones.registry import DEFAULT_BACKBONE

    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"see 'featx backbones' (default {DEFAULT_BACKBONE})")
    p.add_argument(taps_flag, default=taps_default,
                   help=f"comma-separated taps (default {taps_default or 'all'}); several are concatenated")
    p.add_argument("--pooling", default="avg", choices=["avg", "max", "avgmax", "none"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="storage type")
    p.add_argument("--weights", default="imagenet", help="'imagenet' (default), a weights file, or 'none'")
    p.add_argument("--cache", default=None, help="cache folder (default $FEATX_CACHE or ./cache)")
    p.add_argument("--engine", default=None, choices=list(engines),
                   help="inference engine: auto (LiteRT on a CPU when installed and checked), keras, litert"
                        + (", or ray (Ray Data actors)" if "ray" in engines else "") + " (default $FEATX_ENGINE or auto)")


def build_parser() -> argparse.ArgumentParser:
    from featx import __version__
    from featx.backbones.registry import DEFAULT_BACKBONE

    parser = argparse.ArgumentParser(
        prog="featx",
        description="Transfer learning the CS231n way: run a pretrained CNN once over your images, cache its "
                    "codes, train classical heads on them in seconds. Typical use: featx extract DATA, then "
                    "featx fit-head DATA, then featx predict BUNDLE IMAGES.",
    )
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backbones", help="list the backbones, their taps and weight sources")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("peek", help="ImageNet top-K classes for some images (a quick sanity check)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--weights", default="imagenet", help="'imagenet' (default), a weights file, or 'none'")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--engine", default="keras", choices=["auto", "keras", "litert"],
                   help="default keras: for a few images a LiteRT conversion costs more than it saves")
    p.add_argument("--cache", default=None, help="where a LiteRT conversion is stored")
    p.set_defaults(func=cmd_peek)

    p = sub.add_parser("extract", help="run a backbone once over DATA and cache its codes",
                       description="Exit status: 0 done, 2 error, 3 done but some images were skipped.")
    p.add_argument("data", metavar="DATA", help="folder of class folders (or train/val/test), or of images")
    _extractor_options(p, engines=("auto", "keras", "litert", "ray"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="decode threads (default 2)")
    p.add_argument("--mixed-precision", action="store_true", help="float16 compute on a GPU")
    p.add_argument("--views", type=int, default=0, metavar="K",
                   help="also cache K augmented views of each image (the study's augmentation, seeded)")
    p.add_argument("--address", default=None, help="with --engine ray: a Ray cluster (default: start one here)")
    p.add_argument("--num-workers", type=int, default=1, help="with --engine ray: backbone actors")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="with --engine ray: GPUs per actor")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("cache", help="list, describe or verify cache files")
    p.add_argument("action", choices=["ls", "info", "verify"])
    p.add_argument("target", nargs="?", help="cache folder for ls, cache FILE for info/verify")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("fit-head", help="train a classifier head on the cached codes of DATA")
    p.add_argument("data", metavar="DATA")
    _extractor_options(p, taps_flag="--tap")
    p.add_argument("--head", default="logistic", help="logistic (default), linear_svm, rbf_svm, knn, dense")
    p.add_argument("--class-weight", choices=["balanced"], default=None)
    p.add_argument("--l2", action=argparse.BooleanOptionalAction, default=None, help="L2-normalise rows")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--pca", type=int, default=None, metavar="K", help="reduce codes to K dimensions")
    p.add_argument("--out", default=None, help="output folder (default featx-out/<dataset>-<backbone>-<tap>-<head>)")
    p.add_argument("--views", type=int, default=0, metavar="K", help="train on K cached augmented views too")
    _head_options(p)
    p.set_defaults(func=cmd_fit_head)

    p = sub.add_parser("predict", help="classify images with a bundle; CSV of predictions",
                       description="Exit status: 0 done, 2 error, 3 done but some images were skipped.")
    p.add_argument("bundle", metavar="BUNDLE", help="model.featx from fit-head, or model.keras from finetune")
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_DIR")
    p.add_argument("--out", default=None, help="CSV file (default: print to stdout)")
    p.add_argument("--top", type=int, default=None, metavar="K", help="add the top-K classes")
    p.add_argument("--cache", default=None)
    p.add_argument("--weights", default=None, help="weights file, when the bundle's is elsewhere")
    p.add_argument("--tta", action="store_true", help="average over cached augmented views of each image")
    p.add_argument("--engine", default=None, choices=["auto", "keras", "litert"])
    p.add_argument("--trust-bundle", action="store_true",
                   help="load a bundle not signed on this machine (it is a pickle: only if you trust it)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("sweep", help="a linear head on every tap: are earlier layers better for DATA?")
    p.add_argument("data", metavar="DATA")
    _extractor_options(p, taps_default=None)
    p.add_argument("--out", default=None)
    _head_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("advise", help="which route fits DATA (CS231n's four cases)")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--cache", default=None)
    p.add_argument("--sample", type=int, default=300, help="images scored by the ImageNet classifier")
    p.add_argument("--sweep", action="store_true", help="also run a layer sweep as evidence")
    p.add_argument("--large-per-class", type=int, default=500, help="images per class that count as large")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_advise)

    p = sub.add_parser("finetune", help="fine-tune the backbone end to end, starting from a cached-route head")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--tap", default="pre_logits", help="the tap the head reads (default pre_logits)")
    p.add_argument("--unfreeze", default=None,
                   help="all, from:<tap|layer|index>, top:<N stages> (default: all for VGG, from:94 for "
                        "Inception/Xception, top:2 otherwise)")
    p.add_argument("--init-head", default=None, metavar="BUNDLE",
                   help="a dense-head bundle from fit-head (default: train one on the cache first)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4, help="SGD learning rate (default 1e-4)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs")
    p.add_argument("--class-weight", choices=["balanced", "none"], default="balanced")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--trust-bundle", action="store_true")
    _head_options(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("baseline", help="the study's CNN trained from scratch (cnn1 or cnn6), same split")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--arch", default="cnn1", choices=["cnn1", "cnn6"])
    p.add_argument("--size", type=int, default=96, help="input side in pixels (default 96)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default=None)
    _head_options(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("report", help="the study's summary table from the runs log")
    p.add_argument("--runs", default=None, help="runs CSV (default cache/runs.csv)")
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default="featx-out/report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="a web page and JSON API that classify uploaded images with a bundle")
    p.add_argument("bundle", metavar="BUNDLE", help="model.featx from fit-head, or model.keras from finetune")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--top", type=int, default=5, help="classes returned per image")
    p.add_argument("--max-upload-mb", type=float, default=10.0)
    p.add_argument("--engine", default="auto", choices=["auto", "keras", "litert"],
                   help="auto: LiteRT on a CPU when installed (about 2x the requests/s; converts once)")
    p.add_argument("--cache", default=None, help="where a LiteRT conversion is stored")
    p.add_argument("--trust-bundle", action="store_true")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="the main job end to end on scikit-learn's digits (offline)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default="featx-out/demo")
    p.add_argument("--per-class", type=int, default=40)
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
