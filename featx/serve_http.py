"""featx serve's connections: deadlines, answers that arrive, and memory given back.

What the HTTP layer needs to stay bounded whatever the clients send, apart from the routes
(:mod:`featx.serve`):

* :func:`error_response`: the JSON error every non-2xx answer is;
* :class:`BodyDeadline`: a body deadline on every route and method, as ASGI wrappers (408 at the
  deadline; ``Connection: close`` on an answer sent before the body has all arrived);
* :func:`server_config`: uvicorn with a header deadline, a backstop body deadline and a *lingering
  close*: after a refusal sent while the client is still uploading, the rest of its body is read and
  discarded within bounds before the socket closes, so the client reads the answer instead of a
  TCP reset (the kernel resets a socket closed with unread bytes);
* :func:`tune_allocator`, :func:`release_memory`, :class:`IdleTrim`: glibc's allocator told to
  keep fewer arenas and to give freed memory back after a burst;
* :func:`bind`: the listening socket, or a one-line error.
"""

from __future__ import annotations

import asyncio

from featx.errors import FeatxError

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
KEEP_ALIVE_TIMEOUT = 5.0
#: After a refusal sent while the client is still uploading, the rest of its body is read and
#: discarded for at most this long, and at most LINGER_BYTES: closing with unread bytes makes the
#: kernel send a TCP reset, and the client never reads the answer (nginx's "lingering close").
LINGER_SECONDS = 5.0
LINGER_BYTES = 32 * 1024 * 1024
#: glibc malloc arenas for the whole process (default: 8 per core); fewer arenas, less memory kept.
MALLOC_ARENAS = 2
#: Allocations of this many bytes or more get their own mapping, returned to the system when freed.
MMAP_THRESHOLD = 1024 * 1024
#: Seconds without a /predict in progress before the allocator is asked to return freed memory.
TRIM_AFTER = 0.25


def error_response(status: int, message: str, cors_headers: dict | None = None, filename: str | None = None,
                   close: bool = False, headers: dict | None = None, errors: list | None = None):
    """The JSON error every non-2xx answer is: ``{"error": message[, "filename": ...][, "errors": [...]]}``
    with ``status`` (``errors``: one ``{"filename", "status", "error"}`` per refused file of a batch)."""
    from starlette.responses import JSONResponse

    body = {"error": message}
    if filename is not None:
        body["filename"] = filename
    if errors is not None:
        body["errors"] = errors
    extra = dict(cors_headers or {}, **(headers or {}))
    if close:  # the body may still be arriving: do not keep reading it on this connection
        extra["Connection"] = "close"
    return JSONResponse(body, status_code=status, headers=extra)


