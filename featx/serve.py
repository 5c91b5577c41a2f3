"""``featx serve``: a web page and a JSON API that classify uploaded images with a bundle.

The model is loaded once at start; the forward pass is serialised by a lock (one network, two
cores: queueing is the honest schedule).  Uploads are untrusted, and the server is bounded
whatever the clients send:

* memory: uploads held at once total at most ``max_buffered`` bytes (counted as they arrive,
  so slow clients holding a few bytes block nobody; beyond it, 503), each at most ``max_bytes``;
  at most ``decode_slots`` images are decoded at once, each within the decode
  budget (``budget`` bytes, :func:`featx.images.decode_cost`) and the pixel limit
  (``max_pixels``), and shrunk to the network's input right after decoding.  So the decoding
  part of the peak is at most ``decode_slots x budget`` (2 x 256 MiB by default).
* time: a request's headers must arrive within ``header_timeout`` seconds of the connection
  (or of the previous response), its body within ``body_timeout`` (408 otherwise); idle
  keep-alive connections close after 5 s.  Clients that disconnect are dropped quietly.
* origin: a POST to ``/predict`` from another origin (a web page elsewhere sending the
  visitor's browser here) is refused (403) unless allowed with ``cors``; when bound to the
  loopback address, the ``Host`` header must name it (DNS rebinding).
* answers: every non-2xx response is JSON ``{"error": ...}``; the page carries a
  Content-Security-Policy and every response ``X-Content-Type-Options: nosniff``.

File names are only echoed back, never used as paths.  Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np

from featx.errors import FeatxError

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_FILES = 16
#: serve's own, lower limits (``featx extract`` keeps featx.images' defaults)
SERVE_MAX_PIXELS = 24_000_000
SERVE_DECODE_BUDGET = 256 * 1024 * 1024
DECODE_SLOTS = 2
MAX_PENDING = 64
MAX_BUFFERED = 64 * 1024 * 1024
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
KEEP_ALIVE_TIMEOUT = 5.0


class Predictor:
    """Bundle (or fine-tuned model) -> class probabilities for decoded RGB images."""

    def __init__(self, bundle_path, trust: bool = False, engine: str = "keras", cache_dir=None):
        from featx.backbones.registry import get_backbone
        from featx.bundle import load_bundle
        from featx.cache import default_cache_dir
        from featx.config import ExtractorConfig
        from featx.engines import make_engine
        from featx.fit import extractor_weights

        self.path = Path(bundle_path)
        self.lock = threading.Lock()
        if self.path.suffix == ".keras":
            from featx import _tf
            from featx.errors import FeatxError
            from featx.finetune import read_model_meta

            meta = read_model_meta(self.path)
            if meta["kind"] != "finetune":
                raise FeatxError(f"{self.path}: serve runs fine-tuned models and bundles; a {meta['kind']} "
                                 "model is scored with featx predict")
            self.spec = get_backbone(meta["backbone"])
            self.classes = list(meta["class_names"])
            self.model = {"dataset": meta.get("dataset"), "backbone": meta["backbone"], "head": "fine-tuned",
                          "taps": [meta["tap"]] if meta.get("tap") else []}
            model = _tf.keras().models.load_model(self.path)
            self._proba = lambda batch: np.asarray(model.predict_on_batch(self.spec.normalize(batch)),
                                                   dtype=np.float64)
            self.engine = "keras"
            return
        bundle = load_bundle(self.path, trust=trust)
        from featx.fit import bundle_proba

        extractors = bundle.all_extractors()
        self.specs = [get_backbone(ext["backbone"]) for ext in extractors]
        self.spec = max(self.specs, key=lambda sp: sp.input_size)  # decode at the largest input any one needs
        self.classes = [str(c) for c in bundle.head.classes_]
        metrics = bundle.metrics or {}
        self.model = {"dataset": metrics.get("dataset"), "backbone": "+".join(e["backbone"] for e in extractors),
                      "head": metrics.get("head") or type(bundle.head).__name__,
                      "taps": list(dict.fromkeys(t for e in extractors for t in e["taps"]))}
        flip = bundle.needs_flip()
        runners = []  # one engine per extractor
        for ext in extractors:
            weights = extractor_weights(bundle, None, ext)
            config = ExtractorConfig(ext["backbone"], ext["taps"], ext["pooling"], ext["dtype"], weights)
            runners.append((list(ext["taps"]), make_engine(config, 1, engine, cache_dir or default_cache_dir())))
        self.engine = runners[0][1].name

        def codes_of(taps, runner, batch):
            out = [runner.run(batch[i : i + 1]) for i in range(len(batch))]
            return {t: np.concatenate([o[t] for o in out]) for t in taps}

        def proba(batches):
            """``batches``: one uint8 batch per extractor, each at its network's input size."""
            batches = [batches] if isinstance(batches, np.ndarray) else batches
            codes = [{"clean": codes_of(taps, runner, batch),
                      "flip": codes_of(taps, runner, np.ascontiguousarray(batch[:, :, ::-1])) if flip else None}
                     for (taps, runner), batch in zip(runners, batches)]
            return bundle_proba(bundle, codes)

        self._proba = proba

    @property
    def backbone(self) -> str:
        """The backbone's name (``a+b`` for a bundle of several extractors)."""
        return "+".join(sp.name for sp in getattr(self, "specs", None) or [self.spec])

    @property
    def name(self) -> str:
        """The model's own name: ``dataset: backbone/taps, head`` (the file name when nothing better is known)."""
        m = self.model
        body = f"{m['backbone']}/{'+'.join(m['taps'])}" if m.get("taps") else m["backbone"]
        body += f", {m['head']}" if m.get("head") else ""
        return f"{m['dataset']}: {body}" if m.get("dataset") else f"{self.path.name}: {body}"

    def _shrink(self, image: np.ndarray):
        """A decoded image at the network input: ``(size, size, 3)`` uint8, or a tuple of one such
        array per extractor when the bundle has several (each backbone resizes from the decoded image)."""
        specs = getattr(self, "specs", None) or [self.spec]
        if len(specs) == 1:
            return specs[0].resize(image)
        return tuple(sp.resize(image) for sp in specs)

    def prepare(self, data: bytes, source: str, max_pixels: int, budget: int):
        """Decode one upload and shrink it to the network input at once: ``(size, size, 3)`` uint8
        (a tuple of those, one per extractor, for a bundle of several backbones)."""
        from featx.images import decode

        return self._shrink(decode(data, source, self.spec.input_size, max_pixels=max_pixels, budget=budget))

    def predict_prepared(self, images: list) -> np.ndarray:
        """Class probabilities ``(n, classes)`` float64 for images from :meth:`prepare`.

        Every extractor of the bundle runs; a bundle trained with flip TTA also runs each image's mirror.
        """
        if images and isinstance(images[0], tuple):
            batch = [np.stack([im[i] for im in images]) for i in range(len(images[0]))]
        else:
            batch = np.stack(images)  # uint8: the engine normalises (LiteRT inside its graph)
        with self.lock:
            return self._proba(batch)

    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities ``(n, classes)`` for decoded RGB images of any size."""
        return self.predict_prepared([self._shrink(im) for im in images])


def _page() -> str:
    return resources.files("featx").joinpath("data/serve.html").read_text("utf-8")


def _csp(page: str) -> str:
    """A Content-Security-Policy that admits exactly the page's own inline script and style."""

    def hashes(tag):
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in found)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "img-src data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")


