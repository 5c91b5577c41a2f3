#!/usr/bin/env python
"""One featx command, two checkouts (before / after), whole processes, interleaved A/B repeats.

For each side: median wall seconds, median CPU seconds (user + system, all threads: what a
machine shared with other jobs inflates least) and median peak RSS, each from ``wait4`` of the
child, and the ratios before/after.  ``{cache}`` in the command becomes a fresh folder per run
holding only a copy of ``--engines-from SIDE=DIR`` (converted models), so every photo is new.

    python scripts/bench_ab.py --before /work/main --after . --repeats 3 \\
        --engines-from before=/tmp/old-cache --engines-from after=/tmp/new-cache \\
        -- extract ../shared/datasets/ants_bees/train --cache {cache}
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(checkout: Path, args: list[str]) -> tuple[float, float, float]:
    env = {k: v for k, v in os.environ.items() if k != "FEATX_ENGINE"}
    env["PYTHONPATH"] = str(checkout)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "featx.cli", *args], cwd=checkout, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        raise SystemExit(f"{checkout}: featx {' '.join(args)} exited {code}:\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="checkout of the code before (its root folder)")
    ap.add_argument("--after", required=True, help="checkout of the code after")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines-from", action="append", default=[], metavar="SIDE=DIR",
                    help="a cache folder whose engines/ each run of SIDE (before/after) starts with")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- featx arguments; {cache} is a fresh folder")
    args = ap.parse_args()
    command = [a for a in args.command if a != "--"]
    sides = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    engines = dict(item.split("=", 1) for item in args.engines_from)
    tmp = Path(tempfile.mkdtemp(prefix="featx-ab-"))
    results = {s: [] for s in sides}
    try:
        for _ in range(args.repeats):
            for side, checkout in sides.items():
                cache = Path(tempfile.mkdtemp(dir=tmp))
                if side in engines:
                    shutil.copytree(Path(engines[side]) / "engines", cache / "engines")
                results[side].append(run(checkout, [a.replace("{cache}", str(cache)) for a in command]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {s: [statistics.median(r[i] for r in rows) for i in range(3)] for s, rows in results.items()}
    b, a = med["before"], med["after"]
    print(f"featx {' '.join(command)}  (median of {args.repeats} whole processes per side, interleaved; "
          f"{os.cpu_count()} CPUs shared with other jobs)")
    print("| side | wall s | CPU s (user+sys) | peak RSS MB |")
    print("|---|---|---|---|")
    for side in sides:
        w, c, r = med[side]
        print(f"| {side} ({sides[side]}) | {w:.2f} | {c:.2f} | {r:.0f} |")
    print(f"| before / after | {b[0] / a[0]:.2f}x | {b[1] / a[1]:.2f}x | {b[2] / a[2]:.2f}x |")
    print("raw (wall, CPU, RSS): " + str({s: [tuple(round(v, 2) for v in r) for r in rows]
                                          for s, rows in results.items()}))


if __name__ == "__main__":
    main()
