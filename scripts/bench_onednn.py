#!/usr/bin/env python
"""Keras forward pass with TensorFlow's oneDNN kernels off and on (TF_ENABLE_ONEDNN_OPTS=0/1).

Each setting runs in a fresh process (TensorFlow reads the variable at import); prints the
median images/s of each, the ratio, and the largest difference between their codes.

    python scripts/bench_onednn.py [--backbone mobilenet_v2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, statistics, sys, time
import numpy as np
from featx import _tf
from featx.backbones.registry import get_backbone
spec = get_backbone(sys.argv[1]); batch, repeats = int(sys.argv[2]), int(sys.argv[3])
model = spec.feature_model(["pre_logits"])
rng = np.random.default_rng(0)
x = spec.normalize(rng.integers(0, 256, (batch, spec.input_size, spec.input_size, 3)).astype(np.float32))
model.predict_on_batch(x)
rates = []
for _ in range(repeats):
    t = time.perf_counter(); model.predict_on_batch(x); rates.append(batch / (time.perf_counter() - t))
np.save(sys.argv[4], np.asarray(model.predict_on_batch(x)["pre_logits"]))
print(json.dumps(statistics.median(rates)))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rates, codes = {}, {}
    for flag in ("0", "1"):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": flag}
        out = tmp / f"codes{flag}.npy"
        proc = subprocess.run([sys.executable, "-c", CHILD, args.backbone, str(args.batch_size), str(args.repeats),
                               str(out)], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        rates[flag] = json.loads(proc.stdout.strip().splitlines()[-1])
        import numpy as np

        codes[flag] = np.load(out)
        print(f"TF_ENABLE_ONEDNN_OPTS={flag}: {rates[flag]:.1f} img/s (median of {args.repeats} batches of "
              f"{args.batch_size}, {args.backbone})")
    diff = float(abs(codes["1"] - codes["0"]).max())
    print(f"oneDNN on / off: {rates['1'] / rates['0']:.2f}x; codes differ by at most {diff:.2e}")


if __name__ == "__main__":
    main()
