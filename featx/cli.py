"""The ``featx`` command: parses arguments and calls the Python API, nothing more.

One vocabulary (the table in the README): the same option name, meaning and choices for the same thing in
every command, matching the Python API's keyword (``--taps`` <-> ``taps=``).  Old spellings are hidden
aliases for one release: they still work, print a one-line warning, and are left out of ``--help``.

Errors in the arguments come from the subcommand that was used, with its usage and a "did you mean" for a
misspelt option or choice; everything a command can check cheaply (values, choices, paths) is checked
before its first expensive or writing step.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import re
import sys
from pathlib import Path

from featx.errors import FeatxError

# ---- parser infrastructure ------------------------------------------------------------------------

#: Python keyword -> CLI option, where they differ (for FeatxError(param=...) raised by the API).
PARAM_OPTIONS = {"cache_dir": "--cache", "out_dir": "--out", "trust": "--trust-bundle", "learning_rate": "--lr",
                 "with_sweep": "--sweep", "max_bytes": "--max-upload-mb", "tap": "--taps"}


def option_for(param: str) -> str:
    """The CLI option that sets the Python keyword ``param`` (``cache_dir`` -> ``--cache``)."""
    return PARAM_OPTIONS.get(param, "--" + param.replace("_", "-"))


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help states its default: the help text's own words when it says ``default``,
    else ``(default: VALUE)`` appended (``off`` for a flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if text == argparse.SUPPRESS or not action.option_strings or "default" in text.lower():
            return text
        if action.default is argparse.SUPPRESS:  # --help, --version, hidden aliases
            return text
        if action.nargs == 0 and action.default in (False, None):
            return f"{text} (default: off)"
        if isinstance(action, argparse.BooleanOptionalAction) and action.default in (True, False):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.default is None:
            return text  # the help must say what happens; the --help test catches a missing default
        value = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return f"{text} (default: {value})"


class _Alias(argparse.Action):
    """A hidden old spelling: sets the new option's value and warns that the name is going."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"featx: warning: {option_string} is now {self.new}; the old name goes in the next release",
              file=sys.stderr)
        setattr(namespace, self.dest, self.const if values is None else values)


def add_alias(parser, old: str, new: str, dest: str, **kwargs) -> None:
    """Accept ``old`` as a hidden spelling of ``new`` (same ``dest``); left out of ``--help``."""
    parser.add_argument(old, dest=dest, action=_Alias, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                        **kwargs)


class FeatxParser(argparse.ArgumentParser):
    """argparse with the subcommand's own usage in errors and a "did you mean" for misspellings."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # an abbreviation that works today breaks when an option is added
        super().__init__(*args, **kwargs)
        self.commands: dict = {}

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", FeatxParser)
        action = super().add_subparsers(**kwargs)
        self.commands = action.choices
        return action

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            used = self.commands.get(getattr(namespace, "command", None), self)
            used.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace

    def _option_names(self) -> dict:
        """Every option string -> the name to suggest (an alias suggests its new name)."""
        names = {}
        for action in self._actions:
            for s in action.option_strings:
                names[s] = action.new if isinstance(action, _Alias) else s
        return names

    def suggestion(self, message: str) -> str:
        """`` (did you mean --taps?)`` for a misspelt option or choice in an argparse message, else ``''``."""
        m = re.search(r"invalid choice: '?([^'\s]*)'? \(choose from (.*)\)", message)
        if m:
            choices = [c.strip().strip("'\"") for c in m.group(2).split(",")]
            close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.5)
            return f"; did you mean {close[0]!r}?" if close else ""
        m = re.search(r"unrecognized arguments: (.*)", message)
        if m:
            names = self._option_names()
            hints = []
            for word in m.group(1).split():
                if word.startswith("-"):
                    close = difflib.get_close_matches(word.split("=")[0], list(names), n=1, cutoff=0.6)
                    if close:
                        hints.append((names[close[0]], word.split("=")[0]))
            if len(hints) == 1:
                return f"; did you mean {hints[0][0]}?"
            return "; did you mean " + ", ".join(f"{new} (for {old})" for new, old in hints) + "?" if hints else ""
        return ""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}{self.suggestion(message)}\n")


# ---- value types: checked while parsing, before any work -------------------------------------------

def _number(kind, low=None, high=None, low_open=False, high_open=False, what="a number"):
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


positive_int = _number(int, 1, what="a whole number of 1 or more")
count = _number(int, 0, what="a whole number of 0 or more")
fraction = _number(float, 0.0, 1.0, high_open=True, what="a fraction in [0, 1)")
positive_float = _number(float, 0.0, low_open=True, what="a number above 0")
nonnegative_float = _number(float, 0.0, what="a number of 0 or more")
port_number = _number(int, 0, 65535, what="a port number 0..65535")


def taps_list(value: str) -> list[str]:
    """``'stage4, pre_logits'`` -> ``['stage4', 'pre_logits']``."""
    taps = [t.strip() for t in value.split(",") if t.strip()]
    if not taps:
        raise argparse.ArgumentTypeError("give at least one tap, e.g. pre_logits or stage4,pre_logits")
    return taps


def _taps(value) -> list[str]:
    """``--taps`` as a list, whether argparse has split it already or not."""
    return list(value) if isinstance(value, (list, tuple)) else taps_list(value)


def _weights(value: str):
    return None if value.lower() == "none" else value


def _class_weight(value: str):
    return None if value == "none" else value


# ---- checks on paths and names, before the first expensive or writing step ------------------------

def check_folder(path, option: str) -> Path:
    """``path`` as a Path; FeatxError naming ``option`` when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise FeatxError(f"{option}: {path}: no such folder")
    return path


