"""Issue 24's folder-tree fuzzer, run long: random dataset trees scanned and checked against the invariants.

    python scripts/fuzz_folders.py --examples 2000 [--commands 5] [--seed 0]

Each example builds a random small tree (tests/folder_trees.py: nested class and split folders in mixed case,
loose images, empty and non-image folders, links of every kind, copies, hard links, non-UTF-8, NFC/NFD and case
collisions, hidden files, non-images named .jpg), scans it for training and for prediction and checks that every
image file under the root is used exactly once under its own class folder's name or named as left out with a
reason, and that no image is in two splits.  ``--commands N`` also runs extract, fit-head, predict and cache export
through ``featx.cli.main`` on N of the trees (slow: seconds each) and checks their exit statuses and that no
traceback is printed.  Prints the number of examples run, the seconds taken and every failure Hypothesis found
(shrunk to its smallest tree); exits 1 when one was found.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hypothesis import HealthCheck, given, settings  # noqa: E402

from folder_trees import trees  # noqa: E402
from test_fuzz_folders import check_commands, run_commands, scan_and_check  # noqa: E402


def fuzz(examples: int, commands: int, seed: int) -> int:
    quiet = logging.getLogger("featx")  # the scan's notes (left out, folders beside train/) on thousands of trees
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    counted = {"scan": 0, "commands": 0}
    failures = []

    @settings(max_examples=examples, deadline=None, database=None, derandomize=seed == 0,
              suppress_health_check=list(HealthCheck))
    @given(trees())
    def scans(steps):
        counted["scan"] += 1
        scan_and_check(steps)

    @settings(max_examples=max(1, commands), deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(trees(max_images=10))
    def runs(steps):
        counted["commands"] += 1
        cache = Path(tempfile.mkdtemp(prefix="featx-fuzz-cache-"))
        try:
            check_commands(run_commands(steps, cache))
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    for name, test in (("scan", scans), ("commands", runs)):
        if name == "commands" and not commands:
            continue
        start = time.perf_counter()
        try:
            test()
        except Exception as exc:  # noqa: BLE001 - a found failure: printed with its shrunk example
            failures.append(name)
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        print(f"{name}: {counted[name]} example(s) run (shrinking included) in {time.perf_counter() - start:.1f} s")
    print("failures: " + (", ".join(failures) if failures else "none"))
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="random trees to scan")
    parser.add_argument("--commands", type=int, default=0, help="trees to run the CLI commands on (slow)")
    parser.add_argument("--seed", type=int, default=0, help="0: Hypothesis' derandomized run; else random")
    args = parser.parse_args(argv)
    return fuzz(args.examples, args.commands, args.seed)


if __name__ == "__main__":
    sys.exit(main())
