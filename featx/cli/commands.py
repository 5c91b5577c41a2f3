"""The ``featx`` command: its subcommands in ``--help`` order, the parser built from them, and :func:`main`.

Why here: adding a command is writing its module (``add_parser(subparsers)`` declaring its options, ``run(args)``
returning the exit status) and listing it in :data:`COMMANDS`; :func:`main` is the one place that turns
errors into one-line messages and exit statuses, so no command prints its own.
"""

from __future__ import annotations

import sys

import featx.cli.advise as advise
import featx.cli.backbones as backbones
import featx.cli.baseline as baseline
import featx.cli.cache_cmd as cache_cmd
import featx.cli.check as check
import featx.cli.demo as demo
import featx.cli.extract as extract
import featx.cli.finetune as finetune
import featx.cli.fit_head as fit_head
import featx.cli.info as info
import featx.cli.peek as peek
import featx.cli.predict as predict
import featx.cli.report as report
import featx.cli.serve as serve
import featx.cli.sweep as sweep
from featx.cli.errors import destination, featx_error_line, log_to_stderr, os_error_line
from featx.cli.parser import FeatxParser
from featx.errors import FeatxError

#: The command modules, in the order ``featx --help`` lists them.
COMMANDS = (backbones, peek, extract, cache_cmd, fit_head, check, predict, sweep, advise, finetune, baseline, report,
            serve, demo, info)

DESCRIPTION = ("Transfer learning the CS231n way: run a pretrained CNN once over your images, cache its codes, train "
               "classical heads on them in seconds. Typical use: featx extract DATA, then featx fit-head DATA, then "
               "featx predict BUNDLE IMAGES.")


def build_parser() -> FeatxParser:
    """The ``featx`` parser; ``parser.commands`` maps each subcommand's name to its own parser."""
    from featx import __version__

    parser = FeatxParser(prog="featx", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    """Run ``featx`` with ``argv`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 done, 2 bad input (one line on stderr: ``featx: error: <option or file>: ...``),
        3 done but some images were skipped, 1 ``cache verify`` found a problem, 130 interrupted.
        Argument errors exit 2 from argparse (``SystemExit``) with the subcommand's usage.
    """
    args = build_parser().parse_args(argv)
    log_to_stderr(getattr(args, "verbose", False))
    try:
        return args.func(args)
    except FeatxError as exc:
        print(f"featx: error: {featx_error_line(exc, args)}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, read-only filesystem ... on cache, journal, engines, outputs
        print(f"featx: error: {os_error_line(exc, destination(args))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130
