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
  After a burst, glibc is told to give freed memory back (:mod:`featx.serve_http`).
* time: on every route and method, a request's headers must arrive within ``header_timeout`` seconds
  of the connection (or of the previous response), its body within ``body_timeout`` (408 otherwise);
  idle keep-alive connections close after 5 s.  Clients that disconnect are dropped quietly.
* refusals are answers: 413, 503, 408 sent before the body has arrived are read by the client (the
  rest of the body is drained within bounds, never a TCP reset; :mod:`featx.serve_http`).
* batches: each file is answered on its own; a bad one is named in ``errors`` and never voids the others.
* origin: a POST to ``/predict`` from another origin (a web page elsewhere sending the
  visitor's browser here) is refused (403) unless allowed with ``cors``; when bound to the
  loopback address, the ``Host`` header must name it (DNS rebinding).
* answers: every non-2xx response is JSON ``{"error": ...}``; the page carries a
  Content-Security-Policy and every response ``X-Content-Type-Options: nosniff``.

File names are only echoed back, never used as paths.  Binds to 127.0.0.1 unless told otherwise.

Parts: :class:`ServeOptions` holds the limits as one value; :func:`build_app` routes the handlers of
:class:`Endpoints` behind :class:`GuardedApp` (Host check, ``nosniff``).  ``POST /predict`` is named
steps, each raising :class:`Refused` for its JSON error: :func:`check_upload_request`,
:meth:`UploadLedger.claim`, :func:`read_body`, :func:`parse_uploads`, :func:`decode_uploads`, :func:`ranked`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from featx.names import shown
from featx.errors import FeatxError
from featx.stats import stated_accuracies
from featx.serve_http import (BODY_TIMEOUT, HEADER_TIMEOUT, KEEP_ALIVE_TIMEOUT, BodyDeadline, IdleTrim,  # noqa: F401
                              bind, error_response, tune_allocator, release_memory, server_config)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_FILES = 16
#: serve's own, lower limits (``featx extract`` keeps featx.images' defaults)
SERVE_MAX_PIXELS = 24_000_000
SERVE_DECODE_BUDGET = 256 * 1024 * 1024
DECODE_SLOTS = 2
MAX_PENDING = 64
MAX_BUFFERED = 64 * 1024 * 1024


class Predictor:
    """Bundle (or fine-tuned model) -> class probabilities for decoded RGB images."""

    def __init__(self, bundle_path, trust: bool = False, engine: str = "keras", cache_dir=None):
        self.path = Path(bundle_path)
        self.lock = threading.Lock()
        if self.path.suffix == ".keras":
            self.load_finetuned(trust)
        else:
            self.load_bundle(trust, engine, cache_dir)

    def load_finetuned(self, trust: bool = False) -> None:
        """A fine-tuned ``model.keras`` (through its featx.json, checked with the file by
        :func:`featx.prediction.models.load_keras_model`; ``trust``: unsigned accepted): the backbone's
        preprocessing, then the model."""
        from featx.backbones.registry import get_backbone  # here, not at the top: `featx --help` reads this module
        from featx.modelmeta import ModelDescription
        from featx.prediction.models import load_keras_model

        d = ModelDescription.read(self.path)  # checked before Keras reads anything
        if d.kind != "finetune":
            raise FeatxError(f"{self.path}: serve runs fine-tuned models and bundles; a {d.kind} "
                             "model is scored with featx predict")
        loaded = load_keras_model(self.path, description=d, trust=trust)
        self.spec = get_backbone(d.backbone)
        self.classes = [shown(c) for c in loaded.class_names]  # any folder name as JSON text (featx.names)
        self.model = {"dataset": None, "backbone": d.backbone, "head": "fine-tuned", "taps": [d.tap] if d.tap else []}
        self._proba = loaded.proba
        self.engine = "keras"

    def load_bundle(self, trust: bool, engine: str, cache_dir) -> None:
        """A ``model.featx`` bundle: one engine per extractor, decoded at the largest input any one needs."""
        from featx.backbones.registry import get_backbone
        from featx.bundle import load_bundle
        from featx.cache import default_cache_dir
        from featx.config import ExtractorConfig
        from featx.engines import make_engine
        from featx.prediction.bundles import bundle_proba, extractor_weights, precision_of

        bundle = load_bundle(self.path, trust=trust)
        extractors = bundle.all_extractors()
        self.specs = [get_backbone(ext["backbone"]) for ext in extractors]
        self.spec = max(self.specs, key=lambda sp: sp.input_size)
        self.classes = [shown(c) for c in bundle.head.classes_]  # any folder name as JSON text (featx.names)
        metrics = bundle.metrics or {}
        self.model = {"dataset": metrics.get("dataset"), "backbone": "+".join(e["backbone"] for e in extractors),
                      "head": metrics.get("head") or type(bundle.head).__name__,
                      "taps": list(dict.fromkeys(t for e in extractors for t in e["taps"])),
                      "accuracy": stated_accuracies(metrics)}
        flip = bundle.needs_flip()
        runners = []  # one engine per extractor
        for ext in extractors:
            config = ExtractorConfig(ext["backbone"], ext["taps"], ext["pooling"], ext["dtype"],
                                     extractor_weights(bundle, None, ext), **precision_of(ext))
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


# ---- the options ------------------------------------------------------------------------------

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")

#: What a refusal for load says: try again in a second (503s).
_RETRY_SOON = {"Retry-After": "1"}


@dataclass(frozen=True)
class ServeOptions:
    """The limits and answers of one server, as one value: they travel together from the CLI to the app.

    Attributes
    ----------
    top : int
        Classes returned per image (at most the model's classes, at least 1).
    max_bytes : int
        Largest request body, bytes (413 above).
    max_pixels, budget : int
        Declared pixels and decode memory (bytes) allowed per image (422 above).
    decode_slots : int
        Images decoded at once, over all requests.
    max_pending : int
        Requests to /predict in progress at once; more get 503.
    max_buffered : int
        Bytes of uploads held in memory at once, over all requests; more get 503.
    body_timeout, header_timeout : float
        Seconds for the whole body (408 after), and for a request's headers (the connection is dropped).
    cors : str, optional
        An origin (``https://example.org``) whose pages may POST here; others get 403.
    allowed_hosts : tuple of str, optional
        Host names the ``Host`` header may carry (any port); ``None``: no check.  :func:`serve` sets it
        from the address it binds (the loopback names when bound to loopback, else no check).
    """

    top: int = 5
    max_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = SERVE_MAX_PIXELS
    budget: int = SERVE_DECODE_BUDGET
    decode_slots: int = DECODE_SLOTS
    max_pending: int = MAX_PENDING
    max_buffered: int = MAX_BUFFERED
    body_timeout: float = BODY_TIMEOUT
    header_timeout: float = HEADER_TIMEOUT
    cors: str | None = None
    allowed_hosts: tuple | None = None

    def hosts(self) -> set | None:
        """The allowed host names lower-cased and without IPv6 brackets; ``None``: no check."""
        return None if self.allowed_hosts is None else {h.lower().strip("[]") for h in self.allowed_hosts}

    def cors_headers(self) -> dict:
        """Headers that let the ``cors`` origin read an answer (none without ``cors``)."""
        return {"Access-Control-Allow-Origin": self.cors, "Vary": "Origin"} if self.cors else {}


def loopback_hosts(host: str) -> tuple | None:
    """The ``Host`` names a server bound to ``host`` answers to: loopback names on loopback (DNS
    rebinding), else any (``None``)."""
    return _LOOPBACK if host in _LOOPBACK else None


# ---- answers ----------------------------------------------------------------------------------

class Refused(Exception):
    """A request the server declines: raised by a step of ``/predict``, answered as JSON ``{"error": ...}``.

    ``close``: the body may still be arriving, so the connection is not kept for another request.
    """

    def __init__(self, status: int, message: str, filename: str | None = None, close: bool = False,
                 headers: dict | None = None, errors: list | None = None):
        super().__init__(message)
        self.status, self.message, self.filename, self.close, self.headers = status, message, filename, close, headers
        self.errors = errors


def http_error_message(status: int, method: str, path: str, detail: str) -> str:
    """What a routing error (404, 405) says: which pages exist, what /predict takes."""
    if status == 404:
        return f"no such page: {path} (try /, /health or POST /predict)"
    if status == 405:
        return f"{method} is not allowed on {path}" + (
            " (send a POST with multipart/form-data, field 'file')" if path == "/predict" else "")
    return str(detail)


def model_info(predictor) -> dict:
    """The model's name and what it is made of, as ``/health`` and ``/predict`` report it."""
    return {"name": shown(predictor.name), **{k: shown(v) if isinstance(v, str) else v for k, v in
                                              predictor.model.items()}, "file": shown(predictor.path.name)}


def ranked(proba: np.ndarray, classes: list, names: list, top: int) -> list:
    """One result per image from ``(n, classes)`` probabilities: the predicted class and the ``top`` best."""
    results = []
    for name, row in zip(names, proba):
        order = np.argsort(-row)[:top]
        results.append({"filename": name, "predicted": classes[order[0]],
                        "top": [{"class": classes[i], "probability": float(row[i])} for i in order]})
    return results


# ---- the steps of /predict --------------------------------------------------------------------

def origin_refusal(headers, scheme: str, cors: str | None) -> str | None:
    """Why a POST may not use /predict (another site's page sending the visitor's browser here), or None.

    Same origin (``Origin`` is this server, or absent on a same-origin / direct request) and the
    ``cors`` origin pass; ``headers``: the request's (a mapping, lower-case names).
    """
    origin = headers.get("origin")
    site = headers.get("sec-fetch-site")
    if origin is None:
        return None if site in (None, "same-origin", "none") else f"a {site} request"
    own = f"{scheme}://{headers.get('host', '')}"
    if origin == own or (cors is not None and origin == cors):
        return None
    return f"origin {origin}"


def check_upload_request(request, options: ServeOptions) -> None:
    """Refuse (403, 413, 415) what the headers alone show: another origin, a declared size over the limit,
    not multipart.  Raises :class:`Refused`."""
    why = origin_refusal(request.headers, request.url.scheme, options.cors)
    if why:
        raise Refused(403, f"{why} may not use this server's /predict (same origin only; start featx serve "
                           "with --cors ORIGIN to allow one)", close=True)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > options.max_bytes:
        raise Refused(413, f"upload of {int(length):,} bytes exceeds the limit of {options.max_bytes:,}", close=True)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Refused(415, "send the image(s) as multipart/form-data, field 'file'", close=True)


class UploadLedger:
    """Requests to /predict in progress and upload bytes held, over all requests: the memory bound.

    Bytes are counted as they arrive, so slow clients holding a few bytes block nobody.
    """

    def __init__(self, max_pending: int, max_buffered: int):
        self.max_pending = max_pending
        self.max_buffered = max_buffered
        self.pending = 0
        self.buffered = 0

    @contextmanager
    def claim(self):
        """One request's share: raises :class:`Refused` (503) when ``max_pending`` are in progress; yields a
        :class:`Claim` whose bytes are given back, with the request's slot, when the block ends."""
        if self.pending >= self.max_pending:
            raise Refused(503, f"busy: {self.max_pending} uploads in progress; try again in a moment", close=True,
                          headers=_RETRY_SOON)
        self.pending += 1
        claim = Claim(self)
        try:
            yield claim
        finally:
            self.pending -= 1
            self.buffered -= claim.held


class Claim:
    """The upload bytes one request holds in an :class:`UploadLedger`."""

    def __init__(self, ledger: UploadLedger):
        self.ledger = ledger
        self.held = 0

    def hold(self, n: int) -> None:
        """Count ``n`` more bytes held; :class:`Refused` (503) when all requests together would pass the bound."""
        if self.ledger.buffered + n > self.ledger.max_buffered:
            raise Refused(503, "busy: too many uploads arriving at once; try again in a moment", close=True,
                          headers=_RETRY_SOON)
        self.ledger.buffered += n
        self.held += n


async def read_body(request, options: ServeOptions, claim: Claim) -> bytes:
    """The whole body within ``body_timeout`` (408), ``max_bytes`` (413) and the ledger's bound (503).

    Raises :class:`Refused`; starlette's ``ClientDisconnect`` when the client goes away.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.body_timeout
    body = bytearray()
    chunks = request.stream().__aiter__()
    while True:
        remaining = deadline - loop.time()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(chunks.__anext__(), remaining)
        except StopAsyncIteration:
            return bytes(body)
        except asyncio.TimeoutError:
            raise Refused(408, f"the upload did not arrive within {options.body_timeout:g} s", close=True) from None
        body += chunk
        if len(body) > options.max_bytes:
            raise Refused(413, f"upload exceeds the limit of {options.max_bytes:,} bytes", close=True)
        claim.hold(len(chunk))


async def parse_uploads(headers, holder: list, max_bytes: int) -> list:
    """The uploaded files of a multipart body, parsed in a worker thread (10 MB must not stall other clients).

    ``holder``: a one-item list holding the body; the parser takes it out, so no second copy stays
    while decoding.  Returns starlette ``UploadFile`` objects; :class:`Refused` (400) when malformed or empty.
    """
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def replay():
        yield holder.pop()
        yield b""

    def parse():
        return asyncio.run(MultiPartParser(headers, replay(), max_files=MAX_FILES, max_part_size=max_bytes).parse())

    try:
        form = await run_in_threadpool(parse)
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise Refused(413, f"too many files in one upload: at most {MAX_FILES}") from None
        raise Refused(400, f"malformed upload: {exc.message}") from None
    uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not uploads:
        raise Refused(400, "no file in the upload; use the field 'file'")
    return uploads


async def decode_uploads(uploads: list, predictor, options: ServeOptions, gate: asyncio.Semaphore):
    """Each upload decoded and shrunk to the network input: ``(images, names, errors)``, in upload order.

    A bad file never stops the others (featx's rule for runs): it lands in ``errors`` as
    ``{"filename", "status", "error"}`` with the status it would get alone (415: not an image by its
    first bytes, whatever the client says; 422: unreadable or over the limits).  At most the gate's
    slots decode at once, whatever the clients send; each upload's bytes are released as soon as it
    is decoded.  Names are echoed only, never used as paths.
    """
    from starlette.concurrency import run_in_threadpool

    from featx.images import FORMAT_NAMES, ImageError, looks_like_image

    images, names, errors = [], [], []
    for upload in uploads:
        name = Path(upload.filename or "upload").name[:200]  # echoed only, never a path
        data = await upload.read()
        await upload.close()
        try:
            if not looks_like_image(data):
                raise Refused(415, f"{name}: not an image ({FORMAT_NAMES} expected)", name)
            try:
                async with gate:
                    images.append(await run_in_threadpool(predictor.prepare, data, name, options.max_pixels,
                                                          options.budget))
            except ImageError as exc:
                raise Refused(422, str(exc), name) from None
            names.append(name)
        except Refused as bad:
            errors.append({"filename": name, "status": bad.status, "error": bad.message})
        finally:
            del data
    return images, names, errors


def batch_refusal(errors: list) -> Refused:
    """The answer when no file of an upload could be read: the first file's status and message, and
    every file's in ``errors`` (a single bad file reads as before: 415 or 422 naming it)."""
    first = errors[0]
    return Refused(first["status"], first["error"], first["filename"], errors=errors)


# ---- the routes -------------------------------------------------------------------------------

def _page() -> str:
    return resources.files("featx").joinpath("data/serve.html").read_text("utf-8")


def _csp(page: str) -> str:
    """A Content-Security-Policy that admits exactly the page's own inline script and style."""

    def hashes(tag):
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in found)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "img-src data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")