_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def create_app(predictor: Predictor, top: int = 5, max_bytes: int = MAX_UPLOAD_BYTES, *,
               max_pixels: int = SERVE_MAX_PIXELS, budget: int = SERVE_DECODE_BUDGET,
               decode_slots: int = DECODE_SLOTS, max_pending: int = MAX_PENDING, max_buffered: int = MAX_BUFFERED,
               body_timeout: float = BODY_TIMEOUT, cors: str | None = None, allowed_hosts=None):
    """The Starlette app: ``/`` (page), ``/health`` and ``POST /predict`` (JSON).

    Parameters
    ----------
    predictor : Predictor
    top : int
        classes returned per image.
    max_bytes : int
        largest request body, bytes (413 above).
    max_pixels, budget : int
        declared pixels and decode memory (bytes) allowed per image (422 above).
    decode_slots : int
        images decoded at once, over all requests.
    max_pending : int
        requests to /predict in progress at once; more get 503.
    max_buffered : int
        bytes of uploads held in memory at once, over all requests; more get 503.
    body_timeout : float
        seconds for the whole body to arrive (408 after).
    cors : str, optional
        an origin (``https://example.org``) whose pages may POST here; others get 403.
    allowed_hosts : iterable of str, optional
        host names the ``Host`` header may carry (any port); ``None``: no check.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from featx.images import FORMAT_NAMES, ImageError, looks_like_image

    top = max(1, min(top, len(predictor.classes)))
    page_html = _page()
    csp = _csp(page_html)
    decode_gate = asyncio.Semaphore(max(1, decode_slots))
    pending = [0]
    buffered = [0]
    cors_headers = {"Access-Control-Allow-Origin": cors, "Vary": "Origin"} if cors else {}
    hosts = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}

    def error(status: int, message: str, filename=None, close: bool = False, headers=None):
        body = {"error": message}
        if filename is not None:
            body["filename"] = filename
        extra = dict(cors_headers, **(headers or {}))
        if close:  # the body may still be arriving: do not keep reading it on this connection
            extra["Connection"] = "close"
        return JSONResponse(body, status_code=status, headers=extra)

    def model_info():
        return {"name": predictor.name, **predictor.model, "file": predictor.path.name}

    async def page(request: Request):
        return HTMLResponse(page_html, headers={"Content-Security-Policy": csp, "Referrer-Policy": "no-referrer"})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": model_info(), "bundle": predictor.path.name,
                             "backbone": predictor.backbone, "classes": predictor.classes,
                             "limits": {"max_upload_bytes": max_bytes, "max_files": MAX_FILES,
                                        "max_pixels": max_pixels, "decode_budget_bytes": budget}})

    async def preflight(request: Request):
        if not cors or request.headers.get("origin") != cors:
            return error(403, "cross-origin requests are not allowed here (start featx serve with --cors ORIGIN)")
        return Response(status_code=204, headers={**cors_headers, "Access-Control-Allow-Methods": "POST",
                                                  "Access-Control-Allow-Headers": "content-type",
                                                  "Access-Control-Max-Age": "600"})

    def refused_origin(request: Request):
        origin = request.headers.get("origin")
        site = request.headers.get("sec-fetch-site")
        if origin is None:
            return None if site in (None, "same-origin", "none") else f"a {site} request"
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin == own or (cors is not None and origin == cors):
            return None
        return f"origin {origin}"

    async def predict(request: Request):
        start = time.perf_counter()
        why = refused_origin(request)
        if why:
            return error(403, f"{why} may not use this server's /predict (same origin only; start featx serve "
                              "with --cors ORIGIN to allow one)", close=True)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            return error(413, f"upload of {int(length):,} bytes exceeds the limit of {max_bytes:,}", close=True)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(415, "send the image(s) as multipart/form-data, field 'file'", close=True)
        if pending[0] >= max_pending:
            return error(503, f"busy: {max_pending} uploads in progress; try again in a moment", close=True,
                         headers={"Retry-After": "1"})
        pending[0] += 1
        held = [0]  # this request's share of ``buffered``
        try:
            return await _predict(request, start, held)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening; nothing to log
        finally:
            pending[0] -= 1
            buffered[0] -= held[0]

    async def _read_body(request: Request, held: list):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body_timeout
        body = bytearray()
        chunks = request.stream().__aiter__()
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                chunk = await asyncio.wait_for(chunks.__anext__(), remaining)
            except StopAsyncIteration:
                return bytes(body), None
            except asyncio.TimeoutError:
                return None, error(408, f"the upload did not arrive within {body_timeout:g} s", close=True)
            body += chunk
            if len(body) > max_bytes:
                return None, error(413, f"upload exceeds the limit of {max_bytes:,} bytes", close=True)
            if buffered[0] + len(chunk) > max_buffered:
                return None, error(503, "busy: too many uploads arriving at once; try again in a moment",
                                   close=True, headers={"Retry-After": "1"})
            buffered[0] += len(chunk)
            held[0] += len(chunk)

    async def _predict(request: Request, start: float, held: list):
        body, refused = await _read_body(request, held)
        if refused is not None:
            return refused
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        holder = [body]  # the parser takes the only reference: no second copy stays while decoding
        del body

        async def replay():
            yield holder.pop()
            yield b""

        def parse():  # in a worker thread: parsing 10 MB must not stall the event loop (other clients)
            return asyncio.run(MultiPartParser(request.headers, replay(), max_files=MAX_FILES,
                                               max_part_size=max_bytes).parse())

        try:
            form = await run_in_threadpool(parse)
        except MultiPartException as exc:
            return error(400, f"malformed upload: {exc.message}")
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            return error(400, "no file in the upload; use the field 'file'")
        images, names = [], []
        for upload in uploads:
            name = Path(upload.filename or "upload").name[:200]  # echoed only, never a path
            data = await upload.read()
            if not looks_like_image(data):  # by its first bytes, not the client's content type
                return error(415, f"{name}: not an image ({FORMAT_NAMES} expected)", name)
            try:
                async with decode_gate:  # at most decode_slots decodes at once, whatever the clients send
                    images.append(await run_in_threadpool(predictor.prepare, data, name, max_pixels, budget))
            except ImageError as exc:
                return error(422, str(exc), name)
            names.append(name)
        decoded = time.perf_counter()
        proba = await run_in_threadpool(predictor.predict_prepared, images)
        done = time.perf_counter()
        results = []
        for name, row in zip(names, proba):
            order = np.argsort(-row)[:top]
            results.append({"filename": name, "predicted": predictor.classes[order[0]],
                            "top": [{"class": predictor.classes[i], "probability": float(row[i])} for i in order]})
        return JSONResponse({
            "model": model_info(), "bundle": predictor.path.name, "backbone": predictor.backbone, "results": results,
            "timing_ms": {"decode": round((decoded - start) * 1000, 1), "model": round((done - decoded) * 1000, 1),
                          "total": round((done - start) * 1000, 1)},
        }, headers=cors_headers)

    async def http_error(request: Request, exc: HTTPException):
        messages = {404: f"no such page: {request.url.path} (try /, /health or POST /predict)",
                    405: f"{request.method} is not allowed on {request.url.path}"
                         + (" (send a POST with multipart/form-data, field 'file')" if request.url.path == "/predict"
                            else "")}
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)),
                     headers=getattr(exc, "headers", None))

    async def server_error(request: Request, exc: Exception):
        return error(500, f"internal error ({type(exc).__name__}); the server keeps running")

    app = Starlette(
        routes=[Route("/", page), Route("/health", health), Route("/predict", predict, methods=["POST"]),
                Route("/predict", preflight, methods=["OPTIONS"])],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )

    async def guarded(scope, receive, send):
        """Host check and the headers every response carries."""
        if scope["type"] != "http":
            return await app(scope, receive, send)
        if hosts is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.strip("[]") not in hosts:
                response = error(421, f"this server answers to {', '.join(sorted(hosts))}, not {host or 'no host'}",
                                 close=True)
                return await response(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = dict(message, headers=headers)
            await send(message)

        await app(scope, receive, send_with_headers)

    guarded.starlette = app
    return guarded


def _protocol(header_timeout: float):
    """uvicorn's h11 protocol with a deadline on the request line and headers.

    uvicorn's own ``timeout_keep_alive`` only covers an idle connection between requests;
    a client that sends half a request line would hold its connection forever.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        _header_timer = None

        def _arm(self):
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._header_timer = self.loop.call_later(header_timeout, self._expired)

        def _expired(self):
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # headers late: drop the connection (there is no request to answer)

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._arm()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_lost(self, exc):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return DeadlineH11Protocol


