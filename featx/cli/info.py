"""``featx info``: versions, the Keras backend, devices, engines and where the cache lives (for bug reports)."""

from __future__ import annotations

import json

from featx.cli.options import cache_option
from featx.cli.parser import add_command


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "info", "versions, Keras backend, devices, engines and file locations (for bug "
                    "reports)")
    cache_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--no-devices", dest="devices", action="store_false",
                   help="do not import the Keras backend to list its devices (faster)")
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.info import describe, format_info

    info = describe(args.cache, devices=args.devices)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
