#!/usr/bin/env python
"""``featx serve`` under a hostile mix: normal requests/s, p99 latency and the server's peak RSS.

Starts ``featx serve``'s app (serve's own limits and deadlines) in a child process on a free
port, trains a tiny bundle unless ``--bundle`` is given, then alternates two phases, each
``--rounds`` times (interleaved A/B/A/B so machine load hits both alike):

* **A, normal only**: ``--requests`` single-image POST /predict (a 500x375 JPEG) from
  ``--clients`` threads;
* **B, normal + hostile**: the same, while other threads send, in a loop: decompression
  bombs (a 924 kB 16-bit RGBA PNG declaring 10900x10900, a 12000x12000 Radiance HDR named .jpg,
  and a 3500x3500 16-bit RGBA PNG that is under serve's limits, so it is really decoded: the
  worst image an attacker can make the server decode), slow bodies (1 byte every 0.5 s),
  slow headers (half a request line) and clients that disconnect mid-body.

Prints per phase the normal requests/s and p99 latency (medians over rounds), the ratios B/A,
what the hostile requests got, the server's CPU use (cores busy) and its peak RSS (its own VmHWM,
reset per phase).  The attacking clients run in a child process at nice 19 (attackers live on
other machines); they still share this machine's cores.
With ``--burst-rounds N`` (issue 27) it measures memory and refusals instead: N rounds of
``--burst-clients`` (60) concurrent legal uploads of ``--burst-mb`` (8) MB each (a 3000x2000 JPEG
padded after its end marker), each client on its own connection, sending its whole body before
reading the answer.  Printed per round: the answers (200, 503, ...), the TCP resets and other
transport errors among them, and the server's resident memory once idle (1 s after the round); at
the end the first and last idle RSS, their ratio, the peak RSS (VmHWM) and the resets in total.

Asserts nothing.  The machine may be shared: quote the ratios.

    python scripts/bench_serve.py [--bundle model.featx] [--requests 60] [--rounds 2] [--engines keras,litert]
    python scripts/bench_serve.py --burst-rounds 20 [--burst-clients 60] [--burst-mb 8] [--engines keras]
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def tiny_bundle(folder: Path) -> Path:
    import cv2

    from featx.training import fit_head

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


_SERVER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from featx.serve import serve
serve(sys.argv[2], "127.0.0.1", int(sys.argv[3]), engine=sys.argv[4], cache_dir=sys.argv[5])
"""


def status(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _attack(port, bombs, stop, out):
    """In a child process at the lowest priority: attackers live on other machines, so their own
    client-side CPU should not be what slows the normal clients down here."""
    os.nice(19)
    attack = Hostile(port, bombs)
    attack.start()
    stop.wait()
    attack.finish()
    out.put(dict(attack.got))


class Hostile:
    """Threads that keep attacking until stopped; counts what they got back."""

    def __init__(self, port: int, bombs: dict):
        self.port, self.bombs, self.stop, self.got = port, bombs, threading.Event(), collections.Counter()
        self.threads = []

    def start(self):
        for name in self.bombs:
            self.threads.append(threading.Thread(target=self.bomber, args=(name,), daemon=True))
        for target, n in ((self.slow_body, 3), (self.slow_header, 2), (self.disconnecter, 1)):
            self.threads += [threading.Thread(target=target, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=40)

    def bomber(self, name):
        import httpx

        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(f"http://127.0.0.1:{self.port}/predict",
                                    files={"file": (name, self.bombs[name], "application/octet-stream")})
                    self.got[f"{name}: {r.status_code}"] += 1
                except Exception as exc:  # noqa: BLE001 - what the attacker sees is the measurement
                    self.got[f"{name}: {type(exc).__name__}"] += 1
                    time.sleep(0.2)

    def _head(self, length):
        return (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                b"Content-Length: %d\r\n\r\n" % length)

    def slow_body(self):
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port)) as s:
                    s.sendall(self._head(100_000))
                    s.settimeout(0.5)
                    while not self.stop.is_set():
                        s.sendall(b"x")
                        try:
                            data = s.recv(4096)
                            self.got["slow body: " + (data[9:12].decode() if data else "closed")] += 1
                            break
                        except socket.timeout:
                            pass
            except OSError:
                self.got["slow body: dropped"] += 1

    def slow_header(self):
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port)) as s:
                    s.sendall(b"POST /pred")
                    s.settimeout(60)
                    start = time.monotonic()
                    s.recv(100)
                    self.got[f"slow header: closed after {round(time.monotonic() - start)} s"] += 1
            except OSError:
                self.got["slow header: reset"] += 1

    def disconnecter(self):
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port)) as s:
                    s.sendall(self._head(500_000) + b"--x\r\nContent-Disposition: form-data; name=\"file\"; "
                              b"filename=\"a.png\"\r\n\r\n" + b"\x89PNG" * 20_000)
                self.got["disconnect mid-body"] += 1
            except OSError:
                pass
            time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--requests", type=int, default=60, help="normal requests per phase")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2, help="concurrent normal clients")
    ap.add_argument("--engines", default="keras", help="comma-separated: keras,litert (one server each)")
    ap.add_argument("--cache", default=None, help="the server's cache folder (default: a fresh one; LiteRT converts "
                                                  "once per folder, so reuse one to measure a server without TensorFlow)")
    ap.add_argument("--burst-rounds", type=int, default=0, help="memory and refusals under bursts instead")
    ap.add_argument("--burst-clients", type=int, default=60)
    ap.add_argument("--burst-mb", type=float, default=8.0)
    args = ap.parse_args()
    for engine in args.engines.split(","):
        run(args, engine)