class Endpoints:
    """The handlers of ``/``, ``/health``, ``/predict`` and of errors, over one predictor and its options.

    Holds what requests share: the decode gate and the :class:`UploadLedger`.
    """

    def __init__(self, predictor, options: ServeOptions):
        self.predictor = predictor
        self.options = options
        self.top = max(1, min(options.top, len(predictor.classes)))
        self.page_html = _page()
        self.csp = _csp(self.page_html)
        self.cors_headers = options.cors_headers()
        self.decode_gate = asyncio.Semaphore(max(1, options.decode_slots))
        self.ledger = UploadLedger(options.max_pending, options.max_buffered)
        self.idle_trim = IdleTrim(self.ledger)

    def error(self, status: int, message: str, filename=None, close: bool = False, headers=None):
        return error_response(status, message, self.cors_headers, filename, close, headers)

    def refusal(self, refused: Refused):
        return error_response(refused.status, refused.message, self.cors_headers, refused.filename, refused.close,
                              refused.headers, refused.errors)

    async def page(self, request):
        from starlette.responses import HTMLResponse

        return HTMLResponse(self.page_html,
                            headers={"Content-Security-Policy": self.csp, "Referrer-Policy": "no-referrer"})

    async def health(self, request):
        from starlette.responses import JSONResponse

        p, o = self.predictor, self.options
        return JSONResponse({"status": "ok", "model": model_info(p), "bundle": shown(p.path.name), "backbone": p.backbone,
                             "classes": p.classes,
                             "limits": {"max_upload_bytes": o.max_bytes, "max_files": MAX_FILES,
                                        "max_pixels": o.max_pixels, "decode_budget_bytes": o.budget}})

    async def preflight(self, request):
        from starlette.responses import Response

        cors = self.options.cors
        if not cors or request.headers.get("origin") != cors:
            return self.error(403, "cross-origin requests are not allowed here (start featx serve with --cors ORIGIN)")
        return Response(status_code=204, headers={**self.cors_headers, "Access-Control-Allow-Methods": "POST",
                                                  "Access-Control-Allow-Headers": "content-type",
                                                  "Access-Control-Max-Age": "600"})

    async def predict(self, request):
        """``POST /predict``: the header checks, then the upload within the shared bounds, then the answer."""
        from starlette.requests import ClientDisconnect
        from starlette.responses import Response

        start = time.perf_counter()
        try:
            check_upload_request(request, self.options)
            with self.ledger.claim() as claim:
                return await self.classify(request, start, claim)
        except Refused as refused:
            return self.refusal(refused)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening; nothing to log
        finally:
            self.idle_trim.request_done()

    async def classify(self, request, start: float, claim: Claim):
        """Read, parse, decode and classify one request's images: the JSON answer (raises :class:`Refused`)."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        uploads = await parse_uploads(request.headers, [await read_body(request, self.options, claim)],
                                      self.options.max_bytes)
        images, names, errors = await decode_uploads(uploads, self.predictor, self.options, self.decode_gate)
        del uploads
        if not images:
            raise batch_refusal(errors)
        decoded = time.perf_counter()
        proba = await run_in_threadpool(self.predictor.predict_prepared, images)
        done = time.perf_counter()
        p = self.predictor
        return JSONResponse({
            "model": model_info(p), "bundle": shown(p.path.name), "backbone": p.backbone,
            "results": ranked(proba, p.classes, names, self.top), "errors": errors,
            "timing_ms": {"decode": round((decoded - start) * 1000, 1), "model": round((done - decoded) * 1000, 1),
                          "total": round((done - start) * 1000, 1)},
        }, headers=self.cors_headers)

    async def http_error(self, request, exc):
        message = http_error_message(exc.status_code, request.method, request.url.path, exc.detail)
        return self.error(exc.status_code, message, headers=getattr(exc, "headers", None))

    async def server_error(self, request, exc: Exception):
        return self.error(500, f"internal error ({type(exc).__name__}); the server keeps running")


def host_refusal(headers: dict, hosts: set | None) -> str | None:
    """Why a request's ``Host`` is not one this server answers to (DNS rebinding), or None.

    ``headers``: the ASGI scope's raw headers as a dict of bytes; ``hosts``: :meth:`ServeOptions.hosts`.
    """
    if hosts is None:
        return None
    host = headers.get(b"host", b"").decode("latin-1").lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if name.strip("[]") in hosts:
        return None
    return f"this server answers to {', '.join(sorted(hosts))}, not {host or 'no host'}"


class GuardedApp:
    """The ASGI app served: the Host check (421), then the Starlette app behind :class:`BodyDeadline`
    (every route, every method), ``nosniff`` on every response."""

    def __init__(self, starlette, hosts: set | None, cors_headers: dict, body_timeout: float = BODY_TIMEOUT):
        self.starlette = starlette
        self.hosts = hosts
        self.cors_headers = cors_headers
        self.body_timeout = body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.starlette(scope, receive, send)
        deadline = BodyDeadline(receive, send, scope, self.body_timeout, self.cors_headers)
        why = host_refusal(dict(scope["headers"]), self.hosts)
        if why:
            return await error_response(421, why, self.cors_headers, close=True)(scope, deadline.receive,
                                                                                  deadline.send)
        await self.starlette(scope, deadline.receive, deadline.send)


def build_app(predictor: Predictor, options: ServeOptions) -> GuardedApp:
    """The ASGI app for ``predictor`` under ``options``: :class:`Endpoints` routed, behind :class:`GuardedApp`."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    e = Endpoints(predictor, options)
    app = Starlette(
        routes=[Route("/", e.page), Route("/health", e.health), Route("/predict", e.predict, methods=["POST"]),
                Route("/predict", e.preflight, methods=["OPTIONS"])],
        exception_handlers={HTTPException: e.http_error, Exception: e.server_error},
    )
    return GuardedApp(app, options.hosts(), e.cors_headers, options.body_timeout)


