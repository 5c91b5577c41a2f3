"""Names and numbers of the on-disk format: versions, key type, folder names, block sizes, content keys.

Every other module of :mod:`featx.cache` reads its constants here, so the format is stated once
(:mod:`featx.cache` documents what the names mean).  ``COPY_BYTES`` is read at call time
(``layout.COPY_BYTES``) by the modules that stream codes, so one assignment (a test's monkeypatch)
changes the block size of migration, compaction and verification together.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 2  # MANIFEST.json "format" and every segment's "format" attribute
LEGACY_FORMAT = 1  # the single <name>.h5 file of older versions
KEY_DTYPE = "S32"  # a content key: 32 ASCII hex characters, stored as fixed-size bytes
MANIFEST = "MANIFEST.json"
RECORD = "RECORD.json"  # every segment name featx wrote, and when a manifest stopped naming it
DATASETS = ("keys", "codes", "sorted_keys", "sorted_rows", "bloom", "codes_crc")  # per tap of a segment
INDEX_DATASETS = ("keys", "sorted_keys", "sorted_rows", "bloom", "codes_crc")  # covered by a tap's "index_crc"
COPY_BYTES = 32 << 20  # compaction / migration / verification move at most this much of codes at once
GRACE_SECONDS = 3600.0  # a segment no manifest names any more is deleted this long after (FEATX_CACHE_GRACE)


def grace_seconds() -> float:
    """How long a segment the manifest stopped naming stays on disk: ``$FEATX_CACHE_GRACE`` seconds,
    else ``GRACE_SECONDS`` (one hour) -- the time a plain h5py reader holding an old ``view.h5``
    open keeps reading the rows it saw.  A value that is not a number >= 0 is ignored."""
    try:
        value = float(os.environ.get("FEATX_CACHE_GRACE", GRACE_SECONDS))
    except ValueError:
        return GRACE_SECONDS
    return value if value >= 0 else GRACE_SECONDS


def row_checksums(codes: np.ndarray) -> np.ndarray:
    """CRC-32 (zlib) of each row's bytes as stored: (N,) uint32.

    A row is checked alone when it is read, so a read of k rows costs k checksums of one row
    (about 1 microsecond for 1280 float16 numbers), whatever the segment's size.
    """
    codes = np.ascontiguousarray(codes)
    n = codes.shape[0]
    if n == 0:
        return np.zeros(0, np.uint32)
    return np.fromiter((zlib.crc32(r) for r in codes.reshape(n, -1).view(np.uint8)), np.uint32, n)


def chained_crc(arrays) -> int:
    """CRC-32 of the arrays' bytes one after another (a segment tap's index datasets)."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"), crc)
    return crc


def content_key(data: bytes) -> str:
    """The cache key of an image: a hash of its file bytes, not its path.

    Returns
    -------
    str
        32 lowercase hex characters (BLAKE2b, 16-byte digest).
    """
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def config_hash(config: dict) -> str:
    """12 hex characters of SHA-256 over the configuration's sorted-keys JSON (the folder name's suffix)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """``$FEATX_CACHE``, else ``cache`` in the working directory."""
    return Path(os.environ.get("FEATX_CACHE", "cache"))


def cache_path(cache_dir: str | Path, config: dict) -> Path:
    """The folder of one extractor configuration inside ``cache_dir``:
    ``<backbone>-<pooling>-<dtype>-<config_hash>``."""
    name = f"{config['backbone']}-{config['pooling']}-{config['dtype']}-{config_hash(config)}"
    return Path(cache_dir) / name


@dataclass
class TapRows:
    """Rows of one tap on their way into the cache."""

    keys: np.ndarray  # (N,) S32
    codes: np.ndarray  # (N, D)


def as_keys(keys) -> np.ndarray:
    """``keys`` (str or bytes, any iterable) as a flat (N,) ``S32`` array."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind == "S":
        return keys.astype(KEY_DTYPE, copy=False).reshape(-1)
    try:
        return np.asarray(keys, dtype=KEY_DTYPE).reshape(-1)  # str keys are ASCII hex
    except (UnicodeEncodeError, TypeError, ValueError):
        return np.asarray([k.encode() if isinstance(k, str) else k for k in keys], dtype=KEY_DTYPE).reshape(-1)


def first_unique(keys: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each key, in row order ((n,) int64)."""
    if keys.size == 0:
        return np.zeros(0, np.int64)
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def manifest_rows(m: dict) -> dict:
    """{tap: committed rows} summed over the segments a manifest names."""
    out: dict[str, int] = {}
    for s in m["segments"]:
        for t, info in s["taps"].items():
            out[t] = out.get(t, 0) + info["rows"]
    return out
