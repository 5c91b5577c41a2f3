#!/usr/bin/env python
"""What featx's ``TF_ENABLE_ONEDNN_OPTS=1`` default changes: TensorFlow's own default vs featx's, A/B interleaved.

featx does ``os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")`` when imported, so the case it changes is
a user who has *not* set the variable.  Both arms below start with the variable unset:

- ``unset``: TensorFlow is imported before featx, so TensorFlow decides (its default depends on the CPU:
  on for Intel, off for AMD);
- ``featx``: featx is imported first and sets it to 1, as ``featx ...`` does.

TensorFlow reads the variable once, at import, so every measurement is a fresh process.  The arms alternate
(unset, featx, unset, featx, ...) so that drift on a shared machine hits both; each process times ``--batches``
forward passes of one batch after a warm-up, and the script prints each arm's median images/s, the ratio of the
medians, the per-round ratios, and the largest difference between the two arms' codes.

    python scripts/bench_onednn.py [--backbone mobilenet_v2] [--rounds 5] [--batches 5] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, statistics, sys, time
arm = sys.argv[1]
if arm == "unset":
    import tensorflow  # noqa: F401  (TensorFlow reads TF_ENABLE_ONEDNN_OPTS now, while it is unset)
import featx  # sets TF_ENABLE_ONEDNN_OPTS=1 unless already set (too late for TensorFlow in the 'unset' arm)
import numpy as np
from featx.backbones.registry import get_backbone
spec = get_backbone(sys.argv[2]); batch, batches = int(sys.argv[3]), int(sys.argv[4])
model = spec.feature_model(["pre_logits"])
rng = np.random.default_rng(0)
x = spec.normalize(rng.integers(0, 256, (batch, spec.input_size, spec.input_size, 3)).astype(np.float32))
model.predict_on_batch(x)  # build and trace
rates = []
for _ in range(batches):
    t = time.perf_counter(); out = model.predict_on_batch(x); rates.append(batch / (time.perf_counter() - t))
np.save(sys.argv[5], np.asarray(out["pre_logits"]))
print(json.dumps({"rate": statistics.median(rates)}))
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_arm(arm: str, args, out: Path) -> tuple[float, bool]:
    """One fresh process: (median images/s, whether TensorFlow reported its oneDNN custom operations on)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}  # both arms start unset
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # TensorFlow logs "oneDNN custom operations are on" at import when they are
    env["FEATX_TF_LOGS"] = "1"  # and featx must not hide that log
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", CHILD, arm, args.backbone, str(args.batch_size), str(args.batches),
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_onednn: the {arm} process failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["rate"], "oneDNN custom operations are on" in proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=5, help="timed batches per process (median taken)")
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds; each round is one process per arm")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rates = {"unset": [], "featx": []}
    onednn = {"unset": set(), "featx": set()}
    codes = {}
    print(f"CPU: {cpu_name()}; {args.backbone}, batch {args.batch_size}, median of {args.batches} batches per "
          f"process, {args.rounds} interleaved rounds")
    for r in range(args.rounds):
        order = ("unset", "featx") if r % 2 == 0 else ("featx", "unset")  # alternate which arm goes first
        for arm in order:
            rate, on = run_arm(arm, args, tmp / f"{arm}.npy")
            rates[arm].append(rate)
            onednn[arm].add(on)
            codes[arm] = np.load(tmp / f"{arm}.npy")
        print(f"round {r + 1}: unset {rates['unset'][-1]:.1f} img/s, featx {rates['featx'][-1]:.1f} img/s, "
              f"ratio {rates['featx'][-1] / rates['unset'][-1]:.2f}x")
    med = {arm: statistics.median(v) for arm, v in rates.items()}
    per_round = [f / u for f, u in zip(rates["featx"], rates["unset"])]
    diff = float(np.abs(codes["featx"] - codes["unset"]).max())
    state = {arm: "/".join("on" if o else "off" for o in sorted(v, reverse=True)) for arm, v in onednn.items()}
    print(f"oneDNN custom operations (TensorFlow's own log): unset arm {state['unset']}, featx arm {state['featx']}")
    print(f"median: unset (TensorFlow's default) {med['unset']:.1f} img/s, featx (TF_ENABLE_ONEDNN_OPTS=1) "
          f"{med['featx']:.1f} img/s: {med['featx'] / med['unset']:.2f}x "
          f"(per-round ratios {min(per_round):.2f}-{max(per_round):.2f}x); codes differ by at most {diff:.2e}")


if __name__ == "__main__":
    main()
