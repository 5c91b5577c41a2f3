"""``featx serve``: a web page and a JSON API that classify uploaded images with a bundle.

The model is loaded once at start; requests are decoded in Starlette's thread pool and the
forward pass is serialised by a lock (one network, two cores: queueing is the honest schedule).
Uploads are untrusted: the body size is capped (413), the bytes must be an image (415) that
decodes (422) within the pixel limit (422), and file names are only echoed back, never used as
paths.  Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np

from featx.errors import FeatxError

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_FILES = 16


class Predictor:
    """Bundle (or fine-tuned model) -> class probabilities for decoded RGB images."""

    def __init__(self, bundle_path, trust: bool = False, engine: str = "keras", cache_dir=None):
        from featx.backbones.registry import get_backbone
        from featx.bundle import load_bundle
        from featx.cache import default_cache_dir
        from featx.extract import extractor_config
        from featx.fit import extractor_weights
        from featx.inference import make_engine

        self.path = Path(bundle_path)
        self.lock = threading.Lock()
        if self.path.suffix == ".keras":
            import json

            from featx import _tf

            meta = json.loads(self.path.with_name("featx.json").read_text())
            self.spec = get_backbone(meta["backbone"])
            self.classes = list(meta["class_names"])
            model = _tf.keras().models.load_model(self.path)
            self._proba = lambda batch: np.asarray(model.predict_on_batch(batch), dtype=np.float64)
            return
        bundle = load_bundle(self.path, trust=trust)
        from featx.fit import bundle_proba

        extractors = bundle.all_extractors()
        specs = [get_backbone(ext["backbone"]) for ext in extractors]
        self.spec = max(specs, key=lambda sp: sp.input_size)  # decode at the largest input any extractor needs
        self.backbones = [sp.name for sp in specs]
        self.classes = [str(c) for c in bundle.head.classes_]
        flip = bundle.needs_flip()
        runners = []
        for ext, spec in zip(extractors, specs):
            weights = extractor_weights(bundle, None, ext)
            taps = ext["taps"]
            runners.append((spec, taps, make_engine(
                spec, taps, lambda spec=spec, taps=taps, ext=ext, weights=weights: spec.feature_model(
                    taps, ext["pooling"], weights),
                extractor_config(ext["backbone"], ext["pooling"], ext["dtype"], weights), 1, engine,
                cache_dir or default_cache_dir())))
        self.engine = runners[0][2].name

        def codes_of(spec, taps, runner, resized):
            out = [runner.run(spec.normalize(resized[i : i + 1])) for i in range(len(resized))]
            return {t: np.concatenate([o[t] for o in out]) for t in taps}

        def proba(images):
            codes = []
            for spec, taps, runner in runners:
                resized = np.stack([spec.resize(im) for im in images])
                codes.append({"clean": codes_of(spec, taps, runner, resized),
                              "flip": codes_of(spec, taps, runner, np.ascontiguousarray(resized[:, :, ::-1]))
                              if flip else None})
            return bundle_proba(bundle, codes)

        self._images_proba = proba

    @property
    def backbone(self) -> str:
        return "+".join(getattr(self, "backbones", None) or [self.spec.name])

    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities, (n, classes) float64, for decoded RGB images (every extractor of the bundle)."""
        if hasattr(self, "_images_proba"):
            with self.lock:
                return self._images_proba(images)
        batch = self.spec.normalize(np.stack([self.spec.resize(im) for im in images]))
        with self.lock:
            return self._proba(batch)


def _page() -> str:
    return resources.files("featx").joinpath("data/serve.html").read_text("utf-8")


def create_app(predictor: Predictor, top: int = 5, max_bytes: int = MAX_UPLOAD_BYTES):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    from featx.images import ImageError, decode

    top = max(1, min(top, len(predictor.classes)))

    def error(status: int, message: str, filename=None):
        body = {"error": message}
        if filename is not None:
            body["filename"] = filename
        return JSONResponse(body, status_code=status)

    async def page(request: Request):
        return HTMLResponse(_page())

    async def health(request: Request):
        return JSONResponse({"status": "ok", "bundle": predictor.path.name, "backbone": predictor.backbone,
                             "classes": predictor.classes})

    async def predict(request: Request):
        start = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            return error(413, f"upload of {int(length):,} bytes exceeds the limit of {max_bytes:,}")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(415, "send the image(s) as multipart/form-data, field 'file'")
        body = bytearray()
        async for chunk in request.stream():  # counted as it arrives: no length header needed
            body += chunk
            if len(body) > max_bytes:
                return error(413, f"upload exceeds the limit of {max_bytes:,} bytes")
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def replay():
            yield bytes(body)
            yield b""

        try:
            form = await MultiPartParser(request.headers, replay(), max_files=MAX_FILES,
                                         max_part_size=max_bytes).parse()
        except MultiPartException as exc:
            return error(400, f"malformed upload: {exc.message}")
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            return error(400, "no file in the upload; use the field 'file'")
        images, names = [], []
        for upload in uploads:
            name = Path(upload.filename or "upload").name[:200]  # echoed only, never a path
            data = await upload.read()
            if not _looks_like_image(data):
                return error(415, f"{name}: not an image (JPEG, PNG, BMP, WebP or TIFF expected)", name)
            try:
                images.append(await run_in_threadpool(decode, data, name, predictor.spec.input_size))
            except ImageError as exc:
                return error(422, str(exc), name)
            names.append(name)
        decoded = time.perf_counter()
        proba = await run_in_threadpool(predictor.predict, images)
        done = time.perf_counter()
        results = []
        for name, row in zip(names, proba):
            order = np.argsort(-row)[:top]
            results.append({"filename": name, "predicted": predictor.classes[order[0]],
                            "top": [{"class": predictor.classes[i], "probability": float(row[i])} for i in order]})
        return JSONResponse({
            "bundle": predictor.path.name, "backbone": predictor.backbone, "results": results,
            "timing_ms": {"decode": round((decoded - start) * 1000, 1), "model": round((done - decoded) * 1000, 1),
                          "total": round((done - start) * 1000, 1)},
        })

    return Starlette(routes=[Route("/", page), Route("/health", health), Route("/predict", predict, methods=["POST"])])


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*")


def _looks_like_image(data: bytes) -> bool:
    """By its first bytes: one of the formats featx decodes (not the client's content type)."""
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def serve(bundle, host: str = "127.0.0.1", port: int = 8000, top: int = 5, max_bytes: int = MAX_UPLOAD_BYTES,
          trust: bool = False, engine: str = "auto", cache_dir=None) -> None:
    try:
        import uvicorn
    except ImportError:
        raise FeatxError("featx serve needs its extra: pip install 'featx[serve]'") from None
    predictor = Predictor(bundle, trust=trust, engine=engine, cache_dir=cache_dir)
    print(f"serving {predictor.path.name} ({predictor.backbone}, {len(predictor.classes)} classes) "
          f"on http://{host}:{port}/")
    uvicorn.run(create_app(predictor, top, max_bytes), host=host, port=port, log_level="warning")