def big_upload(mb: float) -> bytes:
    """A legal upload of ``mb`` MB: a 3000x2000 photo-like JPEG, padded after its end marker."""
    import cv2

    rng = np.random.default_rng(2)
    img = cv2.resize(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8), (3000, 2000), interpolation=cv2.INTER_CUBIC)
    data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    return data + b"\0" * max(0, int(mb * 2**20) - len(data))


def one_upload(port: int, data: bytes) -> str:
    """One upload on its own connection, the whole body sent before the answer is read: its status, or
    the transport error (``reset``: the server reset the connection instead of answering)."""
    head = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: %d\r\n\r\n")
    body = (b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--x--\r\n")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.sendall(head % len(body) + body)
            got = b""
            while b"\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    return "closed without an answer"
                got += chunk
            return got.split(b" ", 2)[1].decode()
    except ConnectionResetError:
        return "reset"
    except BrokenPipeError:
        return "reset"  # the server reset while we were still sending
    except OSError as exc:
        return type(exc).__name__


def burst(args, server, port: int) -> None:
    """``--burst-rounds`` rounds of ``--burst-clients`` concurrent legal uploads: answers, resets, idle RSS."""
    data = big_upload(args.burst_mb)
    print(f"burst: {args.burst_rounds} rounds x {args.burst_clients} concurrent uploads of "
          f"{len(data) / 2**20:.1f} MiB (3000x2000 JPEG), one connection each")
    time.sleep(1.0)
    print(f"server RSS at rest: {status(server.pid, 'VmRSS:') / 2**20:.0f} MiB")
    idle, total = [], collections.Counter()
    for r in range(args.burst_rounds):
        with ThreadPoolExecutor(args.burst_clients) as pool:
            got = collections.Counter(pool.map(lambda _: one_upload(port, data), range(args.burst_clients)))
        total += got
        time.sleep(1.0)  # idle: the server returns freed memory after 0.25 s without uploads
        idle.append(status(server.pid, "VmRSS:"))
        print(f"round {r + 1:2d}: " + ", ".join(f"{k} x{v}" for k, v in sorted(got.items()))
              + f"; idle RSS {idle[-1] / 2**20:.0f} MiB", flush=True)
    peak = status(server.pid, "VmHWM:")
    refused = sum(v for k, v in total.items() if k != "200")
    print(f"idle RSS after round 1: {idle[0] / 2**20:.0f} MiB, after round {len(idle)}: {idle[-1] / 2**20:.0f} MiB "
          f"(ratio {idle[-1] / idle[0]:.2f}); peak RSS {peak / 2**20:.0f} MiB")
    print("answers in total: " + ", ".join(f"{k} x{v}" for k, v in sorted(total.items()))
          + f"; resets among {refused} refusals: {total['reset']}")


def run(args, engine: str) -> None:

    import httpx

    from test_hostile import hdr_bomb, png_bomb

    tmp = Path(tempfile.mkdtemp(prefix="featx-serve-bench-"))
    bundle = Path(args.bundle) if args.bundle else tiny_bundle(tmp)
    args.engine = engine
    image = photo_jpeg()
    bombs = {} if args.burst_rounds else {"rgba16-10900.png": png_bomb(10900, 10900),
                                          "radiance-12000.jpg": hdr_bomb(12000), "rgba16-3500.png": png_bomb(3500, 3500)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(ROOT), str(bundle), str(port), args.engine,
                               str(args.cache or tmp / "cache")], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None:
                    raise SystemExit(server.stderr.read())
                time.sleep(0.2)
        with httpx.Client(timeout=120) as client:
            def one(_):
                start = time.perf_counter()
                r = client.post(url + "/predict", files={"file": ("p.jpg", image, "image/jpeg")})
                return time.perf_counter() - start, r.status_code

            for _ in range(3):
                one(0)  # warm up
            if args.burst_rounds:
                burst(args, server, port)
                return
            print(f"machine: {os.cpu_count()} CPUs, shared with other work: quote the ratios")
            print(f"bundle {bundle.name}, engine {args.engine}, one 500x375 JPEG per normal request, "
                  f"{args.requests} requests x {args.clients} clients per phase, {args.rounds} rounds "
                  "(A/B interleaved)")
            print(f"server RSS at rest: {status(server.pid, 'VmRSS:') / 2**20:.0f} MiB")
            results = {"A": [], "B": []}
            hostile_got = collections.Counter()
            for _ in range(args.rounds):
                for phase in ("A", "B"):
                    reset_peak(server.pid)
                    attack = None
                    if phase == "B":
                        import multiprocessing as mp

                        ctx = mp.get_context("fork")
                        stop, out = ctx.Event(), ctx.Queue()
                        attack = ctx.Process(target=_attack, args=(port, bombs, stop, out), daemon=True)
                        attack.start()
                        time.sleep(1.0)  # let the attack build up
                    start, cpu = time.perf_counter(), cpu_seconds(server.pid)
                    with ThreadPoolExecutor(args.clients) as pool:
                        done = list(pool.map(one, range(args.requests)))
                    wall = time.perf_counter() - start
                    cpu = cpu_seconds(server.pid) - cpu
                    if attack:
                        stop.set()
                        hostile_got += collections.Counter(out.get(timeout=60))
                        attack.join(timeout=10)
                    lat = sorted(d for d, _ in done)
                    ok = sum(code == 200 for _, code in done)
                    results[phase].append({"rps": ok / wall, "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                                           "p50": statistics.median(lat), "failed": len(done) - ok,
                                           "peak": status(server.pid, "VmHWM:"), "cpu": cpu / wall})
            for phase, label in (("A", "normal only"), ("B", "normal + hostile mix")):
                r = results[phase]
                print(f"{phase} {label:22s}: {statistics.median(x['rps'] for x in r):6.2f} requests/s, "
                      f"p50 {statistics.median(x['p50'] for x in r) * 1000:6.0f} ms, "
                      f"p99 {statistics.median(x['p99'] for x in r) * 1000:6.0f} ms, "
                      f"normal requests failed {sum(x['failed'] for x in r)}, "
                      f"server CPU {statistics.median(x['cpu'] for x in r):.2f} cores, "
                      f"server peak RSS {max(x['peak'] for x in r) / 2**20:.0f} MiB")
            a, b = results["A"], results["B"]
            rps_ratio = statistics.median(x["rps"] for x in b) / statistics.median(x["rps"] for x in a)
            print(f"ratio B/A: requests/s {rps_ratio:.2f}, "
                  f"p99 latency {statistics.median(x['p99'] for x in b) / statistics.median(x['p99'] for x in a):.2f}, "
                  f"peak RSS {max(x['peak'] for x in b) / max(x['peak'] for x in a):.2f}")
            print("hostile requests got: " + "; ".join(f"{k} x{v}" for k, v in sorted(hostile_got.items())))
    finally:
        server.terminate()
        try:
            _, err = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
        lines = [line for line in err.splitlines() if line.strip()]
        tracebacks = sum("Traceback" in line for line in lines)
        last = f"; last: {lines[-1][:160]}" if lines else ""
        (tmp / "server.log").write_text(err)
        print(f"server log: {len(lines)} lines, {tracebacks} tracebacks{last} (all in {tmp / 'server.log'})")


if __name__ == "__main__":
    main()
