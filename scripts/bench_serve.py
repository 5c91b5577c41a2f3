#!/usr/bin/env python
"""Requests per second that ``featx serve`` sustains for single-image requests on this machine.

Starts the app in this process (uvicorn on 127.0.0.1, a free port), trains a tiny bundle unless
``--bundle`` is given, then sends a bounded number of single-image POST /predict requests from a
local client, sequentially and with a few concurrent clients.  Prints medians; asserts nothing.

    python scripts/bench_serve.py [--bundle model.featx] [--requests 60] [--engines keras,litert]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tiny_bundle(folder: Path) -> Path:
    import cv2

    from featx.fit import fit_head

    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        (folder / "data" / name).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            img = cv2.resize(rng.integers(0, 128, (4, 4, 3), dtype=np.uint8), (64, 48))
            img[:, :, 2 - c] += 120  # BGR
            cv2.imwrite(str(folder / "data" / name / f"{i}.jpg"), img)
    return fit_head(folder / "data", cache_dir=folder / "cache", out_dir=folder / "out", engine="keras").bundle


def photo_jpeg() -> bytes:
    import cv2

    rng = np.random.default_rng(1)
    img = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (500, 375), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", img)[1].tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--requests", type=int, default=60, help="per round (bounded load)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--engines", default="keras,litert")
    args = ap.parse_args()

    import httpx
    import uvicorn

    from featx.serve import Predictor, create_app

    tmp = Path(tempfile.mkdtemp(prefix="featx-serve-bench-"))
    bundle = Path(args.bundle) if args.bundle else tiny_bundle(tmp)
    image = photo_jpeg()
    print(f"bundle {bundle}, one 500x375 JPEG ({len(image) // 1024} kB) per request, "
          f"{args.requests} requests x {args.rounds} rounds")
    for engine in args.engines.split(","):
        predictor = Predictor(bundle, engine=engine, cache_dir=tmp / "cache")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        with httpx.Client(timeout=60) as client:
            def one(_):
                r = client.post(url + "/predict", files={"file": ("p.jpg", image, "image/jpeg")})
                r.raise_for_status()

            for _ in range(3):
                one(0)  # warm up
            for conc in map(int, args.concurrency.split(",")):
                rates = []
                for _ in range(args.rounds):
                    start = time.perf_counter()
                    with ThreadPoolExecutor(conc) as pool:
                        list(pool.map(one, range(args.requests)))
                    rates.append(args.requests / (time.perf_counter() - start))
                print(f"engine {predictor.engine if hasattr(predictor, 'engine') else engine}, {conc} client(s): "
                      f"{statistics.median(rates):.1f} requests/s (median of {args.rounds})")
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
