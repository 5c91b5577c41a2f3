#!/usr/bin/env python
"""How close are the offline ports to the original PyTorch networks?  Prints what it measures.

Two checks against ``shared/reference`` (made from the PyTorch originals, an oracle independent of featx):

1. the largest absolute difference of logits and pre_logits codes on the reference input batches
   (``offline_backbones.npz``), per backbone, with this machine's CPU named beside it;
2. the top-5 ImageNet classes on raw photos (``offline_backbones_top5.json``), through featx's own decoding and
   preprocessing (``peek``), so the whole path from file to class is compared.

    python scripts/check_ports.py [--reference ../shared/reference]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featx.backbones.registry import get_backbone  # noqa: E402
from featx.peek import peek  # noqa: E402

OFFLINE = ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                return line.split(":", 1)[1].strip() + (" (AMX)" if "amx_tile" in flags else "")
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=str(ROOT.parent / "shared" / "reference"))
    args = ap.parse_args()
    ref_dir = Path(args.reference)
    ref = np.load(ref_dir / "offline_backbones.npz")
    top5 = json.loads((ref_dir / "offline_backbones_top5.json").read_text())["backbones"]
    import sklearn.datasets

    photos = Path(sklearn.datasets.__file__).parent / "images"
    print(f"CPU: {cpu_name()}")
    print(f"{'backbone':20s} {'max|logits|':>12s} {'max|codes|':>12s}   top-5 on china / flower (featx vs original)")
    worst = 0.0
    for name in OFFLINE:
        spec = get_backbone(name)
        out = spec.feature_model(["pre_logits", "logits"]).predict(ref[f"{name}__inputs"], verbose=0)
        e_logits = float(np.abs(out["logits"] - ref[f"{name}__logits"]).max())
        e_codes = float(np.abs(out["pre_logits"] - ref[f"{name}__codes"]).max())
        worst = max(worst, e_logits, e_codes)
        rows = peek([photos / "china.jpg", photos / "flower.jpg"], backbone=name, top=5)
        same = []
        for photo, row in zip(("china", "flower"), rows):
            expected = [c for c, _, _ in top5[name]["top5"][f"sklearn.{photo}"]]
            got = [c for c, _, _ in row]
            diff_p = max(abs(p - q) for (_, _, p), (_, _, q) in zip(row, top5[name]["top5"][f"sklearn.{photo}"]))
            same.append(f"{photo}: {'same order' if got == expected else f'{got} vs {expected}'}"
                        f" (max |dp| {diff_p:.4f})")
        print(f"{name:20s} {e_logits:12.2e} {e_codes:12.2e}   {'; '.join(same)}")
    print(f"largest difference over all ports and outputs: {worst:.2e}")


if __name__ == "__main__":
    main()
