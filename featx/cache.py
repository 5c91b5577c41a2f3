"""The HDF5 feature cache: CNN codes keyed by image content, one file per extractor.

Layout of ``<cache dir>/<backbone>-<pooling>-<dtype>-<hash>.h5``::

    attrs: config (JSON: everything that changes the numbers), provenance (JSON)
    taps/<tap>/keys   (N,)   S32    content hash of each image file
    taps/<tap>/codes  (N, D) float  one row per key

Crash safety: the ``.h5`` file is never modified in place.  A running
extraction appends finished rows to a journal folder next to it
(``<file>.journal/part-*.npz``, each written to a temporary name and renamed,
so a part is either whole or absent); :meth:`FeatureCache.commit` then writes
old rows plus journal into a new file and atomically replaces the old one.  A
process killed at any moment leaves a readable cache and complete journal
parts, which the next run folds in.  An exclusive ``flock`` on
``<file>.lock`` keeps a second writer out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featx.errors import FeatxError

FORMAT_VERSION = 1
KEY_DTYPE = "S32"
DTYPES = ("float32", "float16")


def content_key(data: bytes) -> str:
    """The cache key of an image: a hash of its file bytes, not its path."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEATX_CACHE", "cache"))


def cache_path(cache_dir: str | Path, config: dict) -> Path:
    name = f"{config['backbone']}-{config['pooling']}-{config['dtype']}-{config_hash(config)}.h5"
    return Path(cache_dir) / name


class CacheLockedError(FeatxError):
    pass


@dataclass
class TapRows:
    keys: np.ndarray  # (N,) S32
    codes: np.ndarray  # (N, D)