def check_file(path, option: str) -> Path:
    """``path`` as a Path; FeatxError naming ``option`` when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"{option}: {path}: no such file")
    return path


def check_out_folder(path, option: str = "--out") -> None:
    """FeatxError when an output folder would have to replace an existing file."""
    if path is not None and Path(path).is_file():
        raise FeatxError(f"{option}: {path} is a file; give a folder for the outputs")


def check_out_file(path, option: str = "--out") -> None:
    """FeatxError when an output file would have to replace an existing folder."""
    if path is not None and Path(path).is_dir():
        raise FeatxError(f"{option}: {path} is a folder; give a file name, e.g. {Path(path) / 'predictions.csv'}")


def check_extractor(args, taps=None) -> None:
    """Backbone, taps and weights file: cheap to check (no TensorFlow), expensive to find out later."""
    from featx.backbones.registry import get_backbone

    spec = get_backbone(args.backbone)
    for t in taps or ():
        spec.tap(t)
    weights = getattr(args, "weights", None)
    if weights and _weights(weights) not in (None, "imagenet") and not Path(weights).is_file():
        raise FeatxError(f"--weights: {weights} is not a file; give a weights file, 'imagenet' or 'none'")


# ---- commands --------------------------------------------------------------------------------------

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

    for image in args.images:
        check_file(image, "IMAGE")
    check_extractor(args)
    results = peek(args.images, backbone=args.backbone, top=args.top, weights=_weights(args.weights),
                   engine=args.engine, cache_dir=args.cache)
    for path, top in zip(args.images, results):
        print(path)
        for rank, (index, name, prob) in enumerate(top, 1):
            print(f"  {rank}. {name:<30} {prob:6.1%}  (class {index})")
    return 0


def cmd_extract(args) -> int:
    from featx.config import ExtractorConfig
    from featx.extract import extract

    check_folder(args.data, "DATA")
    check_extractor(args, args.taps)
    if args.views and args.engine == "ray":
        raise FeatxError("--views: augmented views run on the local engine; extract them without --engine ray")
    config = ExtractorConfig(args.backbone, args.taps, args.pooling, args.dtype, _weights(args.weights),
                             args.mixed_precision)
    engine = args.engine
    if engine == "ray":
        from featx.engines.ray import RayEngine

        engine = RayEngine(address=args.address, num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker)
    report = extract(args.data, config, batch_size=args.batch_size, cache_dir=args.cache, workers=args.workers,
                     views=args.views, engine=engine, retry_failed=args.retry_failed)
    print(report.summary())
    for path, reason in report.failures:
        print(f"skipped {path}: {reason}")
    return 3 if report.failures else 0


def cmd_cache(args) -> int:
    import json
    from pathlib import Path

    from featx.cache import FeatureCache, default_cache_dir, export, list_caches

    if args.action == "ls":
        folder = args.cache or args.target or default_cache_dir()
        if args.target and not args.cache:
            print(f"featx: warning: 'featx cache ls {args.target}' is now 'featx cache ls --cache {args.target}'; "
                  "the old form goes in the next release", file=sys.stderr)
        files = list_caches(folder)
        if not files:
            print(f"no caches in {folder}")
        for path in files:
            info = FeatureCache(path).info()
            taps = ", ".join(f"{t} {v['rows']}x{v['dim']}" for t, v in info["taps"].items())
            views = (info.get("config") or {}).get("views")  # a cache of mirrored or augmented views of images
            kind = "" if not views else "  mirrored images (flip)" if views == "flip" else f"  augmented views ({views})"
            print(f"{path}  {info['size_bytes'] / 1e6:.1f} MB  {info['segments']} segment(s)  {taps}{kind}")
        return 0
    if not args.target:
        raise FeatxError(f"CACHE: featx cache {args.action} needs a cache folder; list them with 'featx cache ls'")
    cache = FeatureCache(args.target)
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
    if args.action == "export":
        keys = meta = None
        if args.data:
            from featx.extract import image_keys

            dataset, keys = image_keys(args.data)
            meta = {"path": [str(p) for p in dataset.paths]}
            if dataset.labels is not None:
                meta["label"] = [dataset.class_names[i] for i in dataset.labels]
        out = Path(args.out) if args.out else Path(f"{cache.path.name}-export")
        done = export(cache, out, args.format, taps=args.taps.split(",") if args.taps else None, keys=keys,
                      meta=meta)
        for tap, n in done["rows"].items():
            missing = f" ({done['missing'][tap]} of DATA's images have no row)" if done["missing"][tap] else ""
            print(f"{tap}: {n} rows{missing}")
        print(f"wrote {len(done['files'])} file(s) under {out}")
        return 0
    problems = cache.verify()
    for p in problems:
        print(f"{args.target}: {p}")
    if not problems:
        print(f"{args.target}: ok")
    return 1 if problems else 0


def _check_fractions(args) -> None:
    if args.val_fraction + args.test_fraction >= 1:
        raise FeatxError(f"--val-fraction, --test-fraction: {args.val_fraction} + {args.test_fraction} leaves "
                         "nothing to train on; keep their sum below 1")


def _backbone_names(args) -> list[str]:
    """``--backbones`` (or a comma list in ``--backbone``) as a list of names."""
    return [b.strip() for b in (getattr(args, "backbones", None) or args.backbone).split(",") if b.strip()]


def cmd_fit_head(args) -> int:
    from featx.fit import fit_head

    check_folder(args.data, "DATA")
    for name in _backbone_names(args):
        check_extractor(argparse.Namespace(**{**vars(args), "backbone": name}), args.taps)
    _check_fractions(args)
    check_out_folder(args.out)
    result = fit_head(
        args.data, backbone=args.backbones or args.backbone, taps=args.taps, head=args.head,
        pooling=args.pooling, dtype=args.dtype, weights=_weights(args.weights), cache_dir=args.cache,
        out_dir=args.out, class_weight=_class_weight(args.class_weight), l2=args.l2, standardize=args.standardize,
        pca=args.pca, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
        views=args.views, refit=args.refit, fuse=args.fuse, tta=args.tta, budget=args.budget, recipe=args.recipe,
        engine=args.engine, batch_size=args.batch_size, workers=args.workers,
    )
    print(result.report)
    print(f"bundle: {result.bundle}")
    print(f"metrics, confusion matrix: {result.out_dir}")
    return 0


def cmd_predict(args) -> int:
    from featx.fit import PROBABILITY_FORMAT, predict
    from featx.stats import format_accuracy, small_test_warning

    check_file(args.bundle, "BUNDLE")
    for image in args.images:
        if not Path(image).exists():
            raise FeatxError(f"IMAGES_OR_DIR: {image}: no such file or folder")
    check_out_file(args.out)
    if args.weights is not None and _weights(args.weights) not in (None, "imagenet") \
            and not Path(args.weights).is_file():
        raise FeatxError(f"--weights: {args.weights} is not a file; give a weights file, 'imagenet' or 'none'")
    table = predict(args.bundle, args.images, top=args.top, out=args.out, cache_dir=args.cache,
                    trust=args.trust_bundle, weights=None if args.weights is None else _weights(args.weights),
                    tta=args.tta, engine=args.engine, batch_size=args.batch_size, workers=args.workers)
    if args.out:
        print(f"{len(table)} predictions written to {args.out}")
    else:
        print(table.to_csv(index=False, float_format=PROBABILITY_FORMAT), end="")
    if "true_label" in table:
        correct = int((table["predicted"].astype(str) == table["true_label"].astype(str)).sum())
        print(f"accuracy against the folder names: {format_accuracy(correct, len(table))}")
        per_class = table["true_label"].value_counts()
        warning = small_test_warning(len(table), int(per_class.min()) if len(per_class) else None)
        if warning:
            print(warning)
        seen = table.attrs.get("seen_in_training", 0)
        if seen:
            print(f"warning: {seen} of these {len(table)} images were in the model's own train/val split, so this "
                  "accuracy is not a held-out estimate (the test accuracy fit-head printed is one)")
    for note in table.attrs.get("notes", []):
        print(f"featx: note: {note}", file=sys.stderr)
    for path, reason in table.attrs["failures"]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 3 if table.attrs["failures"] else 0


def cmd_sweep(args) -> int:
    from featx.fit import sweep

    check_folder(args.data, "DATA")
    check_extractor(args, args.taps)
    _check_fractions(args)
    check_out_folder(args.out)
    table = sweep(args.data, backbone=args.backbone, taps=args.taps, pooling=args.pooling, dtype=args.dtype,
                  weights=_weights(args.weights), cache_dir=args.cache, out_dir=args.out,
                  val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                  engine=args.engine, batch_size=args.batch_size, workers=args.workers)
    print(f"{table.attrs['dataset']}: logistic head on each tap of {args.backbone} (split {table.attrs['split_id']})")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"plot and table: {table.attrs['out_dir']}")
    return 0


def cmd_advise(args) -> int:
    from featx.advise import advise

    check_folder(args.data, "DATA")
    for name in _backbone_names(args):
        check_extractor(argparse.Namespace(**{**vars(args), "backbone": name}))
    check_out_folder(args.out)
    advice = advise(args.data, backbone=_backbone_names(args), cache_dir=args.cache, sample=args.sample,
                    score=args.score, large_per_class=args.large_per_class, room=args.room, seed=args.seed,
                    val_fraction=args.val_fraction, test_fraction=args.test_fraction, out=args.out)
    print(advice)
    if args.out:
        print(f"written: {Path(args.out) / 'advice.json'}, {Path(args.out) / 'advice.txt'}")
    return 0


def plural(n: int, word: str) -> str:
    """``plural(1, 'epoch')`` -> ``'1 epoch'``; ``plural(3, 'epoch')`` -> ``'3 epochs'``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cmd_finetune(args) -> int:
    from featx.finetune import finetune

    check_folder(args.data, "DATA")
    check_extractor(args, args.taps)
    if len(args.taps) != 1:
        raise FeatxError(f"--taps: finetune trains on one tap, got {','.join(args.taps)}")
    _check_fractions(args)
    check_out_folder(args.out)
    if args.init_head is not None:
        check_file(args.init_head, "--init-head")
    result = finetune(
        args.data, backbone=args.backbone, taps=args.taps, unfreeze=args.unfreeze, init_head=args.init_head,
        recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        momentum=args.momentum, warmup=args.warmup, augment=args.augment,
        class_weight=_class_weight(args.class_weight), patience=args.patience,
        weights=_weights(args.weights), cache_dir=args.cache, out_dir=args.out, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, seed=args.seed, trust=args.trust_bundle, progress=args.progress,
    )
    m = result["metrics"]
    print(f"{m['dataset']}: fine-tuned {m['backbone']} ({m['recipe']} recipe, {m['unfreeze']}), "
          f"{plural(m['epochs_run'], 'epoch')} in {m['train_seconds']:.0f}s: accuracy train "
          f"{'-' if m['accuracy']['train'] is None else format(m['accuracy']['train'], '.3f')}, "
          f"val {m['accuracy_text']['val'] if m['n']['val'] else '-'}")
    print(f"test accuracy {m['accuracy_text']['test'] if m['n']['test'] else '- (no test images)'}; "
          f"{m['total_seconds']:.0f}s in all")
    print(f"model: {result['model']}  (history.csv, curves.png, metrics.json beside it)")
    return 0


