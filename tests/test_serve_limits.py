"""featx serve holds its deadlines on every route, answers every refusal (no TCP resets), and answers a batch
file by file (issue 27).  A fake predictor (no network): these tests take a few seconds, run in parallel threads."""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import free_port, require_extra, start_server
from test_hostile import _png, _red, fake_predictor

httpx = require_extra("httpx", "the serve tests' client")
uvicorn = require_extra("uvicorn", "featx serve")
require_extra("starlette", "featx serve")

BODY_TIMEOUT = 1.5
MAX_BYTES = 1_000_000


@pytest.fixture(scope="module")
def limited():
    from featx.serve import create_app, server_config

    predictor = fake_predictor(slow=0.05)
    app = create_app(predictor, top=2, max_bytes=MAX_BYTES, body_timeout=BODY_TIMEOUT, max_pending=2,
                     max_buffered=4_000_000, decode_slots=1)
    port = free_port()
    srv = uvicorn.Server(server_config(app, "127.0.0.1", port, header_timeout=1.0, body_timeout=BODY_TIMEOUT))
    thread, url = start_server(srv)
    yield url, port
    srv.should_exit = True
    thread.join(timeout=10)


def _head(method: str, path: str, length: int, kind: str = "multipart/form-data; boundary=x") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _trickle(port: int, method: str, path: str, limit: float = 8.0):
    """Headers, then one body byte every 0.2 s until the server closes: (what came back, seconds open)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(_head(method, path, 100_000))
    start = time.monotonic()
    s.settimeout(0.2)
    got = b""
    try:
        while time.monotonic() - start < limit:
            try:
                s.sendall(b"x")
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            except socket.timeout:
                pass
    except OSError:  # a reset after the answer is fine: the answer is what counts
        pass
    finally:
        s.close()
    return got, time.monotonic() - start


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/health", 200), ("POST", "/predict", 408), ("GET", "/", 200), ("PUT", "/health", 405),
    ("POST", "/nowhere", 404), ("OPTIONS", "/predict", 403)])
def test_a_trickling_body_is_closed_at_the_deadline_on_every_route(limited, method, path, status):
    """Before: only POST /predict had a body deadline; GET /health with a body at 1 byte/s stayed open."""
    _, port = limited
    got, open_for = _trickle(port, method, path)
    assert got.startswith(f"HTTP/1.1 {status}".encode()), got[:200]
    assert b"connection: close" in got.lower()
    assert open_for < BODY_TIMEOUT + 1.5, open_for  # closed at the deadline, not held by the trickle


def _send_all_then_read(port: int, head: bytes, body: bytes) -> bytes:
    """The whole request, then the answer; raises ConnectionResetError if the server reset instead."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        s.sendall(head + body)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk


def test_an_oversized_upload_gets_413_not_a_reset(limited):
    url, port = limited
    body = b"\0" * (3 * MAX_BYTES)
    for _ in range(3):
        got = _send_all_then_read(port, _head("POST", "/predict", len(body)), body)
        assert got.startswith(b"HTTP/1.1 413"), got[:200]
        assert "exceeds the limit" in json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]
    response = httpx.post(url + "/predict", files={"file": ("big.jpg", body, "image/jpeg")}, timeout=30)
    assert response.status_code == 413 and "exceeds the limit" in response.json()["error"]


def test_busy_gets_503_with_json_not_a_reset(limited):
    """Both /predict slots held by slow uploads: every other upload is answered 503 (JSON, Retry-After)."""
    url, port = limited
    holders = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        for s in holders:
            s.sendall(_head("POST", "/predict", 100_000) + b"--x")
        time.sleep(0.3)
        body = b"\0" * 900_000  # legal size, sent in full before the answer is read

        def one(_):
            try:
                return _send_all_then_read(port, _head("POST", "/predict", len(body)), body)
            except ConnectionResetError:
                return b"reset"

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(4)))
        assert all(a.startswith(b"HTTP/1.1 503") for a in answers), [a[:40] for a in answers]
        assert all(b"retry-after: 1" in a.lower() and b'"error":"busy' in a for a in answers)
    finally:
        for s in holders:
            s.close()
    time.sleep(BODY_TIMEOUT)
    assert httpx.post(url + "/predict", files={"file": ("r.png", _png(_red()), "image/png")}).status_code == 200


def test_a_batch_answers_every_good_file_and_names_every_bad_one(limited):
    url, _ = limited
    red, blue = _red(), _red()[:, :, ::-1].copy()
    truncated = _png(red)[:40]
    files = [("file", ("ant.png", _png(red), "image/png")), ("file", ("cut.png", truncated, "image/png")),
             ("file", ("notes.txt", b"hello", "text/plain")), ("file", ("bee.png", _png(blue), "image/png"))]
    response = httpx.post(url + "/predict", files=files, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(r["filename"], r["predicted"]) for r in body["results"]] == [("ant.png", "red"), ("bee.png", "blue")]
    assert [(e["filename"], e["status"]) for e in body["errors"]] == [("cut.png", 422), ("notes.txt", 415)]
    assert "not a readable image" in body["errors"][0]["error"]
    only_bad = httpx.post(url + "/predict", files=files[1:3], timeout=30)
    assert only_bad.status_code == 422 and only_bad.json()["filename"] == "cut.png"
    assert [e["filename"] for e in only_bad.json()["errors"]] == ["cut.png", "notes.txt"]
    good = httpx.post(url + "/predict", files=files[:1], timeout=30).json()
    assert good["errors"] == [] and len(good["results"]) == 1


def test_too_many_files_is_a_json_answer(limited):
    url, _ = limited
    files = [("file", (f"{i}.png", _png(_red()), "image/png")) for i in range(17)]
    response = httpx.post(url + "/predict", files=files, timeout=30)
    assert response.status_code == 413 and "16" in response.json()["error"], response.text
