#!/usr/bin/env python
"""Do the keras.applications backbones convert to LiteRT without hand edits?

Random weights are enough for a parity check: each backbone's feature model (the taps given) is
converted and checked exactly as ``featx extract --engine litert`` does, and the conversion time,
model size and largest difference from Keras are printed.

    python scripts/check_conversions.py [--backbones resnet50,vgg16,inception_v3] [--taps stage5,pre_logits]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featx.config import ExtractorConfig  # noqa: E402
from featx.engines import LiteRTEngine, make_engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="resnet50,vgg16,inception_v3")
    ap.add_argument("--taps", default="stage5,pre_logits")
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    taps = args.taps.split(",")
    with tempfile.TemporaryDirectory() as cache:
        for name in args.backbones.split(","):
            warnings = []
            start = time.perf_counter()
            engine = make_engine(ExtractorConfig(name, taps, weights=None), args.batch_size, "litert", cache,
                                 gpu=False, warn=warnings.append)
            seconds = time.perf_counter() - start
            record = Path(cache, "engines")
            if isinstance(engine, LiteRTEngine):
                import json

                info = json.loads(engine.path.with_suffix(".json").read_text())
                diffs = ", ".join(f"{t} {d:.1e}" for t, d in info["max_diff"].items())
                print(f"{name}: converted in {info['convert_seconds']:.0f}s ({seconds:.0f}s with the check), "
                      f"{engine.path.stat().st_size / 1e6:.0f} MB, {info['input']} input; "
                      f"max |LiteRT - Keras|: {diffs}; parity ok")
            else:
                print(f"{name}: fell back to Keras: {'; '.join(warnings)} ({record})")


if __name__ == "__main__":
    main()