def cmd_baseline(args) -> int:
    from featx.baselines import train_baseline

    check_folder(args.data, "DATA")
    _check_fractions(args)
    check_out_folder(args.out)
    result = train_baseline(args.data, arch=args.arch, size=args.size, epochs=args.epochs,
                            batch_size=args.batch_size, class_weight=_class_weight(args.class_weight),
                            cache_dir=args.cache, out_dir=args.out, val_fraction=args.val_fraction,
                            test_fraction=args.test_fraction, seed=args.seed)
    m = result["metrics"]
    print(f"{m['dataset']}: {m['arch']} from scratch ({m['params']:,} parameters), "
          f"{plural(m['epochs_run'], 'epoch')} in {m['train_seconds']:.0f}s: accuracy train "
          f"{'-' if m['accuracy']['train'] is None else format(m['accuracy']['train'], '.3f')}, "
          f"val {m['accuracy_text']['val']}")
    print(f"{m['evaluated_on']} accuracy {m['accuracy_text'][m['evaluated_on']]}")
    print(f"outputs: {result['out_dir']}")
    return 0


def cmd_report(args) -> int:
    from featx.cache import default_cache_dir
    from featx.report import write_report
    from featx.runs import runs_log_path

    runs = Path(args.runs) if args.runs else runs_log_path(args.cache or default_cache_dir())
    if not runs.exists():
        raise FeatxError(f"--runs: {runs} does not exist; fit-head, finetune and baseline write it")
    check_out_folder(args.out)
    try:
        result = write_report(runs, args.out, html=args.html)
    except (ValueError, KeyError) as exc:
        raise FeatxError(f"--runs: {runs} cannot be summarised ({exc})") from None
    print(result["markdown"].read_text(), end="")
    written = [result["markdown"], result["csv"], result["chart"]] + ([result["html"]] if result.get("html") else [])
    print("written: " + ", ".join(map(str, written))
          + (f", {plural(len(result['curves']), 'learning-curve plot')}" if result["curves"] else ""))
    return 0


