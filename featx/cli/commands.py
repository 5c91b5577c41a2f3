"""The ``featx`` command: its subcommands in ``--help`` order, the parser built from them, and :func:`main`.

Why here: adding a command is writing its module (``add_parser(subparsers)`` declaring its options, ``run(args)``
returning the exit status) and listing it in :data:`COMMANDS`; :func:`main` is the one place that turns
errors into one-line messages and exit statuses, so no command prints its own.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

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
from featx.names import shown

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
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (anywhere on the line; or FEATX_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


#: Set to show the traceback of an unexpected error (as ``--debug`` does).
DEBUG_ENV = "FEATX_DEBUG"


def _take_debug(argv: list) -> tuple[list, bool]:
    """``argv`` without ``--debug`` (accepted anywhere before ``--``), and whether a traceback is wanted."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    argv = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return argv, debug or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _text_streams() -> None:
    """stdout/stderr never fail on a file name that is not UTF-8 (a lone surrogate): escaped, not raised."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot change any more
                pass


def main(argv=None) -> int:
    """Run ``featx`` with ``argv`` (default ``sys.argv[1:]``).

    ``--debug`` anywhere on the line (or ``FEATX_DEBUG=1``) shows the traceback of an unexpected error.

    Returns
    -------
    int
        The exit status: 0 done, 2 bad input (one line on stderr: ``featx: error: <option or file>: ...``),
        3 done but some images were skipped, 1 ``cache verify`` found a problem or an unexpected error (one
        line naming the command and the error, with the hint to rerun with ``--debug``), 130 interrupted.
        Argument errors exit 2 from argparse (``SystemExit``) with the subcommand's usage.
    """
    argv, debug = _take_debug(list(sys.argv[1:] if argv is None else argv))
    _text_streams()
    args = build_parser().parse_args(argv)
    log_to_stderr(getattr(args, "verbose", False))
    try:
        return args.func(args)
    except FeatxError as exc:
        print(f"featx: error: {shown(featx_error_line(exc, args))}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, read-only filesystem ... on cache, journal, engines, outputs
        print(f"featx: error: {shown(os_error_line(exc, destination(args)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug or a library's surprise: one line, never a traceback
        if debug:
            traceback.print_exc()
        print(f"featx: error: {unexpected_line(exc, args)}"
              + ("" if debug else "; rerun with --debug (or FEATX_DEBUG=1) for the traceback"), file=sys.stderr)
        return 1


def unexpected_line(exc: BaseException, args) -> str:
    """``<command>: <where it failed>: <error type>: <message>`` for an error featx did not expect."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}featx{os.sep}" in f.filename]
    where = f" in {Path(ours[-1].filename).stem}.{ours[-1].name}" if ours else ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return shown(f"{args.command}: unexpected {type(exc).__name__}{where}" + (f": {message}" if message else ""))