def create_app(predictor: Predictor, top: int = 5, max_bytes: int = MAX_UPLOAD_BYTES, *,
               max_pixels: int = SERVE_MAX_PIXELS, budget: int = SERVE_DECODE_BUDGET,
               decode_slots: int = DECODE_SLOTS, max_pending: int = MAX_PENDING, max_buffered: int = MAX_BUFFERED,
               body_timeout: float = BODY_TIMEOUT, cors: str | None = None, allowed_hosts=None):
    """The ASGI app: ``/`` (page), ``/health`` and ``POST /predict`` (JSON).

    The keywords are :class:`ServeOptions`' fields (``allowed_hosts``: any iterable of str, or None);
    :func:`build_app` takes the value itself.  The app has a ``starlette`` attribute: the routed app inside.
    """
    options = ServeOptions(top=top, max_bytes=max_bytes, max_pixels=max_pixels, budget=budget,
                           decode_slots=decode_slots, max_pending=max_pending, max_buffered=max_buffered,
                           body_timeout=body_timeout, cors=cors,
                           allowed_hosts=None if allowed_hosts is None else tuple(allowed_hosts))
    return build_app(predictor, options)


def serve(bundle, host: str = "127.0.0.1", port: int = 8000, *, options: ServeOptions | None = None,
          trust: bool = False, engine: str = "auto", cache_dir=None, **limits) -> None:
    """Bind ``host:port`` first (a taken port is a one-line error), then load the model and serve.

    Parameters
    ----------
    bundle : str or Path
        ``model.featx`` from fit-head, or ``model.keras`` from finetune.
    host, port
        The address to listen on (127.0.0.1: this machine only).
    options : ServeOptions, optional
        The server's limits; its ``allowed_hosts`` is replaced by :func:`loopback_hosts` of ``host``.
    trust, engine, cache_dir
        As :class:`Predictor` takes them.
    **limits
        :class:`ServeOptions` fields by name (``top=3, max_bytes=...``), over ``options``.

    Raises
    ------
    FeatxError
        The serve extra is missing, the address cannot be bound, or the model cannot be loaded.
    TypeError
        A keyword that is no :class:`ServeOptions` field.
    """
    try:
        import uvicorn
    except ImportError:
        raise FeatxError("featx serve needs its extra: pip install 'featx[serve]'") from None
    options = replace(options or ServeOptions(), **limits, allowed_hosts=loopback_hosts(host))
    began = time.perf_counter()
    sock = bind(host, port)
    tune_allocator()  # before the model's and the server's threads allocate
    try:
        predictor = Predictor(bundle, trust=trust, engine=engine, cache_dir=cache_dir)
        server = uvicorn.Server(server_config(build_app(predictor, options), host, port, options.header_timeout,
                                              body_timeout=options.body_timeout))
        # the socket is bound and listening: connections made from now on are answered
        print(f"featx: ready in {time.perf_counter() - began:.1f} s: serving {predictor.name} "
              f"({len(predictor.classes)} classes, {predictor.engine} engine) on http://{host}:{port}/", flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