def cmd_serve(args) -> int:
    from featx.serve import serve

    check_file(args.bundle, "BUNDLE")
    serve(args.bundle, host=args.host, port=args.port, top=args.top, max_bytes=int(args.max_upload_mb * 1024 * 1024),
          trust=args.trust_bundle, engine=args.engine, cache_dir=args.cache, max_pixels=args.max_pixels,
          budget=int(args.max_decode_mb * 1024 * 1024), decode_slots=args.decode_slots, cors=args.cors,
          header_timeout=args.header_timeout, body_timeout=args.body_timeout)
    return 0


def cmd_demo(args) -> int:
    from featx.demo import run_demo

    check_extractor(args)
    check_out_folder(args.out)
    run_demo(out_dir=args.out, backbone=args.backbone, cache_dir=args.cache, per_class=args.per_class,
             weights=_weights(args.weights))
    return 0


# ---- the parser ----------------------------------------------------------------------------------------

CACHE_HELP = "the cache folder; converted LiteRT engines live in DIR/engines (default: $FEATX_CACHE or ./cache)"
ENGINES = ("auto", "keras", "litert")


def _backbone_option(p) -> None:
    from featx.backbones.registry import DEFAULT_BACKBONE

    p.add_argument("--backbone", default=DEFAULT_BACKBONE, metavar="NAME",
                   help="the pretrained network; see 'featx backbones'")