def server_config(app, host: str = "127.0.0.1", port: int = 8000, header_timeout: float = HEADER_TIMEOUT,
                  keep_alive: float = KEEP_ALIVE_TIMEOUT):
    """A ``uvicorn.Config`` with featx's deadlines (headers, keep-alive) and quiet logs."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=_protocol(header_timeout), timeout_keep_alive=keep_alive,
                          log_level="warning", access_log=False, h11_max_incomplete_event_size=16 * 1024,
                          lifespan="off")


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


def serve(bundle, host: str = "127.0.0.1", port: int = 8000, top: int = 5, max_bytes: int = MAX_UPLOAD_BYTES,
          trust: bool = False, engine: str = "auto", cache_dir=None, max_pixels: int = SERVE_MAX_PIXELS,
          budget: int = SERVE_DECODE_BUDGET, decode_slots: int = DECODE_SLOTS, cors: str | None = None,
          header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT) -> None:
    """Bind ``host:port`` first (a taken port is a one-line error), then load the model and serve."""
    try:
        import uvicorn
    except ImportError:
        raise FeatxError("featx serve needs its extra: pip install 'featx[serve]'") from None
    began = time.perf_counter()
    sock = bind(host, port)
    try:
        predictor = Predictor(bundle, trust=trust, engine=engine, cache_dir=cache_dir)
        allowed = _LOOPBACK if host in _LOOPBACK else None
        app = create_app(predictor, top, max_bytes, max_pixels=max_pixels, budget=budget, decode_slots=decode_slots,
                         body_timeout=body_timeout, cors=cors, allowed_hosts=allowed)
        server = uvicorn.Server(server_config(app, host, port, header_timeout))
        # the socket is bound and listening: connections made from now on are answered
        print(f"featx: ready in {time.perf_counter() - began:.1f} s: serving {predictor.name} "
              f"({len(predictor.classes)} classes, {predictor.engine} engine) on http://{host}:{port}/", flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
