#!/usr/bin/env python
"""Whole-process timings of the fast path: the default engine against ``--engine keras``.

Every figure is a median over ``--repeats`` fresh processes, and both sides of every ratio are
measured in the same run, interleaved (A, B, A, B, ...), so that a loaded machine slows both.
The converted LiteRT model is made once beforehand (it lives in the cache's ``engines`` folder);
each timed process gets a fresh cache folder holding only that, so every photo is new to it.

Rows (issue 13's table):
  1. ``featx extract`` of the photos in DATA/train (default 244 in ants_bees), wall time and peak RSS
  2. process start to the first batch in the engine
  3. ``featx predict BUNDLE one-new-photo.jpg``, wall time and peak RSS
  4. (bench_extract.py: LiteRT end to end vs the bare LiteRT network)
  5. ``featx serve BUNDLE`` until ``/health`` answers

    python scripts/bench_startup.py [--data ../shared/datasets/ants_bees] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

FIRST_BATCH_CHILD = """
import sys, time
import featx.engines.keras as K, featx.engines.litert as L

def watch(cls):
    init, run = cls.__init__, cls.run
    def __init__(self, *a, **k):
        init(self, *a, **k)
        self._bench_ready = True
    def timed(self, batch):
        if getattr(self, "_bench_ready", False) and not getattr(sys, "_bench_seen", False):
            sys._bench_seen = True
            print("FIRST-BATCH %.6f %s" % (time.time(), self.name), flush=True)
            sys.exit(0)  # the measurement ends here
        return run(self, batch)
    cls.__init__, cls.run = __init__, timed

watch(K.KerasEngine); watch(L.LiteRTEngine)
from featx.cli import main
sys.exit(main(sys.argv[1:]))
"""


def env():
    e = dict(os.environ)
    e.pop("FEATX_ENGINE", None)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def peak_rss_run(args):
    """Wall seconds, this child's own peak RSS (MB, from wait4), stdout and stderr of one whole process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out, err


def fresh_cache(base: Path, tmp: Path) -> Path:
    folder = Path(tempfile.mkdtemp(dir=tmp, prefix="cache-"))
    shutil.copytree(base / "engines", folder / "engines")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_until_health(bundle, cache, engine) -> float:
    port = free_port()
    args = [PY, "-m", "featx.cli", "serve", str(bundle), "--port", str(port), "--cache", str(cache)]
    if engine != "default":
        args += ["--engine", engine]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.02)
            if time.perf_counter() - t0 > 300:
                raise SystemExit("serve did not answer /health within 300 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def first_batch(cmd, engine) -> float:
    args = [PY, "-c", FIRST_BATCH_CHILD, *cmd] + ([] if engine == "default" else ["--engine", engine])
    start = time.time()
    out = subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("FIRST-BATCH")]
    if not lines:
        raise SystemExit(f"no batch reached an engine:\n{out.stderr[-2000:]}")
    _, stamp, name = lines[0].split()
    return float(stamp) - start, name


def med(values):
    return statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "ants_bees"),
                    help="a dataset with a train/ folder (default ../shared/datasets/ants_bees)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()
    data = Path(args.data)
    train = data / "train" if (data / "train").is_dir() else data
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="featx-startup-"))
    tmp.mkdir(parents=True, exist_ok=True)
    base = tmp / "base"
    n_train = sum(1 for p in train.rglob("*") if p.is_file())
    photo = next(p for p in sorted((data / "val").rglob("*.jpg")) if p.is_file()) if (data / "val").is_dir() \
        else next(p for p in sorted(train.rglob("*.jpg")))

    print(f"# bench_startup: {train} ({n_train} files), repeats {args.repeats}, "
          f"{os.cpu_count()} CPUs (shared machine: compare ratios, not absolute times)")
    t0 = time.perf_counter()
    subprocess.run([PY, "-m", "featx.cli", "extract", str(data), "--cache", str(base)], cwd=ROOT, env=env(),
                   check=True, capture_output=True)
    out = tmp / "fit"
    subprocess.run([PY, "-m", "featx.cli", "fit-head", str(data), "--cache", str(base), "--out", str(out)],
                   cwd=ROOT, env=env(), check=True, capture_output=True)
    bundle = next(out.glob("*.featx"))
    print(f"# prepared: converted model, cache and bundle in {time.perf_counter() - t0:.0f} s "
          f"({sorted(p.name for p in (base / 'engines').glob('*.tflite'))})")

    engines = ("default", "keras")
    rows = {k: {e: [] for e in engines} for k in ("extract", "extract_rss", "first", "predict", "predict_rss",
                                                  "serve")}
    names = {}
    for r in range(args.repeats):
        for engine in engines:
            flag = [] if engine == "default" else ["--engine", engine]
            cache = fresh_cache(base, tmp)
            wall, rss, stdout, _ = peak_rss_run([PY, "-m", "featx.cli", "extract", str(train), "--cache", str(cache),
                                                 *flag])
            assert f"{n_train} extracted" in stdout or "extracted" in stdout, stdout
            names[engine] = stdout.split("img/s, ")[1].split(")")[0] if "img/s, " in stdout else "?"
            rows["extract"][engine].append(wall)
            rows["extract_rss"][engine].append(rss)
            cache = fresh_cache(base, tmp)
            seconds, _name = first_batch(["extract", str(train), "--cache", str(cache)], engine)
            rows["first"][engine].append(seconds)
            cache = fresh_cache(base, tmp)
            wall, rss, stdout, _ = peak_rss_run([PY, "-m", "featx.cli", "predict", str(bundle), str(photo),
                                                 "--cache", str(cache), *flag])
            assert stdout.startswith("file,"), stdout
            rows["predict"][engine].append(wall)
            rows["predict_rss"][engine].append(rss)
            rows["serve"][engine].append(serve_until_health(bundle, fresh_cache(base, tmp), engine))
        print(f"# repeat {r + 1}/{args.repeats} done", flush=True)

    d, k = "default", "keras"

    def pair(key, unit="s", fmt="{:.2f}"):
        a, b = med(rows[key][d]), med(rows[key][k])
        return a, b, f"{fmt.format(a)} {unit} vs {fmt.format(b)} {unit}"

    print()
    print(f"| what (median of {args.repeats} whole processes, same run) | default engine ({names.get(d)}) vs "
          f"--engine keras | ratio keras/default |")
    print("|---|---|---|")
    a, b, text = pair("extract")
    ra, rb, rtext = pair("extract_rss", "MB", "{:.0f}")
    print(f"| featx extract of {n_train} new photos | {text}; peak {rtext} | "
          f"{b / a:.2f}x time, {rb / ra:.2f}x memory |")
    a, b, text = pair("first")
    print(f"| process start to the first batch in the engine | {text} | {b / a:.2f}x |")
    a, b, text = pair("predict")
    ra, rb, rtext = pair("predict_rss", "MB", "{:.0f}")
    print(f"| featx predict BUNDLE one-new-photo.jpg | {text}; peak {rtext} | "
          f"{b / a:.2f}x time, {rb / ra:.2f}x memory |")
    a, b, text = pair("serve")
    print(f"| featx serve BUNDLE until /health answers | {text} | {b / a:.2f}x |")
    print("| LiteRT end to end vs the bare LiteRT network | see scripts/bench_extract.py | |")
    print()
    print("raw (seconds / MB per repeat): " + json.dumps({key: {e: [round(v, 2) for v in vals]
                                                               for e, vals in per.items()}
                                                         for key, per in rows.items()}))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