def _weights_option(p, default="imagenet") -> None:
    p.add_argument("--weights", default=default, metavar="imagenet|none|FILE",
                   help="the backbone's weights: 'imagenet', a weights file, or 'none' (random, seeded)")


def _cache_option(p) -> None:
    p.add_argument("--cache", default=None, metavar="DIR", help=CACHE_HELP)


def _taps_option(p, default="pre_logits", help_default=None) -> None:
    p.add_argument("--taps", type=taps_list, default=[default] if default else None, metavar="A[,B]",
                   help="comma-separated taps (layers) to read codes from; several are concatenated; see "
                        "'featx backbones'" + (f" (default: {help_default})" if help_default else ""))
    add_alias(p, "--tap", "--taps", dest="taps", type=taps_list)


def head_names() -> tuple:
    """``featx.heads.HEADS`` read from the module's source, not imported: importing it loads
    scikit-learn, SciPy and pandas (about 150 MB and a second), which every command would pay
    for one help string, and the LiteRT path needs none of them."""
    import ast
    import importlib.util

    source = importlib.util.find_spec("featx.heads").origin
    with open(source, encoding="utf-8") as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HEADS" for t in node.targets):
                return tuple(ast.literal_eval(node.value))
    from featx.heads import HEADS  # not a literal any more: import it after all

    return tuple(HEADS)


def _engine_option(p, engines=ENGINES, default=None, extra="") -> None:
    p.add_argument("--engine", default=default, choices=list(engines),
                   help="inference engine: auto (LiteRT on a CPU when installed and checked), keras, litert"
                        + (", or ray (Ray Data actors)" if "ray" in engines else "") + extra
                        + (" (default: $FEATX_ENGINE or auto)" if default is None else ""))


def _batch_options(p) -> None:
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="images per network batch")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="decode threads (default: the cores left beside the engine, at least 1)")


