#!/usr/bin/env python
"""When does fine-tuning pay?  The cached route against fine-tuning, per dataset, with the time each took.

For each dataset, in one fresh cache folder, it runs the real commands and times each whole command:

1. ``featx fit-head DATA --head logistic`` (extraction included: the cache starts empty) -- the cached route;
2. ``featx finetune DATA`` -- the default recipe, init head included (trained on the cache first);
3. ``featx finetune DATA --recipe study --epochs E`` -- the 2017 recipe for the same number of epochs the
   default ran (E), so the two recipes get the same budget of passes.

It prints test accuracy with its 95 % Wilson interval, seconds, and the difference to the cached route,
and writes the table (markdown and JSON) to ``--out``.  The machine's load average is printed before and
after: on a shared machine the seconds are only comparable within one run.  The runs log of each dataset
is kept as ``OUT/DATASET-runs.csv`` (``featx report --runs`` renders it).  Prints figures, asserts nothing.

    python scripts/bench_finetune.py [--data ../shared/datasets/cifar10_3k,../shared/datasets/flowers5]
                                     [--max-train N] [--skip-study] [--out featx-out/bench-finetune]

``--max-train N``: a quicker run on at most N training images per class (a stratified subset, the same
for every route; the test images are all kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featx.stats import format_accuracy  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"


def run(args: list[str], log: Path) -> float:
    """Run ``featx ARGS`` in a subprocess (its output appended to ``log``); the wall seconds it took."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ featx {' '.join(args)}\n")
        f.flush()
        code = subprocess.call([sys.executable, "-m", "featx.cli", *args], stdout=f, stderr=f, env=env)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"featx {' '.join(args)} failed (exit {code}); see {log}")
    return seconds


def subset(data: Path, per_class: int, dest: Path) -> Path:
    """Symlinks to at most ``per_class`` training images per class (sorted names); every test/val image."""
    for split_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        split = split_dir.name.lower()
        if split not in ("train", "val", "test"):  # class folders at the top: subset them all
            files = sorted(p for p in split_dir.iterdir() if p.is_file())[:per_class]
            _link(files, dest / split_dir.name)
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            files = sorted(p for p in class_dir.iterdir() if p.is_file())
            _link(files[:per_class] if split == "train" else files, dest / split_dir.name / class_dir.name)
    return dest


def _link(files, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f.resolve())


def accuracy(metrics: dict) -> tuple[int, int]:
    n = metrics["n"]["test"]
    return round(metrics["accuracy"]["test"] * n), n


def bench(data: Path, out: Path, args) -> list[dict]:
    name = data.name
    cache = Path(tempfile.mkdtemp(prefix=f"featx-bench-ft-{name}-"))
    log = out / f"{name}.log"
    rows = []
    try:
        if args.max_train:
            data = subset(data, args.max_train, cache / "data" / name)
        t = run(["fit-head", str(data), "--cache", str(cache), "--head", "logistic", "--out", str(out / f"{name}-cached")],
                log)
        m = json.loads((out / f"{name}-cached" / "metrics.json").read_text())
        rows.append({"dataset": name, "route": "cached (logistic, extraction included)", "seconds": t,
                     "correct_n": accuracy(m), "epochs": None})
        print(_line(rows[-1]), flush=True)
        ft = out / f"{name}-finetune"
        cmd = ["finetune", str(data), "--cache", str(cache), "--out", str(ft), "--no-progress"]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        t = run(cmd, log)
        m = json.loads((ft / "metrics.json").read_text())
        epochs = m["epochs_run"]
        rows.append({"dataset": name, "route": "finetune default (init head included)", "seconds": t,
                     "correct_n": accuracy(m), "epochs": epochs})
        print(_line(rows[-1]), flush=True)
        if not args.skip_study:
            st = out / f"{name}-study"
            t = run(["finetune", str(data), "--cache", str(cache), "--out", str(st), "--no-progress",
                     "--recipe", "study", "--epochs", str(epochs), "--init-head",
                     str(ft / "init-head" / "model.featx")], log)
            m = json.loads((st / "metrics.json").read_text())
            rows.append({"dataset": name, "route": f"finetune --recipe study ({epochs} epochs, same init head)",
                         "seconds": t, "correct_n": accuracy(m), "epochs": m["epochs_run"]})
            print(_line(rows[-1]), flush=True)
    finally:
        if (cache / "runs.csv").exists():  # for `featx report --runs OUT/DATASET-runs.csv`
            shutil.copy(cache / "runs.csv", out / f"{name}-runs.csv")
        shutil.rmtree(cache, ignore_errors=True)
    base = rows[0]["correct_n"][0] / rows[0]["correct_n"][1]
    for r in rows:
        c, n = r["correct_n"]
        r["delta_points"] = 100 * (c / n - base)
    return rows


def _line(r: dict) -> str:
    c, n = r["correct_n"]
    return f"  {r['dataset']:<12} {r['route']:<52} test {format_accuracy(c, n)}  {r['seconds']:7.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=f"{SHARED / 'cifar10_3k'},{SHARED / 'flowers5'}",
                    help="comma-separated dataset folders (default cifar10_3k and flowers5)")
    ap.add_argument("--epochs", type=int, default=None, help="default recipe's epochs (default: the recipe's)")
    ap.add_argument("--max-train", type=int, default=None, metavar="N",
                    help="at most N training images per class (default: all)")
    ap.add_argument("--skip-study", action="store_true", help="leave out the --recipe study run")
    ap.add_argument("--out", default="featx-out/bench-finetune", help="output folder (default featx-out/bench-finetune)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows = []
    for d in args.data.split(","):
        rows += bench(Path(d), out, args)
    print(f"load average after: {os.getloadavg()[0]:.1f} (1 min)")
    lines = ["| dataset | route | test accuracy [95% Wilson] | vs cached | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        c, n = r["correct_n"]
        lines.append(f"| {r['dataset']} | {r['route']} | {format_accuracy(c, n)} | {r['delta_points']:+.1f} pts "
                     f"| {r['seconds']:.0f} |")
    table = "\n".join(lines)
    print(table)
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