class FeatureCache:
    """One extractor configuration's rows: committed file plus journal."""

    def __init__(self, path: str | Path, config: dict | None = None):
        self.path = Path(path)
        self.config = config
        self.journal = self.path.with_name(self.path.name + ".journal")
        self._lock_fd: int | None = None
        self._part_no = 0

    # ---- locking ----------------------------------------------------------------
    def lock(self) -> "FeatureCache":
        """Take the writer's lock; a second writer gets a clear error."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CacheLockedError(
                    f"{self.path}: another featx process is writing this cache; wait for it to finish "
                    "or use another --cache folder"
                ) from None
            raise
        self._lock_fd = fd
        return self

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self.lock()

    def __exit__(self, *exc):
        self.unlock()

    # ---- reading ----------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.exists() or any(self._parts())

    def _parts(self) -> list[Path]:
        return sorted(self.journal.glob("part-*.npz")) if self.journal.is_dir() else []

    def read_config(self) -> dict | None:
        if not self.path.exists():
            return None
        with self._open() as f:
            return json.loads(f.attrs["config"])

    def _open(self):
        try:
            return h5py.File(self.path, "r")
        except OSError as exc:
            raise FeatxError(f"{self.path}: cannot open the cache file ({exc}); run 'featx cache verify'") from None

    def taps(self) -> list[str]:
        names = set()
        if self.path.exists():
            with self._open() as f:
                names |= set(f["taps"].keys())
        for part in self._parts():
            with np.load(part) as z:
                names |= {k[len("keys__"):] for k in z.files if k.startswith("keys__")}
        return sorted(names)

    def keys(self, tap: str) -> set[str]:
        """Every key that has a row for ``tap`` (committed or journalled)."""
        found: set[str] = set()
        if self.path.exists():
            with self._open() as f:
                if tap in f["taps"]:
                    found |= {k.decode() for k in f["taps"][tap]["keys"][:]}
        for part in self._parts():
            with np.load(part) as z:
                if f"keys__{tap}" in z.files:
                    found |= {k.decode() for k in z[f"keys__{tap}"]}
        return found

    def read(self, tap: str, keys: list[str]) -> np.ndarray:
        """Rows of ``tap`` for ``keys``, in that order, as float32."""
        with contextlib.ExitStack() as stack:
            blocks = []  # (keys, codes): the committed file first, then journal parts
            if self.path.exists():
                f = stack.enter_context(self._open())
                if tap in f["taps"]:
                    blocks.append((f["taps"][tap]["keys"][:], f["taps"][tap]["codes"]))
            for part in self._parts():
                z = stack.enter_context(np.load(part))
                if f"keys__{tap}" in z.files:
                    blocks.append((z[f"keys__{tap}"], z[f"codes__{tap}"]))
            index: dict[bytes, tuple[int, int]] = {}
            for b, (block_keys, _) in enumerate(blocks):
                for i, k in enumerate(block_keys.tolist()):
                    index.setdefault(k, (b, i))
            try:
                wanted = np.array([index[k.encode()] for k in keys], dtype=np.int64).reshape(-1, 2)
            except KeyError as exc:
                raise FeatxError(
                    f"{self.path}: no {tap} codes for image {exc.args[0].decode()!r}; run featx extract"
                ) from None
            out = np.empty((len(keys), blocks[0][1].shape[1] if blocks else 0), dtype=np.float32)
            for b, (_, codes) in enumerate(blocks):
                dest = np.flatnonzero(wanted[:, 0] == b)
                if dest.size == 0:
                    continue
                uniq, inverse = np.unique(wanted[dest, 1], return_inverse=True)
                if isinstance(codes, h5py.Dataset) and uniq.size < codes.shape[0] // 4:
                    data = codes[uniq]  # sparse: h5py fancy-reads increasing rows
                else:
                    data = np.asarray(codes[:])[uniq]
                out[dest] = data[inverse]
            return out

    # ---- writing ----------------------------------------------------------------
    def append(self, rows: dict[str, TapRows]) -> Path:
        """Write finished rows as one journal part, atomically (whole or absent)."""
        self.journal.mkdir(parents=True, exist_ok=True)
        self._part_no += 1
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{self._part_no:06d}.npz"
        tmp = self.journal / f".tmp-{uuid.uuid4().hex}.npz"
        arrays = {}
        for tap, r in rows.items():
            arrays[f"keys__{tap}"] = np.asarray(r.keys, dtype=KEY_DTYPE)
            arrays[f"codes__{tap}"] = r.codes
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        final = self.journal / name
        os.replace(tmp, final)
        return final

    def commit(self, provenance: dict | None = None, failures: list | None = None) -> None:
        """Fold journal parts into a new ``.h5`` file and swap it in atomically."""
        if self.config is None:
            raise ValueError("commit needs the configuration")
        parts = self._parts()
        for stale in self.journal.glob(".tmp-*") if self.journal.is_dir() else []:
            stale.unlink(missing_ok=True)  # a part that was never finished
        if not parts and self.path.exists() and failures is None:
            self._drop_empty_journal()
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        dtype = np.dtype(self.config["dtype"])
        old = h5py.File(self.path, "r") if self.path.exists() else None
        try:
            part_data = []
            for p in parts:
                with np.load(p) as z:
                    part_data.append({k: z[k] for k in z.files})
            tap_names = set(old["taps"].keys()) if old is not None else set()
            for d in part_data:
                tap_names |= {k[len("keys__"):] for k in d if k.startswith("keys__")}
            with h5py.File(tmp, "w") as new:
                new.attrs["format"] = FORMAT_VERSION
                new.attrs["config"] = json.dumps(self.config, sort_keys=True)
                prov = json.loads(old.attrs.get("provenance", "{}")) if old is not None else {}
                prov.update(provenance or {})
                prov.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                prov["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                new.attrs["provenance"] = json.dumps(prov, sort_keys=True)
                fail = failures if failures is not None else (
                    json.loads(old["failures"][()]) if old is not None and "failures" in old else [])
                new.create_dataset("failures", data=json.dumps(fail))
                taps = new.create_group("taps")
                for tap in sorted(tap_names):
                    self._write_tap(taps, tap, old, part_data, dtype)
                new.flush()
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        finally:
            if old is not None:
                old.close()
        os.replace(tmp, self.path)
        for p in parts:
            p.unlink(missing_ok=True)
        self._drop_empty_journal()

    def _drop_empty_journal(self) -> None:
        """Remove the journal folder once nothing is left in it (the ``.lock`` file stays: removing
        an ``flock`` file would break the mutual exclusion it provides)."""
        try:
            self.journal.rmdir()
        except OSError:  # absent, or not empty (another writer's parts)
            pass

    @staticmethod
    def _write_tap(taps, tap, old, part_data, dtype):
        old_keys = old["taps"][tap]["keys"][:] if old is not None and tap in old["taps"] else np.zeros(0, KEY_DTYPE)
        seen = set(old_keys.tolist())
        new_keys, new_codes = [], []
        for d in part_data:
            if f"keys__{tap}" not in d:
                continue
            keys, codes = d[f"keys__{tap}"], d[f"codes__{tap}"]
            keep = [i for i, k in enumerate(keys.tolist()) if k not in seen]
            seen.update(keys[keep].tolist())
            new_keys.append(keys[keep])
            new_codes.append(codes[keep])
        dim = (old["taps"][tap]["codes"].shape[1] if old_keys.size else
               next(c.shape[1] for c in new_codes))
        total = old_keys.size + sum(k.size for k in new_keys)
        g = taps.create_group(tap)
        chunk_rows = max(1, min(1024, (1 << 20) // (dim * dtype.itemsize)))
        g.create_dataset("keys", shape=(total,), maxshape=(None,), dtype=KEY_DTYPE, chunks=(4096,))
        codes = g.create_dataset("codes", shape=(total, dim), maxshape=(None, dim), dtype=dtype,
                                 chunks=(chunk_rows, dim))
        g["keys"][: old_keys.size] = old_keys
        step = 8192
        for start in range(0, old_keys.size, step):  # stream: memory stays flat
            end = min(start + step, old_keys.size)
            codes[start:end] = old["taps"][tap]["codes"][start:end]
        at = old_keys.size
        for k, c in zip(new_keys, new_codes):
            g["keys"][at : at + k.size] = k
            codes[at : at + k.size] = c.astype(dtype, copy=False)
            at += k.size

    # ---- inspection ---------------------------------------------------------------
    def info(self) -> dict:
        out = {"file": str(self.path), "size_bytes": self.path.stat().st_size if self.path.exists() else 0,
               "pending_parts": len(self._parts()), "taps": {}}
        if self.path.exists():
            with self._open() as f:
                out["config"] = json.loads(f.attrs["config"])
                out["provenance"] = json.loads(f.attrs.get("provenance", "{}"))
                out["failures"] = json.loads(f["failures"][()]) if "failures" in f else []
                for tap, g in f["taps"].items():
                    out["taps"][tap] = {"rows": int(g["keys"].shape[0]), "dim": int(g["codes"].shape[1]),
                                        "dtype": str(g["codes"].dtype)}
        return out

    def verify(self) -> list[str]:
        """Problems found (empty when the cache is sound)."""
        problems = []
        try:
            with h5py.File(self.path, "r") as f:
                config = json.loads(f.attrs["config"])
                if cache_path(self.path.parent, config).name != self.path.name:
                    problems.append("file name does not match its configuration hash")
                for tap, g in f["taps"].items():
                    keys, codes = g["keys"], g["codes"]
                    if keys.shape[0] != codes.shape[0]:
                        problems.append(f"tap {tap}: {keys.shape[0]} keys but {codes.shape[0]} rows")
                    k = keys[:]
                    if len(set(k.tolist())) != k.size:
                        problems.append(f"tap {tap}: duplicate keys")
                    if any(len(x) != 32 for x in k.tolist()):
                        problems.append(f"tap {tap}: malformed keys")
                    for start in range(0, codes.shape[0], 8192):
                        if not np.isfinite(codes[start : start + 8192]).all():
                            problems.append(f"tap {tap}: non-finite values near row {start}")
                            break
        except (OSError, KeyError, ValueError) as exc:
            problems.append(f"cannot read: {exc}")
        for part in self._parts():
            try:
                with np.load(part) as z:
                    for name in z.files:
                        z[name]
            except Exception as exc:  # noqa: BLE001
                problems.append(f"journal part {part.name} unreadable: {exc}")
        return problems


def list_caches(cache_dir: str | Path) -> list[Path]:
    return sorted(Path(cache_dir).glob("*.h5"))
