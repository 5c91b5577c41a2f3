"""``featx report``: the study's summary table, chart and (``--html``) one-page write-up from the runs log."""

from __future__ import annotations

import sys
from pathlib import Path

from featx.cli.checks import check_out_folder
from featx.cli.options import cache_option, default_cache_folder
from featx.cli.output import plural
from featx.cli.parser import add_command
from featx.errors import FeatxError


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "report",
                    "the study's summary table, chart and (--html) one-page write-up from the runs log")
    p.add_argument("--runs", default=None, metavar="CSV", help="the runs log (default: runs.csv in the cache folder)")
    cache_option(p)
    p.add_argument("--out", default="featx-out/report", metavar="DIR", help="where the outputs go")
    p.add_argument("--html", action="store_true",
                   help="also write report.html: one self-contained page with the table, chart, confusion "
                        "matrices and learning curves")
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.report import write_report
    from featx.runs import runs_log_path

    runs = Path(args.runs) if args.runs else runs_log_path(args.cache or default_cache_folder())
    if not runs.exists():
        raise FeatxError(f"--runs: {runs} does not exist; fit-head, finetune and baseline write it")
    check_out_folder(args.out)
    try:
        result = write_report(runs, args.out, html=args.html)
    except (ValueError, KeyError) as exc:
        raise FeatxError(f"--runs: {runs} cannot be summarised ({exc})") from None
    print(result["markdown"].read_text(), end="")
    for line in result.get("skipped", []):
        print(f"featx: note: skipped {line}", file=sys.stderr)
    written = [result["markdown"], result["csv"], result["chart"]] + ([result["html"]] if result.get("html") else [])
    print("written: " + ", ".join(map(str, written))
          + (f", {plural(len(result['curves']), 'learning-curve plot')}" if result["curves"] else ""))
    return 0