def _extractor_options(p, taps_default="pre_logits", engines=ENGINES) -> None:
    _backbone_option(p)
    _taps_option(p, taps_default, None if taps_default else "every tap of the backbone")
    p.add_argument("--pooling", default="avg", choices=["avg", "max", "avgmax", "none"],
                   help="how a tap's feature map becomes one vector (none: keep the whole map)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="storage type of the codes")
    _weights_option(p)
    _cache_option(p)
    _engine_option(p, engines)
    _batch_options(p)


def _split_options(p) -> None:
    p.add_argument("--val-fraction", type=fraction, default=0.2, metavar="F", help="validation share of the images")
    p.add_argument("--test-fraction", type=fraction, default=0.2, metavar="F",
                   help="held-out test share when DATA has no test/ folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (stored by content) and of training")


def _class_weight_option(p, default: str) -> None:
    p.add_argument("--class-weight", choices=["balanced", "none"], default=default,
                   help="balanced: weight each class by the inverse of its share of the training images")


def _out_option(p, default_help: str, metavar="DIR") -> None:
    p.add_argument("--out", default=None, metavar=metavar, help=f"where the outputs go (default: {default_help})")


def _trust_option(p) -> None:
    p.add_argument("--trust-bundle", action="store_true",
                   help="load a bundle not signed on this machine (it is a pickle: only if you trust it)")


def _verbose_option(p) -> None:
    p.add_argument("--verbose", "-v", action="store_true",
                   help="name every file the folder scan leaves out (default: only count them)")


EXIT_STATUS = "Exit status: 0 done, 2 error, 3 done but some images were skipped."


def build_parser() -> FeatxParser:
    """The ``featx`` parser; ``parser.commands`` maps each subcommand's name to its own parser."""
    from featx import __version__

    parser = FeatxParser(
        prog="featx",
        description="Transfer learning the CS231n way: run a pretrained CNN once over your images, cache its "
                    "codes, train classical heads on them in seconds. Typical use: featx extract DATA, then "
                    "featx fit-head DATA, then featx predict BUNDLE IMAGES.",
    )
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help, **kwargs):
        return sub.add_parser(name, help=help, description=kwargs.pop("description", help[:1].upper() + help[1:]
                                                                        + "."), **kwargs)

    p = command("backbones", "list the backbones, their taps and weight sources")
    p.set_defaults(func=cmd_backbones)

    p = command("peek", "ImageNet top-K classes for some images (a quick sanity check)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    _backbone_option(p)
    _weights_option(p)
    p.add_argument("--top", type=positive_int, default=5, metavar="K", help="classes shown per image")
    _engine_option(p, default="auto", extra="; auto uses LiteRT only when its conversion is already in the cache "
                                            "(for a few images a conversion costs more than it saves)")
    _cache_option(p)
    p.set_defaults(func=cmd_peek)

    p = command("extract", "run a backbone once over DATA and cache its codes",
                description="Run a backbone once over DATA and cache its codes. " + EXIT_STATUS)
    p.add_argument("data", metavar="DATA", help="folder of class folders (or train/val/test), or of images")
    _extractor_options(p, engines=ENGINES + ("ray",))
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
    _verbose_option(p)
    p.set_defaults(func=cmd_extract)

    p = command("cache", "list, describe, verify, compact or export caches",
                description="featx cache ls [--cache DIR] | featx cache info|verify|compact CACHE | "
                            "featx cache export CACHE [--format npy|parquet] [--data DATA] [--out DIR] "
                            "(verify: exit status 1 when a problem is found).")
    p.add_argument("action", choices=["ls", "info", "verify", "compact", "export"], help="what to do")
    p.add_argument("target", nargs="?", metavar="CACHE",
                   help="one cache folder, for info, verify, compact and export; a legacy .h5 cache file is "
                        "accepted (default: none)")
    _cache_option(p)
    p.add_argument("--format", choices=["npy", "parquet"], default="npy",
                   help="export: .npy files plus metadata (embedding-reader's layout) or one Parquet table per tap "
                        "(default: npy)")
    p.add_argument("--data", default=None, metavar="DATA",
                   help="export: only DATA's images, in its order, with path and label columns (default: every row)")
    p.add_argument("--taps", default=None, metavar="A[,B]", help="export: the taps to write (default: all)")
    _out_option(p, "./<cache name>-export")
    p.set_defaults(func=cmd_cache)

    p = command("fit-head", "train a classifier head on the cached codes of DATA")
    p.add_argument("data", metavar="DATA", help="folder of class folders (or train/val/test)")
    _extractor_options(p)
    p.add_argument("--head", default="logistic", metavar="NAME",
                   help="the classifier: " + ", ".join(head_names()) + ", or auto (cross-validated choice of head, "
                        "regularisation, scaling, taps and flip TTA within --budget)")
    p.add_argument("--backbones", default=None, metavar="A[,B]",
                   help="several backbones, fused as --fuse says (a comma list in --backbone works too) "
                        "(default: --backbone alone)")
    p.add_argument("--fuse", default="concat", choices=["concat", "mean"],
                   help="with several backbones: one head on the concatenated codes, or one head per backbone "
                        "with their probabilities averaged")
    p.add_argument("--tta", default="none", choices=["none", "flip", "views"],
                   help="flip: train on each image and its mirror and average both (one more cached view); "
                        "views: train on and average the cached augmented views (extract --views K)")
    p.add_argument("--budget", type=nonnegative_float, default=None, metavar="SECONDS",
                   help="time for --head auto's search (default: 45; 0 scores the first candidate only)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                   help="train the final model on train+val once validation has chosen C or epochs; "
                        "--no-refit keeps the model trained on train alone")
    p.add_argument("--recipe", default="default", choices=["default", "study"],
                   help="the dense head's settings: featx's measured ones, or the study's exactly (raw "
                        "codes, RMSprop 1e-3, 20 epochs)")
    _class_weight_option(p, "none")
    p.add_argument("--l2", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise each row of codes (default: the head's own choice)")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardise each column of codes (default: the head's own choice)")
    p.add_argument("--pca", type=positive_int, default=None, metavar="K",
                   help="reduce the codes to K dimensions first (default: no reduction)")
    _out_option(p, "featx-out/<dataset>-<backbone>-<taps>-<head>")
    p.add_argument("--views", type=count, default=0, metavar="K", help="train on K cached augmented views too")
    _split_options(p)
    _verbose_option(p)
    p.set_defaults(func=cmd_fit_head)

    p = command("predict", "classify images with a bundle; CSV of predictions",
                description="Classify images with a bundle and print (or write) a CSV of predictions. A folder "
                            "of class folders adds a true_label column and the accuracy with its 95% interval. "
                            + EXIT_STATUS)
    p.add_argument("bundle", metavar="BUNDLE", help="model.featx from fit-head, or model.keras from finetune or baseline")
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_DIR", help="image files or folders")
    _out_option(p, "print the CSV", metavar="FILE")
    p.add_argument("--top", type=positive_int, default=None, metavar="K",
                   help="add the 2nd..Kth classes and their probabilities (default: the predicted class only)")
    _cache_option(p)
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="the backbone's weights file, when not where the bundle says (default: the bundle's)")
    p.add_argument("--tta", nargs="?", const="views", default="none", choices=["none", "flip", "views"],
                   help="test-time augmentation: flip averages over each image and its mirror (one cached view); "
                        "views over cached augmented views (a bare --tta means views)")
    _engine_option(p)
    _batch_options(p)
    _trust_option(p)
    _verbose_option(p)
    p.set_defaults(func=cmd_predict)

    p = command("sweep", "a linear head on every tap: are earlier layers better for DATA?")
    p.add_argument("data", metavar="DATA", help="folder of class folders (or train/val/test)")
    _extractor_options(p, taps_default=None)
    _out_option(p, "featx-out/<dataset>-<backbone>-sweep")
    _split_options(p)
    _verbose_option(p)
    p.set_defaults(func=cmd_sweep)

    p = command("advise", "which route fits DATA, from measured transferability of every tap")
    p.add_argument("data", metavar="DATA", help="folder of class folders (or train/val/test)")
    _backbone_option(p)
    p.add_argument("--backbones", default=None, metavar="A[,B]",
                   help="rank the taps of several backbones together (default: --backbone alone)")
    _cache_option(p)
    p.add_argument("--score", default="logme", choices=["logme", "probe"],
                   help="rank every tap by LogME (seconds) or by a 3-fold cross-validated logistic probe")
    p.add_argument("--room", type=nonnegative_float, default=0.05,
                   help="recommend fine-tuning only when the best cached probe accuracy is below 1 - ROOM")
    p.add_argument("--sample", type=positive_int, default=300, metavar="N",
                   help="images the ImageNet classifier scores, shown as context")
    p.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)  # old flag: every tap is measured now
    p.add_argument("--large-per-class", type=positive_int, default=500, metavar="N",
                   help="a dataset with at least N images per class (median) counts as large")
    _out_option(p, "print only; DIR gets advice.json and advice.txt")
    _split_options(p)
    _verbose_option(p)
    p.set_defaults(func=cmd_advise)

    p = command("finetune", "fine-tune the backbone end to end, starting from a cached-route head")
    p.add_argument("data", metavar="DATA", help="folder of class folders (or train/val/test)")
    _backbone_option(p)
    _taps_option(p)
    p.add_argument("--unfreeze", default=None, metavar="POLICY",
                   help="all, from:<tap|layer|index>, top:<N stages> (default: all for VGG, from:94 for "
                        "Inception/Xception, top:2 otherwise)")
    p.add_argument("--init-head", default=None, metavar="BUNDLE",
                   help="a dense-head bundle from fit-head (default: train one on the cache first)")
    p.add_argument("--recipe", default="default", choices=["default", "study"],
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
    p.add_argument("--augment", default=None, choices=["light", "study", "none"],
                   help="training augmentation, Keras 1.2.2 semantics (default: the recipe's, light or study)")
    p.add_argument("--patience", type=count, default=None, metavar="N",
                   help="stop after N epochs without a better validation loss (default: the recipe's, 2 or 3)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="per-step progress bar with images/s and ETA (default: when stderr is a terminal)")
    _class_weight_option(p, "balanced")
    _weights_option(p)
    _cache_option(p)
    _out_option(p, "featx-out/<dataset>-<backbone>-finetune")
    _trust_option(p)
    _split_options(p)
    _verbose_option(p)
    p.set_defaults(func=cmd_finetune)

    p = command("baseline", "the study's CNN trained from scratch (cnn1 or cnn6), same split")
    p.add_argument("data", metavar="DATA", help="folder of class folders (or train/val/test)")
    p.add_argument("--arch", default="cnn1", choices=["cnn1", "cnn6"],
                   help="cnn1: one conv layer and a 1024-unit dense layer (about 72M parameters at --size 96); "
                        "cnn6: six conv layers, far fewer parameters")
    p.add_argument("--size", type=_number(int, 16, what="a whole number of 16 or more"), default=96, metavar="PIXELS",
                   help="input side in pixels")
    p.add_argument("--epochs", type=positive_int, default=20, metavar="N", help="training epochs at most")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="images per training step")
    _class_weight_option(p, "balanced")
    _cache_option(p)
    _out_option(p, "featx-out/<dataset>-<arch>")
    _split_options(p)
    _verbose_option(p)
    p.set_defaults(func=cmd_baseline)

    p = command("report", "the study's summary table, chart and (--html) one-page write-up from the runs log")
    p.add_argument("--runs", default=None, metavar="CSV", help="the runs log (default: runs.csv in the cache folder)")
    _cache_option(p)
    p.add_argument("--out", default="featx-out/report", metavar="DIR", help="where the outputs go")
    p.add_argument("--html", action="store_true",
                   help="also write report.html: one self-contained page with the table, chart, confusion "
                        "matrices and learning curves")
    p.set_defaults(func=cmd_report)

    p = command("serve", "a web page and JSON API that classify uploaded images with a bundle")
    p.add_argument("bundle", metavar="BUNDLE", help="model.featx from fit-head, or model.keras from finetune or baseline")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="TCP port")
    p.add_argument("--top", type=positive_int, default=5, metavar="K", help="classes returned per image")
    p.add_argument("--max-upload-mb", type=positive_float, default=10.0, metavar="MB",
                   help="largest accepted upload")
    _engine_option(p, default="auto", extra="; auto gives about 2x the requests/s on a CPU (converts once)")
    _cache_option(p)
    _trust_option(p)
    from featx import serve as _serve_defaults  # light: imports no web framework

    p.add_argument("--max-pixels", type=positive_int, default=_serve_defaults.SERVE_MAX_PIXELS, metavar="N",
                   help="refuse uploads declaring more pixels than this")
    p.add_argument("--max-decode-mb", type=positive_float, default=_serve_defaults.SERVE_DECODE_BUDGET // 2**20,
                   metavar="MB", help="memory one image's decode may need; PNG/TIFF/WebP above it are refused, "
                                      "JPEGs decode at reduced size")
    p.add_argument("--decode-slots", type=positive_int, default=_serve_defaults.DECODE_SLOTS, metavar="K",
                   help="images decoded at once over all requests (peak decode memory: K x --max-decode-mb)")
    p.add_argument("--cors", metavar="ORIGIN", default=None,
                   help="also accept POST /predict from pages of ORIGIN, e.g. https://example.org "
                        "(default: same origin only)")
    p.add_argument("--header-timeout", type=positive_float, default=_serve_defaults.HEADER_TIMEOUT,
                   metavar="SECONDS", help="time a client has to send its request headers")
    p.add_argument("--body-timeout", type=positive_float, default=_serve_defaults.BODY_TIMEOUT, metavar="SECONDS",
                   help="time a client has to send its upload")
    p.set_defaults(func=cmd_serve)

    p = command("demo", "the main job end to end on scikit-learn's digits (offline)")
    _backbone_option(p)
    _weights_option(p)
    _cache_option(p)
    p.add_argument("--out", default="featx-out/demo", metavar="DIR", help="where the outputs go")
    p.add_argument("--per-class", type=positive_int, default=40, metavar="N", help="digit images per class")
    p.set_defaults(func=cmd_demo)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (it may be replaced later)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _log_to_stderr(verbose: bool) -> None:
    """featx's notes (what a folder scan left out) go to stderr; each file by name with --verbose."""
    log = logging.getLogger("featx")
    for handler in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("featx: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


_OS_HINTS = {
    "ENOSPC": "no space left on device; free some space or point --cache/--out at another disk "
              "(finished work is kept: run the command again)",
    "EDQUOT": "disk quota exceeded; free some space or point --cache/--out at another disk",
    "EACCES": "permission denied; choose a folder you can write with --cache/--out",
    "EPERM": "operation not permitted; choose a folder you can write with --cache/--out",
    "EROFS": "read-only file system; choose a writable folder with --cache/--out",
    "EMFILE": "too many open files; raise the limit (ulimit -n) or use fewer --workers",
}


def _destination(args):
    """Where the command writes, to name it when an OSError carries no file name (a write to an open file)."""
    out, cache = getattr(args, "out", None), getattr(args, "cache", None)
    if getattr(args, "func", None) is cmd_extract or (cache is not None and out is None):
        if cache is None:
            from featx.cache import default_cache_dir

            return default_cache_dir()
        return cache
    return out


def os_error_line(exc: OSError, where=None) -> str:
    """``<path>: <what went wrong and what to do>`` for an OSError (also h5py's, which carry no errno).

    Parameters
    ----------
    exc : OSError
        any operating-system error; ``exc.filename`` names the path when the OS gave one.
    where : path, optional
        named instead when the error carries no file name (the command's ``--cache`` or ``--out``).

    Returns
    -------
    str
        one line, without the ``featx: error:`` prefix.
    """
    import errno
    import re

    code = exc.errno
    text = str(exc)
    if code is None:  # h5py: "Can't write data (file write failed: ..., errno = 28, error message = ...)"
        found = re.search(r"errno = (\d+)", text)
        code = int(found.group(1)) if found else None
    name = errno.errorcode.get(code, "") if code is not None else ""
    what = _OS_HINTS.get(name) or (exc.strerror or text.splitlines()[0] if text else type(exc).__name__).lower()
    path = exc.filename or exc.filename2
    if path is None:
        found = re.search(r"name = '([^']+)'", text)  # h5py names the file this way
        path = found.group(1) if found else where
    return f"{path}: {what}" if path else what


def main(argv=None) -> int:
    """Run ``featx`` with ``argv`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 done, 2 bad input (one line on stderr: ``featx: error: <option or file>: ...``),
        3 done but some images were skipped, 1 ``cache verify`` found a problem, 130 interrupted.
        Argument errors exit 2 from argparse (``SystemExit``) with the subcommand's usage.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _log_to_stderr(getattr(args, "verbose", False))
    try:
        return args.func(args)
    except FeatxError as exc:
        param = getattr(exc, "param", None)
        option = option_for(param) if param else None
        if param == "backbone" and getattr(args, "backbones", None):  # the user typed the plural spelling
            option = "--backbones"
        text = f"{option}: {exc.message}" if param else str(exc)
        print(f"featx: error: {text}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, read-only filesystem ... on cache, journal, engines, outputs
        print(f"featx: error: {os_error_line(exc, _destination(args))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
