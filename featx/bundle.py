"""A trained head saved as one file with everything needed to use it again.

A bundle holds the fitted head, the extractor configuration (backbone,
weights, taps, pooling, dtype), the class names, the split id and the
metrics.  It is a joblib pickle, and unpickling can run code, so featx signs
every bundle it writes with an HMAC-SHA256 under a key private to this user
(``$FEATX_HOME/bundle.key``, default ``~/.featx``) and refuses to unpickle a
bundle whose signature does not match: one written elsewhere, or modified.
Load such a bundle only if you trust where it came from, with ``trust=True``
(``--trust-bundle`` on the command line).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import joblib

from featx import __version__
from featx.errors import FeatxError

MAGIC = b"FEATX-BUNDLE-1\n"


VIEWS = ("clean", "flip")


@dataclass(repr=False)
class Bundle:
    """A fitted head and the extractors whose codes it reads.

    ``extractor`` is the first (often only) extractor; ``extractors`` lists
    them all when the head reads several backbones (fusion).  ``layout`` is
    the head's design matrix, block by block: ``{"extractor": i, "tap": t,
    "view": "clean"|"flip"}`` in column order (``None``: the first
    extractor's taps, clean view).  :meth:`design` builds that matrix from
    codes, so ``predict`` and ``serve`` feed the head the same columns.
    """

    head: object
    extractor: dict  # backbone, weights (as given), weights_id, taps, pooling, dtype
    class_names: list
    split_id: str | None = None
    metrics: dict = field(default_factory=dict)
    kind: str = "head"  # "head" on cached codes; "finetuned" for an end-to-end Keras model
    featx_version: str = __version__
    extractors: list | None = None  # every extractor, in order (None: [extractor])
    layout: list | None = None  # blocks of the design matrix (None: extractor's taps, clean view)

    def __repr__(self) -> str:
        names = "+".join(f"{e.get('backbone')}/{','.join(e.get('taps') or [])}" for e in self.all_extractors())
        return (f"Bundle({self.kind}: {type(self.head).__name__} on {names}, {len(self.class_names)} classes, "
                f"split_id={self.split_id!r})")

    def all_extractors(self) -> list:
        """Every extractor, in order; ``extractor`` is always the first."""
        return [self.extractor] + list(getattr(self, "extractors", None) or [])[1:]

    def blocks(self) -> list:
        layout = getattr(self, "layout", None)
        return list(layout or [{"extractor": 0, "tap": t, "view": "clean"} for t in self.extractor["taps"]])

    def needs_flip(self) -> bool:
        """True when the head itself reads the mirrored images' codes (trained with flip TTA)."""
        return any(b["view"] == "flip" for b in self.blocks())

    def design(self, codes: list, swap_views: bool = False):
        """The head's input matrix from per-extractor codes.

        Parameters
        ----------
        codes : list of dict
            One per extractor (order of :meth:`all_extractors`): ``{"clean": {tap: (n, d) array},
            "flip": {tap: (n, d) array} or None}``.
        swap_views : bool
            Read each block from the other view (clean <-> flip): the design of the mirrored images,
            for flip test-time augmentation of a head that was not trained with it.

        Returns
        -------
        ndarray of shape (n, sum of block widths), float32

        Raises
        ------
        FeatxError
            When a block's view or tap is missing from ``codes``.
        """
        import numpy as np

        parts = []
        for b in self.blocks():
            view = b["view"]
            if swap_views:
                view = "flip" if view == "clean" else "clean"
            got = (codes[b["extractor"]].get(view) or {}).get(b["tap"])
            if got is None:
                raise FeatxError(f"the bundle's head reads {view} codes of tap {b['tap']} from extractor "
                                 f"{b['extractor']}, which were not computed")
            parts.append(np.asarray(got, dtype=np.float32))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def predict_proba(self, X):
        return self.head.predict_proba(X)


def _key() -> bytes:
    home = Path(os.environ.get("FEATX_HOME", Path.home() / ".featx"))
    path = home / "bundle.key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def sign_payload(payload: bytes) -> str:
    """HMAC-SHA256 of ``payload`` under this user's key, hex: what featx signs its bundles and models with."""
    return hmac.new(_key(), payload, hashlib.sha256).hexdigest()


def signature_matches(payload: bytes, signature: str) -> bool:
    """True when ``signature`` (hex) is :func:`sign_payload` of ``payload`` (compared in constant time)."""
    return hmac.compare_digest(sign_payload(payload).encode(), str(signature).encode())


def save_bundle(bundle: Bundle, path: str | Path) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    joblib.dump(bundle, buf, compress=3)
    payload = buf.getvalue()
    signature = sign_payload(payload).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(MAGIC + signature + b"\n" + payload)
    os.replace(tmp, path)
    return path


def load_bundle(path: str | Path, trust: bool = False) -> Bundle:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FeatxError(f"{path}: cannot read the bundle ({exc.strerror or exc})") from None
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 65:
        raise FeatxError(f"{path}: not a featx bundle (write one with 'featx fit-head')")
    signature, payload = data[len(MAGIC) : len(MAGIC) + 64], data[len(MAGIC) + 65 :]
    if not signature_matches(payload, signature.decode("latin-1")) and not trust:
        raise FeatxError(
            f"{path}: this bundle was not written by featx for this user, or was modified since; "
            "bundles are pickles that can run code, so featx refuses it. If you trust its origin, "
            "pass --trust-bundle"
        )
    try:
        bundle = joblib.load(io.BytesIO(payload))
    except Exception as exc:  # noqa: BLE001
        raise FeatxError(f"{path}: bundle cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(bundle, Bundle):
        raise FeatxError(f"{path}: not a featx bundle")
    return bundle