def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def tune_allocator(arenas: int = MALLOC_ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Tell glibc's malloc to keep less memory behind (``mallopt``); False where not glibc.

    * ``M_ARENA_MAX`` = ``arenas``: glibc gives each thread that allocates its own arena (up to 8 per
      core), and memory freed in one arena is not reused by another, so a burst of uploads handled by
      many worker threads leaves resident memory behind;
    * ``M_MMAP_THRESHOLD`` = ``mmap_threshold``: buffers this large or larger (upload bodies, decoded
      images) are mapped on their own and unmapped when freed; a fixed threshold also stops glibc from
      raising it after each free, which would move multi-megabyte buffers into the heap for good.

    Call before the threads start (:func:`featx.serve.serve` does).  Source: ``mallopt(3)``
    (``M_ARENA_MAX`` = -8, ``M_MMAP_THRESHOLD`` = -3).
    """
    libc = _libc()
    return bool(libc and libc.mallopt(-8, int(arenas)) == 1 and libc.mallopt(-3, int(mmap_threshold)) == 1)


def release_memory() -> bool:
    """Give freed heap memory back to the operating system (glibc ``malloc_trim(0)``); False where not glibc.

    Why: decoded images and upload buffers are freed after each request, but glibc keeps freed pages
    mapped; without this, idle resident memory grows with every burst.  Source: ``malloc_trim(3)``.
    """
    libc = _libc()
    return bool(libc and libc.malloc_trim(0))


class IdleTrim:
    """Calls :func:`release_memory` once /predict has been idle ``after`` seconds (a burst is over), in a
    worker thread, at most once per idle period: trimming after every request would cost throughput."""

    def __init__(self, ledger, after: float = TRIM_AFTER):
        self.ledger, self.after, self.timer, self.trims = ledger, after, None, 0

    def request_done(self) -> None:
        if self.ledger.pending == 0 and self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.after, self._fire)

    def _fire(self) -> None:
        self.timer = None
        if self.ledger.pending == 0:
            self.trims += 1
            asyncio.get_running_loop().run_in_executor(None, release_memory)


def has_body(headers: dict) -> bool:
    """Whether a request announces a body (``Content-Length`` above 0, or chunked); ``headers``: raw, as bytes."""
    length = headers.get(b"content-length", b"0").strip()
    return (not length.isdigit() or int(length) > 0) or b"chunked" in headers.get(b"transfer-encoding", b"").lower()


class BodyDeadline:
    """One request's body deadline as ASGI ``receive`` and ``send`` wrappers, whatever the route.

    ``receive`` waits at most until ``body_timeout`` seconds after the headers; past it, a 408 JSON
    answer goes out (``Connection: close``) unless an answer has begun, and the app is told the client
    left.  ``send`` adds ``nosniff`` to every response, and ``Connection: close`` to one sent before
    the request's body has all arrived (a route that never reads the body, or a refusal): the server
    then drains the rest within bounds and closes (:func:`_protocol`), so a trickling body never
    keeps a connection open, and the client reads the answer instead of a TCP reset.
    """

    def __init__(self, receive, send, scope, body_timeout: float, cors_headers: dict):
        self._receive, self._send = receive, send
        self.body_timeout, self.cors_headers = body_timeout, cors_headers
        self.deadline = asyncio.get_running_loop().time() + body_timeout
        self.body_done = not has_body(dict(scope["headers"]))
        self.started = self.answered_408 = False

    async def receive(self):
        if self.answered_408:
            return {"type": "http.disconnect"}
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            message = await asyncio.wait_for(self._receive(), remaining)
        except asyncio.TimeoutError:
            if not self.started:
                self.answered_408 = True
                late = error_response(408, f"the upload did not arrive within {self.body_timeout:g} s",
                                      self.cors_headers, close=True)
                await late({"type": "http"}, self._receive, self._send_own)
            return {"type": "http.disconnect"}
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.body_done = True
        return message

    async def _send_own(self, message):
        await self.send(message, own=True)

    async def send(self, message, own: bool = False):
        if self.answered_408 and not own:
            return  # the app's late answer after our 408: the client has its answer
        if message["type"] == "http.response.start":
            self.started = True
            headers = list(message.get("headers", []))
            headers.append((b"x-content-type-options", b"nosniff"))
            if not self.body_done and (b"connection", b"close") not in headers:
                headers.append((b"connection", b"close"))
            message = dict(message, headers=headers)
        await self._send(message)


class _Lingering:
    """The transport as a request/response cycle sees it: ``close()`` becomes the protocol's lingering close."""

    def __init__(self, transport, protocol):
        self._transport, self._protocol = transport, protocol

    def close(self):
        self._protocol.close_after_drain()

    def __getattr__(self, name):
        return getattr(self._transport, name)


def _protocol(header_timeout: float, body_timeout: float = BODY_TIMEOUT, linger_seconds: float = LINGER_SECONDS,
              linger_bytes: int = LINGER_BYTES):
    """uvicorn's h11 protocol with featx's connection deadlines, on every route and method.

    * headers: the request line and headers within ``header_timeout`` of the connection (or of the
      previous response), else the connection is dropped (there is no request to answer);
      uvicorn's own ``timeout_keep_alive`` only covers an idle connection between requests.
    * body: the whole body within ``body_timeout`` of the headers; :class:`BodyDeadline` answers 408
      at the deadline, and this closes the connection one second later whatever the app does.
    * lingering close: a connection closed while the client is still sending its body (a refusal
      before the body was read: 413 by ``Content-Length``, 503, 408; a route that ignores a body)
      is half-closed after the answer, and the rest of the body read and discarded for at most
      ``linger_seconds`` (at most ``body_timeout``) and ``linger_bytes``: a socket closed with unread bytes makes the kernel send
      a TCP reset, and a client that was still sending then loses the answer it was sent.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        _header_timer = _body_timer = _linger_timer = None
        _lingering = False
        _linger_left = 0

        def _arm(self):
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._header_timer = self.loop.call_later(header_timeout, self._expired)

        def _expired(self):
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self._real.is_closing():
                self._real.close()  # headers late: drop the connection (there is no request to answer)

        def _body_expired(self):
            self._body_timer = None
            if self.conn.their_state is h11.SEND_BODY and not self._real.is_closing():
                self._real.close()  # body late and nobody answered it: drop the connection

        def _cancel(self, name):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

        def connection_made(self, transport):
            super().connection_made(transport)
            self._real = transport
            self.transport = _Lingering(transport, self)  # what each request/response cycle closes
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._lingering:  # the answer is sent: read and discard, within bounds
                self._linger_left -= len(data)
                if self._linger_left < 0:
                    self._real.close()
                return
            self._arm()
            super().data_received(data)
            state = self.conn.their_state
            if state is not h11.IDLE:
                self._cancel("_header_timer")
            if state is h11.SEND_BODY and self._body_timer is None:
                self._body_timer = self.loop.call_later(body_timeout + 1.0, self._body_expired)
            elif state is not h11.SEND_BODY:
                self._cancel("_body_timer")

        def close_after_drain(self):
            """Close now when nothing more is coming; else half-close and drain (see above)."""
            real = self._real
            if real.is_closing() or self._lingering:
                return
            if self.conn.their_state is not h11.SEND_BODY or not real.can_write_eof():
                real.close()
                return
            try:
                real.write_eof()  # after the answer is flushed: the client reads it, then its send ends
            except OSError:  # the client is gone already
                real.close()
                return
            self._lingering, self._linger_left = True, linger_bytes
            self._cancel("_body_timer")
            real.resume_reading()
            self._linger_timer = self.loop.call_later(min(linger_seconds, body_timeout), real.close)

        def connection_lost(self, exc):
            for name in ("_header_timer", "_body_timer", "_linger_timer"):
                self._cancel(name)
            super().connection_lost(exc)

    return DeadlineH11Protocol


def server_config(app, host: str = "127.0.0.1", port: int = 8000, header_timeout: float = HEADER_TIMEOUT,
                  keep_alive: float = KEEP_ALIVE_TIMEOUT, body_timeout: float = BODY_TIMEOUT):
    """A ``uvicorn.Config`` with featx's deadlines (headers, body, keep-alive, lingering close) and quiet logs."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=_protocol(header_timeout, body_timeout),
                          timeout_keep_alive=keep_alive, log_level="warning", access_log=False,
                          h11_max_incomplete_event_size=16 * 1024, lifespan="off",
                          timeout_graceful_shutdown=5)


def bind(host: str, port: int):
    """A listening socket on ``host:port``, or a one-line :class:`FeatxError` (port taken, bad host)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FeatxError(f"{host}: cannot resolve this address ({exc.strerror})", param="host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise FeatxError(f"{host}:{port} is already in use by another program; choose another port",
                             param="port") from None
        if exc.errno == errno.EACCES:
            raise FeatxError(f"{port}: permission denied (ports below 1024 need privileges); "
                             "choose a port above 1024", param="port") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise FeatxError(f"{host}: not an address of this machine", param="host") from None
        raise FeatxError(f"cannot listen on {host}:{port} ({(exc.strerror or str(exc)).lower()})",
                         param="port") from None
    sock.set_inheritable(True)
    return sock


