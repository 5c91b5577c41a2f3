"""The feature cache: CNN codes keyed by image content, one folder per extractor configuration.

Layout of ``<cache dir>/<backbone>-<pooling>-<dtype>-<hash>/``::

    MANIFEST.json          the committed state: config, provenance, failures and the list of
                           segments (with each dataset's byte offset); replaced atomically
    segments/seg-*.h5      immutable HDF5 segments, one per commit (or one per compaction)
    journal/part-*.npz     rows a running extraction finished, not committed yet
    incoming/inc-*.h5      whole segments written by Ray workers, adopted by the next commit
    view.h5                HDF5 virtual datasets: one ``taps/<tap>/keys`` and ``codes`` over all
                           segments, for plain h5py users (featx itself never reads it)
    writer.lock            exclusive flock: one writer at a time
    readers.lock           shared flock: held by a reader while it takes its snapshot

A segment holds, per tap, ``keys`` (N,) S32 and ``codes`` (N, D) in row order, plus a persisted
index ``sorted_keys`` (N,) S32 and ``sorted_rows`` (N,) int64 (``keys[sorted_rows] ==
sorted_keys``) and a Bloom filter ``bloom`` (10 bits per key, 4 probes), which lets a lookup skip
the segments that surely lack a key.  Every dataset is contiguous and uncompressed, so a reader maps the segment
(``mmap``; a process keeps the last 256 segments mapped, as they never change) and views each
index at the byte offset the manifest records: a lookup is a binary search in each segment's
``sorted_keys`` (or, when more keys are asked than a segment holds, a search of that segment's
keys among the asked ones), and a read gathers only the rows asked for with ``pread`` (runs of
adjacent rows in one call) -- cost proportional to the keys asked for, not to the cache size,
and memory bounded by what is returned.

Writes: :meth:`FeatureCache.append` writes a journal part (temporary name, fsync, rename: whole or
absent).  :meth:`FeatureCache.commit` turns all parts into ONE new segment (cost proportional to
the new rows; keys already present are dropped, so a key has one row), adopts complete Ray
segments from ``incoming/`` by hard-linking them (more than ``MERGE_ADOPTED_OVER`` = 64 of them
are merged into one, streaming), and swaps the manifest (temporary file, fsync,
``os.replace``, fsync of the folder).  :meth:`FeatureCache.compact` merges all segments into one,
streaming (codes copied in blocks; the sorted index by a k-way merge in blocks), and swaps the
manifest the same way.  A process killed at any moment leaves the previous manifest, which names
only complete segments; the next commit cleans up what it left (temporary files, segments no
manifest names) and folds in its journal.  On any exception (ENOSPC included) a writer removes
its own temporary files before the error propagates.

Damage (a segment, journal part or manifest missing, truncated or unreadable) is a
:class:`CacheDamagedError` naming the file, raised where the file is opened or read; nothing is
rewritten.  ``verify`` lists every damaged file instead of raising.

Readers and deletion: a reader takes a shared ``flock`` on ``readers.lock``, reads the manifest
and maps the segments it names, then releases the lock -- its snapshot stays valid without the
lock because an open or mapped file outlives its unlink on POSIX.  A writer deletes a segment
that the new manifest no longer names only while it holds ``readers.lock`` exclusively (tried
without waiting); when a reader is taking its snapshot the files stay and the next commit or
compaction deletes them.

Older caches were one ``<name>.h5`` file (format 1) next to where the folder now goes.  They are
read as they are, and migrated into a segment by the next commit (the old file is removed only
after the new manifest is in place).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import mmap
import os
import shutil
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featx.errors import FeatxError

FORMAT_VERSION = 2
LEGACY_FORMAT = 1
KEY_DTYPE = "S32"
DTYPES = ("float32", "float16")
MANIFEST = "MANIFEST.json"
_DATASETS = ("keys", "codes", "sorted_keys", "sorted_rows", "bloom")
_COPY_BYTES = 32 << 20  # compaction / migration / export move at most this much of codes at once
_MERGE_KEY_BYTES = 16 << 20  # budget for the k-way merge's key buffers, all segments together
MERGE_ADOPTED_OVER = 64  # a commit adopting more worker segments than this merges them into one


def content_key(data: bytes) -> str:
    """The cache key of an image: a hash of its file bytes, not its path."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEATX_CACHE", "cache"))


def cache_path(cache_dir: str | Path, config: dict) -> Path:
    """The folder of one extractor configuration inside ``cache_dir``."""
    name = f"{config['backbone']}-{config['pooling']}-{config['dtype']}-{config_hash(config)}"
    return Path(cache_dir) / name


class CacheLockedError(FeatxError):
    pass


class CacheDamagedError(FeatxError):
    """A file of a cache folder (segment, incoming segment, journal part, manifest) is missing,
    truncated or unreadable.  ``path`` names it, ``detail`` says what was found."""

    def __init__(self, path, detail: str, folder=None, advice: str | None = None):
        path = Path(path)
        folder = Path(folder) if folder is not None else path.parent.parent  # segments/seg-*.h5 -> the cache folder
        self.path, self.detail, self.folder = path, detail, folder
        if advice is None and path.parent.name in ("incoming", "journal"):  # rows not committed yet
            advice = _part_advice(path)
        advice = advice or (f"run 'featx cache verify {folder}' to list the damage; no featx command repairs a "
                            f"segment: move {folder} aside and run featx extract again to rebuild the cache")
        super().__init__(f"{path}: damaged cache file ({detail}); {advice}")


def _why(exc: BaseException) -> str:
    """One line of what a failed read said (h5py's messages are long and may span lines)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _missing(path: Path) -> str:
    if path.parent.is_dir():
        return "the file is missing"
    return f"the file is missing: the whole {path.parent.name}/ folder is gone"


def _part_advice(path: Path) -> str:
    return (f"delete {path.name} (its rows were never committed: the next featx extract computes them again), "
            "then run the command again")


@dataclass
class TapRows:
    keys: np.ndarray  # (N,) S32
    codes: np.ndarray  # (N, D)


# ---- small file helpers ----------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(folder: Path, stem: str, suffix: str) -> Path:
    return folder / f".tmp-{stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


@contextlib.contextmanager
def _temporary(folder: Path, stem: str, suffix: str):
    """A temporary path that is removed if the block raises anything (ENOSPC included)."""
    tmp = _tmp_name(folder, stem, suffix)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: dict) -> None:
    with _temporary(path.parent, path.name, ".json") as tmp:
        with open(tmp, "w") as fh:
            json.dump(data, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def _as_keys(keys) -> np.ndarray:
    if isinstance(keys, np.ndarray) and keys.dtype.kind == "S":
        return keys.astype(KEY_DTYPE, copy=False).reshape(-1)
    try:
        return np.asarray(keys, dtype=KEY_DTYPE).reshape(-1)  # str keys are ASCII hex
    except (UnicodeEncodeError, TypeError, ValueError):
        return np.asarray([k.encode() if isinstance(k, str) else k for k in keys], dtype=KEY_DTYPE).reshape(-1)


def _first_unique(keys: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each key, in row order."""
    if keys.size == 0:
        return np.zeros(0, np.int64)
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def _virtual(group, name: str, shape: tuple, dtype, sources: list, source_name: str, fill=None) -> None:
    """A virtual dataset concatenating ``source_name`` of each (file, rows) in ``sources`` along
    axis 0 (h5py's low-level API: a few microseconds per source, not a millisecond)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if fill is not None:
        dcpl.set_fill_value(np.array(fill, dtype=dtype))
    vspace = h5py.h5s.create_simple(shape)
    at = 0
    for file, rows in sources:
        src_shape = (rows, *shape[1:])
        vspace.select_hyperslab((at,) + (0,) * (len(shape) - 1), src_shape)
        dcpl.set_virtual(vspace, file.encode(), source_name.encode(), h5py.h5s.create_simple(src_shape))
        at += rows
    vspace.select_all()
    h5py.h5d.create(group.id, name.encode(), h5py.h5t.py_create(np.dtype(dtype)), vspace, dcpl=dcpl).close()


BLOOM_BITS_PER_KEY = 10  # about 1% false positives with 4 probes
_NIBBLE = np.zeros(256, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _NIBBLE[ord(chr(_c).upper())] = _i


def _bloom_bits(rows: int) -> int:
    """Size in bits of a segment's Bloom filter: a power of two, ~10 bits per key."""
    return 1 << max(6, int(np.ceil(np.log2(max(1, rows) * BLOOM_BITS_PER_KEY))))


def _key_hashes(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit words of each key's digest (keys are hex hashes: their bits are already random)."""
    nib = _NIBBLE[np.ascontiguousarray(keys, dtype=KEY_DTYPE).view(np.uint8).reshape(-1, 32)]
    words = np.ascontiguousarray((nib[:, 0::2] << 4) | nib[:, 1::2]).view("<u8")
    return words[:, 0], words[:, 1] | np.uint64(1)


def _bloom_probes(h1, h2, bits: int):
    mask = np.uint64(bits - 1)
    return [(h1 + np.uint64(i) * h2) & mask for i in range(4)]


def _bloom_set(flags: np.ndarray, keys: np.ndarray) -> None:
    for pos in _bloom_probes(*_key_hashes(keys), flags.size):
        flags[pos] = True


def _bloom(keys: np.ndarray) -> np.ndarray:
    flags = np.zeros(_bloom_bits(keys.size), bool)
    _bloom_set(flags, keys)
    return np.packbits(flags, bitorder="little")


def _bloom_test(bloom: np.ndarray, h1, h2) -> np.ndarray:
    """(n,) bool: False where the key is surely not in the segment."""
    ok = np.ones(h1.size, bool)
    for pos in _bloom_probes(h1, h2, bloom.size * 8):
        ok &= ((bloom[pos >> np.uint64(3)] >> (pos & np.uint64(7)).astype(np.uint8)) & 1).astype(bool)
    return ok


# ---- segments --------------------------------------------------------------------------------
def _segment_name() -> str:
    """A new segment file name: creation time first (names sort by age), then a random suffix."""
    return f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.h5"


def _stamp(f, config: dict) -> None:
    """The attributes every segment file carries: the format version and its extractor configuration."""
    f.attrs["format"] = FORMAT_VERSION
    f.attrs["config"] = json.dumps(config, sort_keys=True)


def write_segment(folder: str | Path, rows: dict, config: dict, name: str | None = None) -> dict:
    """Write ``rows`` {tap: TapRows} as one immutable segment file in ``folder``.

    Keys must be unique within a tap (the caller drops duplicates).  The file is written under
    a temporary name, fsynced and renamed, so it is whole or absent; on any exception the
    temporary file is removed.  Returns its manifest entry: ``{"name", "bytes", "taps": {tap:
    {"rows", "dim", "dtype", "offsets": {dataset: byte offset}}}}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(config["dtype"])
    name = name or _segment_name()
    entry = {"name": name, "taps": {}}
    with _temporary(folder, "seg", ".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            _stamp(f, config)
            datasets = {}
            for tap, r in sorted(rows.items()):
                keys = _as_keys(r.keys)
                if keys.size == 0:
                    continue
                codes = np.asarray(r.codes)
                if codes.ndim != 2 or codes.shape[0] != keys.size:
                    raise ValueError(f"tap {tap}: {keys.size} keys but codes of shape {codes.shape}")
                order = np.argsort(keys, kind="stable")
                g = f.create_group(f"taps/{tap}")
                datasets[tap] = {
                    "keys": g.create_dataset("keys", data=keys),
                    "codes": g.create_dataset("codes", data=codes.astype(dtype, copy=False)),
                    "sorted_keys": g.create_dataset("sorted_keys", data=keys[order]),
                    "sorted_rows": g.create_dataset("sorted_rows", data=order.astype(np.int64)),
                    "bloom": g.create_dataset("bloom", data=_bloom(keys)),
                }
                entry["taps"][tap] = {"rows": int(keys.size), "dim": int(codes.shape[1]), "dtype": dtype.name}
            f.flush()
            for tap, ds in datasets.items():
                entry["taps"][tap]["offsets"] = {k: d.id.get_offset() for k, d in ds.items()}
        _fsync_file(tmp)
        os.replace(tmp, folder / name)
    _fsync_dir(folder)
    entry["bytes"] = (folder / name).stat().st_size
    return entry


def _segment_entry(path: Path) -> dict:
    """Manifest entry of an existing segment file (read from the file itself)."""
    entry = {"name": path.name, "bytes": path.stat().st_size, "taps": {}}
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs.get("format", 0)) != FORMAT_VERSION:
                raise ValueError(f"not a format {FORMAT_VERSION} segment")
            for tap, g in f.get("taps", {}).items():
                entry["taps"][tap] = {"rows": int(g["keys"].shape[0]), "dim": int(g["codes"].shape[1]),
                                      "dtype": str(g["codes"].dtype),
                                      "offsets": {k: g[k].id.get_offset() for k in _DATASETS if k in g}}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError) as exc:  # KeyError: h5py's for a missing dataset
        raise CacheDamagedError(path, _why(exc)) from None
    return entry


class _Block:
    """One tap of one segment (or journal part, or legacy file) as arrays a lookup can use."""

    def __init__(self, keys, codes, sorted_keys, sorted_rows, keep=None):
        self.keys, self.codes = keys, codes  # codes: ndarray, memmap or h5py.Dataset
        self.sorted_keys, self.sorted_rows = sorted_keys, sorted_rows
        self.keep = keep  # an open h5py.File to close with the snapshot
        self.pending = False  # journal part or incoming segment: may repeat a committed key
        self.codes_file = None  # (open file, byte offset) of contiguous codes, read with pread
        self.bloom = None  # the segment's Bloom filter over its keys, when it has one

    @property
    def rows(self) -> int:
        return int(self.sorted_keys.shape[0])

    @classmethod
    def from_arrays(cls, keys, codes):
        keys = _as_keys(keys)
        first = _first_unique(keys)
        order = first[np.argsort(keys[first], kind="stable")]
        return cls(keys, codes, keys[order], order)

    @classmethod
    def mapped(cls, path: Path, info: dict, keep_mapped: bool = True):
        off = info["offsets"]
        n, d = info["rows"], info["dim"]
        try:
            buf, fh = _map(path, keep_mapped)
        except FileNotFoundError:
            raise  # the caller knows whether a commit may have moved it
        except (OSError, ValueError) as exc:  # an empty file cannot be mapped
            raise CacheDamagedError(path, _why(exc)) from None

        def view(name, dtype, shape):
            try:
                return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape)), offset=off[name]).reshape(shape)
            except ValueError:
                raise CacheDamagedError(path, f"{len(buf)} bytes, too short for the {name} its manifest entry "
                                              f"places at byte {off.get(name)}") from None

        block = cls(view("keys", KEY_DTYPE, (n,)), view("codes", info["dtype"], (n, d)),
                    view("sorted_keys", KEY_DTYPE, (n,)), view("sorted_rows", np.int64, (n,)))
        block.codes_file = (fh, off["codes"])  # the file as opened: valid even once unlinked
        if off.get("bloom") is not None:
            block.bloom = view("bloom", np.uint8, (_bloom_bits(n) // 8,))
        return block

    def matches(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``wanted`` (sorted, unique), rows here) of the keys both hold: one binary
        search per key of this block among the keys asked -- for when more keys are asked than
        the block holds."""
        sk = np.asarray(self.sorted_keys)
        pos = np.minimum(np.searchsorted(wanted, sk), wanted.size - 1)
        hit = wanted[pos] == sk
        return pos[hit], np.asarray(self.sorted_rows)[hit]

    def locate(self, wanted: np.ndarray, is_sorted: bool = False) -> np.ndarray:
        """Row of each wanted key (unique keys) in this block, -1 where absent.

        Few keys asked: a binary search per key in this block's index.  More keys asked than the
        block holds: a binary search per block key among the (sorted) keys asked instead, so a
        lookup of N keys in S segments costs about N log(N) + sum of segment sizes, not S * N.
        """
        if self.rows == 0 or wanted.size == 0:
            return np.full(wanted.size, -1, np.int64)
        if wanted.size > self.rows:
            order = None if is_sorted else np.argsort(wanted, kind="stable")
            ws = wanted if order is None else wanted[order]
            sk = np.asarray(self.sorted_keys)
            pos = np.minimum(np.searchsorted(ws, sk), ws.size - 1)
            hit = ws[pos] == sk
            out = np.full(wanted.size, -1, np.int64)
            where = pos[hit] if order is None else order[pos[hit]]
            out[where] = np.asarray(self.sorted_rows)[hit]
            return out
        pos = np.searchsorted(self.sorted_keys, wanted)
        pos = np.minimum(pos, self.rows - 1)
        hit = np.asarray(self.sorted_keys[pos]) == wanted
        out = np.full(wanted.size, -1, np.int64)
        out[hit] = np.asarray(self.sorted_rows[pos[hit]])
        return out

    def gather(self, rows: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(rows, return_inverse=True)
        if self.codes_file is not None:  # pread runs of rows: no mapping, so RSS stays what is returned
            return _pread_rows(*self.codes_file, self.codes.dtype, self.codes.shape[1], uniq).astype(
                np.float32, copy=False)[inverse]
        if isinstance(self.codes, h5py.Dataset):
            data = self.codes[uniq] if uniq.size < self.codes.shape[0] // 4 else self.codes[:][uniq]
        else:
            data = self.codes[uniq]
        return np.asarray(data, dtype=np.float32)[inverse]


_MAPS: collections.OrderedDict = collections.OrderedDict()  # (path, inode, size) -> mmap of a segment
_MAPS_MAX = 256
_MAPS_LOCK = threading.Lock()


def _map(path: Path, keep: bool = True):
    """The whole segment file mapped read-only, and the file left open for ``pread``.

    Committed segments never change, so a process keeps the last few hundred: a lookup then
    touches only pages already mapped.  Mapping costs address space, not memory; pages are the
    kernel's page cache.  Both stay valid after the file is unlinked; an evicted entry is closed
    when the last block using it is gone (reference counting), never under a reader.
    """
    key = (str(path),)  # segment names are never reused (time + random), and a segment never changes
    with _MAPS_LOCK:
        m = _MAPS.get(key)
        if m is not None:
            _MAPS.move_to_end(key)
            return m
    fh = open(path, "rb", buffering=0)
    m = (mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), fh)
    if keep:
        with _MAPS_LOCK:
            _MAPS[key] = m
            while len(_MAPS) > _MAPS_MAX:
                _MAPS.popitem(last=False)  # unmapped once no array views it
    return m


def _forget_maps(folder: Path, live: set) -> None:
    """Drop mappings of segments in ``folder`` that the manifest no longer names (their disk space
    is freed only when no process maps them)."""
    prefix = str(folder) + os.sep
    with _MAPS_LOCK:
        for key in [k for k in _MAPS if k[0].startswith(prefix) and Path(k[0]).name not in live]:
            del _MAPS[key]


def _pread_rows(source, offset: int, dtype, dim: int, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of a contiguous (N, dim) dataset in ``source`` (a path or an
    open file); one pread per run of adjacent rows."""
    dtype = np.dtype(dtype)
    row_bytes = dtype.itemsize * dim
    out = np.empty((rows.size, dim), dtype)
    if rows.size == 0:
        return out
    buf = memoryview(out.reshape(-1).view(np.uint8))
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks]).tolist()
    ends = np.concatenate([breaks, [rows.size]]).tolist()
    first = rows[starts].tolist()
    owned = not hasattr(source, "fileno")
    fd = os.open(source, os.O_RDONLY) if owned else source.fileno()
    try:
        for a, b, r in zip(starts, ends, first):
            want = (b - a) * row_bytes
            got = os.preadv(fd, [buf[a * row_bytes : b * row_bytes]], offset + r * row_bytes)
            if got != want:
                raise CacheDamagedError(getattr(source, "name", source),
                                        f"short read: {got} of {want} bytes at byte {offset + r * row_bytes}")
    finally:
        if owned:
            os.close(fd)
    return out


def _read_range(path: Path, offset: int, dtype, start: int, count: int, row_shape=()) -> np.ndarray:
    """Rows ``start:start+count`` of a contiguous dataset, read (not mapped: RSS stays flat)."""
    dtype = np.dtype(dtype)
    row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
    want = count * int(np.prod(row_shape, dtype=np.int64))
    try:
        with open(path, "rb") as fh:
            out = np.fromfile(fh, dtype=dtype, count=want, offset=offset + start * row_bytes)
    except FileNotFoundError:
        raise CacheDamagedError(path, _missing(path)) from None
    if out.size != want:
        raise CacheDamagedError(path, f"file ends before the {count} rows at byte {offset + start * row_bytes}")
    return out.reshape((count, *row_shape))


def _part_arrays(part: Path, folder: Path, tap: str | None = None) -> dict:
    """{tap: (keys, codes)} of a journal part (only ``tap`` when given).  A missing part stays
    FileNotFoundError (a commit may have folded it in meanwhile); one that cannot be read is a
    :class:`CacheDamagedError`."""
    try:
        with np.load(part) as z:
            names = [k[len("keys__"):] for k in z.files if k.startswith("keys__")]
            return {t: (z[f"keys__{t}"], z[f"codes__{t}"]) for t in names if tap is None or t == tap}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CacheDamagedError(part, _why(exc), folder, advice=_part_advice(part)) from None


class FeatureCache:
    """One extractor configuration's rows: committed segments, plus journal and incoming segments.

    Parameters
    ----------
    path : str or Path
        The cache folder (``cache_path(cache_dir, config)``).  A legacy ``<name>.h5`` file path is
        accepted too: it names the folder ``<name>`` and the old file is read (and migrated by the
        next commit).
    config : dict, optional
        The extractor configuration; needed to write.
    """

    def __init__(self, path: str | Path, config: dict | None = None):
        path = Path(path)
        if path.suffix == ".h5" and not (path / MANIFEST).exists():
            self.path, self.legacy = path.with_suffix(""), path
        else:
            self.path, self.legacy = path, path.with_name(path.name + ".h5")
        self.config = config
        self.manifest_path = self.path / MANIFEST
        self.segments_dir = self.path / "segments"
        self.incoming_dir = self.path / "incoming"
        self.journal = self.path / "journal"
        self.legacy_journal = self.legacy.with_name(self.legacy.name + ".journal")
        self._lock_fd: int | None = None
        self._part_no = 0

    # ---- locking ------------------------------------------------------------------------------
    def lock(self) -> "FeatureCache":
        """Take the writer's lock; a second writer gets a clear error."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
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

    @contextlib.contextmanager
    def _writing(self):
        if self._lock_fd is not None:
            yield
            return
        with self:
            yield

    @contextlib.contextmanager
    def _reader_lock(self, exclusive: bool = False, wait: bool = True):
        """Shared: a reader taking its snapshot; exclusive (never waiting): a writer deleting."""
        try:
            fd = os.open(self.path / "readers.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a read-only or missing folder: nobody can be deleting there
            yield not exclusive
            return
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
                got = True
            except OSError:
                got = False
            yield got
        finally:
            os.close(fd)  # releases the lock

    # ---- the committed state --------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.manifest_path.exists() or self.legacy.exists() or any(self._parts())
                or any(self._incoming()))

    def _parts(self) -> list[Path]:
        parts = []
        for d in (self.legacy_journal, self.journal):
            if d.is_dir():
                parts += sorted(d.glob("part-*.npz"))
        return parts

    def _incoming(self) -> list[Path]:
        return sorted(self.incoming_dir.glob("inc-*.h5")) if self.incoming_dir.is_dir() else []

    def manifest(self) -> dict | None:
        """The committed manifest (None for a legacy single-file cache or no cache)."""
        try:
            with open(self.manifest_path) as fh:
                m = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            detail = _why(exc)
        else:
            if isinstance(m, dict) and isinstance(m.get("segments"), list) and isinstance(m.get("config"), dict):
                return m
            detail = "not a cache manifest: no config or segment list"
        raise CacheDamagedError(self.manifest_path, detail, self.path, advice=(
            "it lists the cache's segments and no featx command rebuilds it: move "
            f"{self.path} aside and run featx extract again to rebuild the cache"))

    def _committed(self, seg: dict, info: dict, m: dict) -> "_Block":
        """The mapped block of a segment ``m`` names; a missing file is damage unless a commit swapped
        the manifest meanwhile (then FileNotFoundError: the caller takes a new snapshot)."""
        path = self.segments_dir / seg["name"]
        try:
            return _Block.mapped(path, info)
        except FileNotFoundError:
            if (self.manifest() or {}).get("generation") != m.get("generation"):
                raise
            raise CacheDamagedError(path, _missing(path)) from None

    def _legacy_open(self):
        try:
            return h5py.File(self.legacy, "r")
        except OSError as exc:
            raise FeatxError(f"{self.legacy}: cannot open the cache file ({_why(exc)}); run "
                             f"'featx cache verify {self.legacy}'") from None

    def read_config(self) -> dict | None:
        m = self.manifest()
        if m is not None:
            return m["config"]
        if self.legacy.exists():
            with self._legacy_open() as f:
                return json.loads(f.attrs["config"])
        return None

    @contextlib.contextmanager
    def _snapshot(self, tap: str):
        """Blocks holding ``tap``'s rows in lookup order (committed first), consistent as a whole."""
        for attempt in range(20):
            blocks: list[_Block] = []
            try:
                with self._reader_lock():
                    m = self.manifest()
                    if m is not None:
                        _forget_maps(self.segments_dir, {seg["name"] for seg in m["segments"]})
                        for seg in m["segments"]:
                            info = seg["taps"].get(tap)
                            if info and info["rows"]:
                                blocks.append(self._committed(seg, info, m))
                    elif self.legacy.exists():
                        f = self._legacy_open()
                        if tap in f.get("taps", {}):
                            g = f["taps"][tap]
                            b = _Block.from_arrays(g["keys"][:], g["codes"])
                            b.keep = f
                            blocks.append(b)
                        else:
                            f.close()
                    for inc in self._incoming():
                        entry = _segment_entry(inc)
                        if tap in entry["taps"]:
                            blocks.append(_Block.mapped(inc, entry["taps"][tap], keep_mapped=False))
                            blocks[-1].pending = True
                    for part in self._parts():
                        for k, c in _part_arrays(part, self.path, tap).values():
                            blocks.append(_Block.from_arrays(k, c))
                            blocks[-1].pending = True
                    again = self.manifest()
                    if (again or {}).get("generation") != (m or {}).get("generation") or (again is None) != (m is None):
                        raise FileNotFoundError  # a commit swapped the manifest meanwhile: parts may be gone
            except BaseException as exc:
                for b in blocks:
                    if b.keep is not None:
                        b.keep.close()
                if not isinstance(exc, FileNotFoundError):
                    raise
                time.sleep(0.01 * attempt)  # a commit moved a part or incoming segment meanwhile: again
                continue
            try:
                yield blocks
            finally:
                for b in blocks:
                    if b.keep is not None:
                        b.keep.close()
            return
        raise FeatxError(f"{self.path}: the cache kept changing while being read; try again")

    def taps(self) -> list[str]:
        names = set()
        m = self.manifest()
        if m is not None:
            for seg in m["segments"]:
                names |= set(seg["taps"])
        elif self.legacy.exists():
            with self._legacy_open() as f:
                names |= set(f.get("taps", {}).keys())
        for inc in self._incoming():
            with contextlib.suppress(OSError, ValueError):
                names |= set(_segment_entry(inc)["taps"])
        for part in self._parts():
            with contextlib.suppress(OSError), np.load(part) as z:
                names |= {k[len("keys__"):] for k in z.files if k.startswith("keys__")}
        return sorted(names)

    def keys(self, tap: str, among=None) -> set[str]:
        """Keys that have a row for ``tap`` (committed, incoming or journalled).

        Parameters
        ----------
        tap : str
        among : iterable of str, optional
            Only ask about these keys (cost proportional to their number, not to the cache size);
            None returns every key.

        Returns
        -------
        set of str
        """
        if among is not None:
            among = [k for k in among if k is not None]
            return set(itertools.compress(among, self.contains(tap, among).tolist()))
        found: set[str] = set()
        with self._snapshot(tap) as blocks:
            for b in blocks:
                found.update(np.asarray(b.sorted_keys).astype("U32").tolist())
        return found

    def contains(self, tap: str, keys) -> np.ndarray:
        """(n,) bool: whether each key of ``keys`` has a row for ``tap``."""
        wanted, inverse = np.unique(_as_keys(keys), return_inverse=True)  # sorted: searches walk forward
        where, _ = self._lookup(tap, wanted)
        return (where >= 0)[inverse.reshape(-1)]

    def _lookup(self, tap: str, wanted: np.ndarray, blocks=None):
        """(block index, row) of each of ``wanted`` (sorted, unique keys); -1 where absent."""
        where = np.full(wanted.size, -1, np.int64)
        rows = np.full(wanted.size, -1, np.int64)
        with contextlib.nullcontext(blocks) if blocks is not None else self._snapshot(tap) as blocks:
            missing, hashes = wanted.size, None
            for i, b in enumerate(blocks):
                if missing == 0:
                    break
                if b.rows < missing:  # this block's keys searched among the asked: no copies
                    pos, r = b.matches(wanted)
                    new = where[pos] < 0  # an earlier block wins
                    where[pos[new]], rows[pos[new]] = i, r[new]
                    missing -= int(new.sum())
                else:
                    todo = np.flatnonzero(where < 0)
                    if b.bloom is not None:  # most keys are in another segment: skip their searches
                        if hashes is None:
                            hashes = _key_hashes(wanted)
                        todo = todo[_bloom_test(b.bloom, hashes[0][todo], hashes[1][todo])]
                    r = b.locate(wanted[todo], is_sorted=True)
                    hit = r >= 0
                    where[todo[hit]], rows[todo[hit]] = i, r[hit]
                    missing -= int(hit.sum())
        return where, rows

    def read(self, tap: str, keys) -> np.ndarray:
        """Rows of ``tap`` for ``keys``, in that order.

        Parameters
        ----------
        tap : str
        keys : sequence of str
            Content keys (32 hex characters); repeats allowed.

        Returns
        -------
        ndarray, float32, shape (len(keys), D)

        Raises
        ------
        FeatxError
            When a key has no row for ``tap`` (run ``featx extract``).
        """
        wanted, inverse = np.unique(_as_keys(keys), return_inverse=True)  # sorted: searches walk forward
        inverse = inverse.reshape(-1)
        with self._snapshot(tap) as blocks:
            where, rows = self._lookup(tap, wanted, blocks)
            if (where < 0).any():
                missing = wanted[np.flatnonzero(where < 0)[0]].decode()
                raise FeatxError(f"{self.path}: no {tap} codes for image {missing!r}; run featx extract")
            dim = blocks[0].codes.shape[1] if blocks else 0
            out = np.empty((wanted.size, dim), dtype=np.float32)
            for i, b in enumerate(blocks):
                dest = np.flatnonzero(where == i)
                if dest.size:
                    out[dest] = b.gather(rows[dest])
            return out[inverse]

    # ---- writing --------------------------------------------------------------------------------
    def append(self, rows: dict[str, TapRows]) -> Path:
        """Write finished rows as one journal part, atomically (whole or absent)."""
        self.journal.mkdir(parents=True, exist_ok=True)
        self._part_no += 1
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{self._part_no:06d}.npz"
        arrays = {}
        for tap, r in rows.items():
            arrays[f"keys__{tap}"] = np.asarray(r.keys, dtype=KEY_DTYPE)
            arrays[f"codes__{tap}"] = r.codes
        with _temporary(self.journal, "part", ".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            final = self.journal / name
            os.replace(tmp, final)
        return final

    def add_segment(self, rows: dict[str, TapRows]) -> Path:
        """Write ``rows`` as one whole segment into ``incoming/`` (no lock needed).

        For workers that compute rows away from the writer (Ray actors): the next
        :meth:`commit` adopts the file by renaming it, without copying its codes.  Keys within a
        tap must be unique.  Returns the segment's path.
        """
        if self.config is None:
            raise ValueError("add_segment needs the configuration")
        name = f"inc-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
        write_segment(self.incoming_dir, rows, self.config, name=name)
        return self.incoming_dir / name

    def _new_manifest(self) -> dict:
        if self.legacy.exists():
            with self._legacy_open() as f:
                config = json.loads(f.attrs["config"])
                prov = json.loads(f.attrs.get("provenance", "{}"))
                failures = json.loads(f["failures"][()]) if "failures" in f else []
        else:
            config, prov, failures = self.config, {}, []
        return {"format": FORMAT_VERSION, "generation": 0, "config": config, "provenance": prov,
                "failures": failures, "segments": []}

    def commit(self, provenance: dict | None = None, failures: list | None = None) -> None:
        """Make journalled and incoming rows part of the cache: one new segment, one manifest swap.

        Cost is proportional to the new rows (plus one binary search per new key in each
        existing segment), not to the rows already cached.  A legacy single-file cache is
        migrated first.  Takes the writer's lock unless this object holds it.
        """
        if self.config is None:
            raise ValueError("commit needs the configuration")
        with self._writing():
            self._cleanup_temporary()
            m = self.manifest()
            if m is not None and m.get("migrated_from") == self.legacy.name and self.legacy.exists():
                self.legacy.unlink()  # a migration killed after its manifest swap
            migrating = m is None and self.legacy.exists()
            if m is None:
                m = self._new_manifest()
            parts, incoming = self._parts(), self._incoming()
            if not (parts or incoming or migrating) and self.manifest_path.exists() and failures is None:
                with contextlib.suppress(OSError):
                    self.journal.rmdir()
                self._collect_garbage(m)
                return
            created: list[Path] = []
            try:
                segments = list(m["segments"])
                if migrating:
                    m["migrated_from"] = self.legacy.name
                    segments.append(self._migrate_legacy())
                    created.append(self.segments_dir / segments[-1]["name"])
                blocks = {}  # tap -> blocks of the segments committed before this commit

                def existing(tap):
                    if tap not in blocks:
                        blocks[tap] = [self._committed(s, s["taps"][tap], m)
                                       for s in segments if s["taps"].get(tap, {}).get("rows")]
                    return blocks[tap]

                # every new key at once (memory ~ the new rows): first occurrence, not cached yet
                sources = []  # (incoming path or None for the journal, entry, {tap: keys})
                for inc in incoming:
                    entry = _segment_entry(inc)
                    sources.append((inc, entry, {t: _read_range(inc, i["offsets"]["keys"], KEY_DTYPE, 0, i["rows"])
                                                 for t, i in entry["taps"].items()}))
                journal: dict[str, list] = {}
                for p in parts:
                    for tap, (k, c) in _part_arrays(p, self.path).items():
                        journal.setdefault(tap, []).append((_as_keys(k), c))
                journal = {t: (np.concatenate([k for k, _ in v]), np.concatenate([c for _, c in v]))
                           for t, v in journal.items()}
                sources.append((None, None, {t: k for t, (k, _) in journal.items()}))
                keep: dict[tuple, np.ndarray] = {}
                for tap in sorted({t for _, _, ks in sources for t in ks}):
                    pieces = [(n, ks[tap]) for n, (_, _, ks) in enumerate(sources) if tap in ks]
                    every = np.concatenate([k for _, k in pieces])
                    mask = np.zeros(every.size, bool)
                    mask[_first_unique(every)] = True
                    for b in existing(tap):
                        idx = np.flatnonzero(mask)
                        mask[idx[b.locate(every[idx]) >= 0]] = False
                    at = 0
                    for n, k in pieces:
                        keep[n, tap] = mask[at : at + k.size]
                        at += k.size

                adopted = []
                for n, (inc, entry, ks) in enumerate(sources[:-1]):  # Ray workers' segments
                    name = _segment_name()
                    self.segments_dir.mkdir(parents=True, exist_ok=True)
                    if all(keep[n, t].all() for t in ks):  # a second name for the same file, no copy:
                        try:  # incoming/ keeps the first until the manifest is swapped
                            os.link(inc, self.segments_dir / name)
                        except OSError:
                            shutil.copyfile(inc, self.segments_dir / name)
                        entry["name"] = name
                    else:  # rows another segment already holds (a retried batch): the rest only
                        kept = {}
                        for t, info in entry["taps"].items():
                            rows_ = np.flatnonzero(keep[n, t])
                            if rows_.size:
                                codes = _pread_rows(inc, info["offsets"]["codes"], info["dtype"], info["dim"], rows_)
                                kept[t] = TapRows(ks[t][rows_], codes)
                        entry = write_segment(self.segments_dir, kept, m["config"], name=name) if kept else None
                    if entry is not None:
                        created.append(self.segments_dir / name)
                        adopted.append(entry)
                if len(adopted) > MERGE_ADOPTED_OVER:  # many small worker segments: one, streaming
                    merged = self._merge_files([(self.segments_dir / e["name"], e) for e in adopted], m["config"])
                    created.append(self.segments_dir / merged["name"])
                    adopted = [merged]  # the linked files are named by no manifest: garbage
                segments += adopted
                rows = {t: TapRows(k[keep[len(sources) - 1, t]], c[keep[len(sources) - 1, t]])
                        for t, (k, c) in journal.items() if keep[len(sources) - 1, t].any()}
                if rows:  # journal parts: one new segment with the rows not cached yet
                    segments.append(write_segment(self.segments_dir, rows, m["config"]))
                    created.append(self.segments_dir / segments[-1]["name"])
                prov = dict(m.get("provenance") or {})
                prov.update(provenance or {})
                prov.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                if provenance is not None or len(segments) != len(m["segments"]):
                    prov["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                new = {**m, "format": FORMAT_VERSION, "generation": int(m.get("generation", 0)) + 1,
                       "provenance": prov, "segments": segments,
                       "failures": failures if failures is not None else m.get("failures", [])}
                self.path.mkdir(parents=True, exist_ok=True)
                _write_json_atomic(self.manifest_path, new)
            except BaseException:
                for path in created:  # never named by a manifest: not part of the cache
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
            for p in parts:
                p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # absent, or not empty: no empty journal folder left
                self.journal.rmdir()
            for inc in incoming:
                inc.unlink(missing_ok=True)
            if migrating:
                self.legacy.unlink(missing_ok=True)
                self.legacy.with_name(self.legacy.name + ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.legacy_journal.rmdir()
            self._write_view(new)
            self._collect_garbage(new)

    def _migrate_legacy(self) -> dict:
        """Copy the legacy single file into one segment, streaming its codes (keys in memory)."""
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        name = _segment_name()
        with self._legacy_open() as old:
            config = json.loads(old.attrs["config"])
            dtype = np.dtype(config["dtype"])
            entry = {"name": name, "taps": {}}
            with _temporary(self.segments_dir, "seg", ".h5") as tmp:
                with h5py.File(tmp, "w") as f:
                    _stamp(f, config)
                    ds = {}
                    for tap, g in old.get("taps", {}).items():
                        keys = _as_keys(g["keys"][:])
                        keep = _first_unique(keys)
                        if keep.size == 0:
                            continue
                        dim = int(g["codes"].shape[1])
                        order = np.argsort(keys[keep], kind="stable")
                        t = f.create_group(f"taps/{tap}")
                        ds[tap] = {"keys": t.create_dataset("keys", data=keys[keep]),
                                   "codes": t.create_dataset("codes", shape=(keep.size, dim), dtype=dtype),
                                   "sorted_keys": t.create_dataset("sorted_keys", data=keys[keep][order]),
                                   "sorted_rows": t.create_dataset("sorted_rows", data=order.astype(np.int64)),
                                   "bloom": t.create_dataset("bloom", data=_bloom(keys[keep]))}
                        step = max(1, _COPY_BYTES // (dim * dtype.itemsize))
                        contiguous = keep.size == keys.size
                        for start in range(0, keep.size, step):
                            sel = keep[start : start + step]
                            block = (g["codes"][int(sel[0]) : int(sel[-1]) + 1] if contiguous else
                                     g["codes"][sel])
                            ds[tap]["codes"][start : start + sel.size] = block.astype(dtype, copy=False)
                        entry["taps"][tap] = {"rows": int(keep.size), "dim": dim, "dtype": dtype.name}
                    f.flush()
                    for tap, d in ds.items():
                        entry["taps"][tap]["offsets"] = {k: v.id.get_offset() for k, v in d.items()}
                _fsync_file(tmp)
                os.replace(tmp, self.segments_dir / name)
        _fsync_dir(self.segments_dir)
        entry["bytes"] = (self.segments_dir / name).stat().st_size
        return entry

    def compact(self) -> dict:
        """Merge all segments into one, streaming; returns ``{"before": n, "after": m, "rows": ...}``.

        Codes are copied in blocks of at most 32 MB; the sorted key index is built by a k-way
        merge of the segments' own indexes in blocks (16 MB of keys for all segments together),
        so memory stays bounded whatever the cache size.  Journal and incoming rows are
        committed first.  Readers keep their snapshot; the old segments are deleted when no
        reader is taking one (else by the next commit).
        """
        with self._writing():
            if self.config is None:
                self.config = self.read_config()
            if self.config is None:
                raise FeatxError(f"{self.path}: no cache here; list them with 'featx cache ls'")
            self.commit()
            m = self.manifest()
            before = len(m["segments"])
            if before <= 1:
                return {"before": before, "after": before, "rows": self._rows(m)}
            entry = self._merge_files([(self.segments_dir / s["name"], s) for s in m["segments"]], m["config"])
            try:
                new = {**m, "generation": int(m.get("generation", 0)) + 1, "segments": [entry]}
                _write_json_atomic(self.manifest_path, new)
            except BaseException:
                (self.segments_dir / entry["name"]).unlink(missing_ok=True)
                raise
            self._write_view(new)
            self._collect_garbage(new)
            return {"before": before, "after": 1, "rows": self._rows(new)}

    def _merge_files(self, srcs: list, config: dict) -> dict:
        """One new segment holding the rows of ``srcs`` [(path, entry)], in order, streaming."""
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        taps = sorted({t for _, e in srcs for t in e["taps"]})
        name = _segment_name()
        entry = {"name": name, "taps": {}}
        with _temporary(self.segments_dir, "seg", ".h5") as tmp:
            with h5py.File(tmp, "w") as f:
                _stamp(f, config)
                ds = {}
                for tap in taps:
                    tap_srcs = [(path, e["taps"][tap]) for path, e in srcs if e["taps"].get(tap, {}).get("rows")]
                    if tap_srcs:
                        ds[tap] = self._merge_tap(f, tap, tap_srcs)
                        entry["taps"][tap] = {"rows": int(ds[tap]["keys"].shape[0]),
                                              "dim": int(ds[tap]["codes"].shape[1]),
                                              "dtype": str(ds[tap]["codes"].dtype)}
                f.flush()
                for tap, d in ds.items():
                    entry["taps"][tap]["offsets"] = {k: v.id.get_offset() for k, v in d.items()}
            _fsync_file(tmp)
            os.replace(tmp, self.segments_dir / name)
        try:
            _fsync_dir(self.segments_dir)
            entry["bytes"] = (self.segments_dir / name).stat().st_size
        except BaseException:
            (self.segments_dir / name).unlink(missing_ok=True)
            raise
        return entry

    @staticmethod
    def _rows(m: dict) -> dict:
        out: dict[str, int] = {}
        for s in m["segments"]:
            for t, info in s["taps"].items():
                out[t] = out.get(t, 0) + info["rows"]
        return out

    @staticmethod
    def _merge_tap(f, tap, srcs) -> dict:
        """Concatenate ``srcs`` into a new tap group; merge their sorted indexes (bounded memory)."""
        dim, dtype = srcs[0][1]["dim"], np.dtype(srcs[0][1]["dtype"])
        sizes = [info["rows"] for _, info in srcs]
        total = sum(sizes)
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        g = f.create_group(f"taps/{tap}")
        out = {"keys": g.create_dataset("keys", shape=(total,), dtype=KEY_DTYPE),
               "codes": g.create_dataset("codes", shape=(total, dim), dtype=dtype),
               "sorted_keys": g.create_dataset("sorted_keys", shape=(total,), dtype=KEY_DTYPE),
               "sorted_rows": g.create_dataset("sorted_rows", shape=(total,), dtype=np.int64)}
        step = max(1, _COPY_BYTES // (dim * dtype.itemsize))
        flags = np.zeros(_bloom_bits(total), bool)
        for (path, info), at in zip(srcs, starts):  # rows: segment after segment, in blocks
            off = info["offsets"]
            for s in range(0, info["rows"], step):
                n = min(step, info["rows"] - s)
                keys = _read_range(path, off["keys"], KEY_DTYPE, s, n)
                out["keys"][at + s : at + s + n] = keys
                _bloom_set(flags, keys)
                out["codes"][at + s : at + s + n] = _read_range(path, off["codes"], dtype, s, n, (dim,))
        out["bloom"] = g.create_dataset("bloom", data=np.packbits(flags, bitorder="little"))
        del flags
        block = max(256, _MERGE_KEY_BYTES // (32 * len(srcs)))
        cursor = [0] * len(srcs)
        written = 0
        while written < total:  # k-way merge: emit every key up to the smallest buffered maximum
            bufs = {}
            for i, (path, info) in enumerate(srcs):
                if cursor[i] < info["rows"]:
                    n = min(block, info["rows"] - cursor[i])
                    bufs[i] = _read_range(path, info["offsets"]["sorted_keys"], KEY_DTYPE, cursor[i], n)
            limits = [b[-1] for i, b in bufs.items() if cursor[i] + b.size < srcs[i][1]["rows"]]
            bound = min(limits) if limits else None
            keys, rows = [], []
            for i, b in bufs.items():
                n = b.size if bound is None else int(np.searchsorted(b, bound, side="right"))
                if n:
                    keys.append(b[:n])
                    rows.append(_read_range(srcs[i][0], srcs[i][1]["offsets"]["sorted_rows"], np.int64,
                                            cursor[i], n) + starts[i])
                    cursor[i] += n
            keys, rows = np.concatenate(keys), np.concatenate(rows)
            order = np.argsort(keys, kind="stable")  # ties: the earlier segment first
            out["sorted_keys"][written : written + keys.size] = keys[order]
            out["sorted_rows"][written : written + keys.size] = rows[order]
            written += keys.size
        return out

    def _cleanup_temporary(self) -> None:
        """Temporary files a killed writer left (only under the writer's lock)."""
        for d in (self.path, self.segments_dir, self.journal, self.incoming_dir, self.legacy_journal):
            if d.is_dir():
                for stale in d.glob(".tmp-*"):
                    stale.unlink(missing_ok=True)

    def _collect_garbage(self, m: dict) -> None:
        """Delete segments the manifest no longer names, unless a reader is taking a snapshot."""
        if not self.segments_dir.is_dir():
            return
        live = {s["name"] for s in m["segments"]}
        dead = [p for p in self.segments_dir.glob("seg-*.h5") if p.name not in live]
        if not dead:
            return
        with self._reader_lock(exclusive=True, wait=False) as got:
            if got:
                for p in dead:
                    p.unlink(missing_ok=True)

    def _write_view(self, m: dict) -> None:
        """``view.h5``: per tap, one virtual ``keys`` and ``codes`` dataset over every segment."""
        try:
            with _temporary(self.path, "view", ".h5") as tmp:
                with h5py.File(tmp, "w") as f:
                    f.attrs["note"] = ("virtual view over segments/*.h5 at manifest generation "
                                       f"{m['generation']}; featx reads MANIFEST.json, not this file")
                    f.attrs["config"] = json.dumps(m["config"], sort_keys=True)
                    for tap, total in self._rows(m).items():
                        segs = [(f"segments/{s['name']}", s["taps"][tap]["rows"]) for s in m["segments"]
                                if s["taps"].get(tap)]
                        info = next(s["taps"][tap] for s in m["segments"] if s["taps"].get(tap))
                        g = f.require_group(f"taps/{tap}")
                        _virtual(g, "keys", (total,), KEY_DTYPE, segs, f"taps/{tap}/keys")
                        _virtual(g, "codes", (total, info["dim"]), info["dtype"], segs, f"taps/{tap}/codes",
                                 fill=np.nan)
                os.replace(tmp, self.path / "view.h5")
        except OSError:
            pass  # a convenience only: the manifest is the cache

    # ---- inspection ---------------------------------------------------------------------------
    def info(self) -> dict:
        view = self.path / "view.h5"  # one HDF5 file over every segment, for h5py users (a convenience)
        out = {"folder": str(self.path), "file": str(view) if view.exists() else None, "size_bytes": 0, "segments": 0,
               "pending_parts": len(self._parts()), "incoming_segments": len(self._incoming()), "taps": {}}
        m = self.manifest()
        if m is not None:
            out.update(format=m.get("format"), generation=m.get("generation"), config=m["config"],
                       provenance=m.get("provenance", {}), failures=m.get("failures", []),
                       segments=len(m["segments"]), size_bytes=sum(s.get("bytes", 0) for s in m["segments"]))
            for s in m["segments"]:
                for tap, info in s["taps"].items():
                    t = out["taps"].setdefault(tap, {"rows": 0, "dim": info["dim"], "dtype": info["dtype"]})
                    t["rows"] += info["rows"]
        elif self.legacy.exists():
            out.update(file=str(self.legacy), format=LEGACY_FORMAT, size_bytes=self.legacy.stat().st_size)
            with self._legacy_open() as f:
                out["config"] = json.loads(f.attrs["config"])
                out["provenance"] = json.loads(f.attrs.get("provenance", "{}"))
                out["failures"] = json.loads(f["failures"][()]) if "failures" in f else []
                for tap, g in f["taps"].items():
                    out["taps"][tap] = {"rows": int(g["keys"].shape[0]), "dim": int(g["codes"].shape[1]),
                                        "dtype": str(g["codes"].dtype)}
        return out

    def verify(self) -> list[str]:
        """Problems found (empty when the cache is sound).  Reads every row once, in blocks."""
        problems = []
        try:
            m = self.manifest()
        except CacheDamagedError as exc:
            return [f"{MANIFEST} is damaged ({exc.detail}): it lists the cache's segments and no featx command "
                    f"rebuilds it; move {self.path} aside and run featx extract again to rebuild the cache"]
        if m is None:
            if self.legacy.exists():
                return self._verify_legacy() + self._verify_pending()
            return ["no manifest: not a cache folder (or nothing committed yet)"] + self._verify_pending()
        try:
            if cache_path(self.path.parent, m["config"]).name != self.path.name:
                problems.append("folder name does not match its configuration hash")
            all_keys: dict[str, list] = {}
            for seg in m["segments"]:
                path = self.segments_dir / seg["name"]
                try:
                    actual = _segment_entry(path)
                    for tap, info in seg["taps"].items():
                        a = actual["taps"].get(tap)
                        if a is None or any(a[k] != info[k] for k in ("rows", "dim", "dtype", "offsets")):
                            problems.append(f"segment {seg['name']} tap {tap}: does not match the manifest")
                            continue
                        problems += [f"segment {seg['name']} tap {tap}: {p}" for p in self._verify_block(path, info)]
                        all_keys.setdefault(tap, []).append(
                            _read_range(path, info["offsets"]["sorted_keys"], KEY_DTYPE, 0, info["rows"]))
                except CacheDamagedError as exc:
                    problems.append(f"segment {seg['name']}: cannot read: {exc.detail}")
                except FileNotFoundError:
                    problems.append(f"segment {seg['name']}: {_missing(path)}")
                except (OSError, ValueError, KeyError) as exc:
                    problems.append(f"segment {seg['name']}: cannot read: {_why(exc)}")
            for tap, parts in all_keys.items():
                keys = np.concatenate(parts)
                if np.unique(keys).size != keys.size:
                    problems.append(f"tap {tap}: a key has rows in more than one segment")
        except (OSError, KeyError, ValueError, TypeError) as exc:
            problems.append(f"cannot read: {exc}")
        return problems + self._verify_pending()

    @staticmethod
    def _verify_block(path: Path, info: dict) -> list[str]:
        problems = []
        n, dim, off = info["rows"], info["dim"], info["offsets"]
        keys = _read_range(path, off["keys"], KEY_DTYPE, 0, n)
        sk = _read_range(path, off["sorted_keys"], KEY_DTYPE, 0, n)
        sr = _read_range(path, off["sorted_rows"], np.int64, 0, n)
        if any(len(x) != 32 for x in keys.tolist()):
            problems.append("malformed keys")
        elif off.get("bloom") is not None and n and not _bloom_test(
                _read_range(path, off["bloom"], np.uint8, 0, _bloom_bits(n) // 8), *_key_hashes(keys)).all():
            problems.append("Bloom filter misses a key")
        if n and ((sr < 0).any() or (sr >= n).any() or not np.array_equal(keys[np.clip(sr, 0, n - 1)], sk)):
            problems.append("key index does not match the keys")
        elif n > 1 and (sk[1:] <= sk[:-1]).any():
            problems.append("duplicate keys" if (sk[1:] == sk[:-1]).any() else "key index not sorted")
        dtype = np.dtype(info["dtype"])
        step = max(1, _COPY_BYTES // (dim * dtype.itemsize))
        for start in range(0, n, step):
            try:
                block = _read_range(path, off["codes"], dtype, start, min(step, n - start), (dim,))
            except CacheDamagedError:
                problems.append("codes truncated")
                break
            if not np.isfinite(block).all():
                problems.append(f"non-finite values near row {start}")
                break
        return problems

    def _verify_legacy(self) -> list[str]:
        problems = []
        try:
            with h5py.File(self.legacy, "r") as f:
                config = json.loads(f.attrs["config"])
                if cache_path(self.legacy.parent, config).name + ".h5" != self.legacy.name:
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
        return problems

    def _verify_pending(self) -> list[str]:
        problems = []
        for part in self._parts():
            try:
                with np.load(part) as z:
                    for name in z.files:
                        z[name]
            except Exception as exc:  # noqa: BLE001
                problems.append(f"journal part {part.name} unreadable: {_why(exc)}")
        for inc in self._incoming():
            try:
                entry = _segment_entry(inc)
                for tap, info in entry["taps"].items():
                    problems += [f"incoming {inc.name} tap {tap}: {p}" for p in self._verify_block(inc, info)]
            except Exception as exc:  # noqa: BLE001
                why = exc.detail if isinstance(exc, CacheDamagedError) else _why(exc)
                problems.append(f"incoming segment {inc.name} unreadable: {why}")
        return problems


def list_caches(cache_dir: str | Path) -> list[Path]:
    """Cache folders in ``cache_dir`` (and legacy single-file caches not migrated yet)."""
    cache_dir = Path(cache_dir)
    found = {p.parent for p in cache_dir.glob(f"*/{MANIFEST}")}
    found |= {p for p in cache_dir.glob("*.h5") if p.with_suffix("") not in found}
    return sorted(found)


def export(cache: FeatureCache, out_dir: str | Path, fmt: str = "npy", taps=None, keys=None, meta=None,
           rows_per_file: int = 100_000) -> dict:
    """Write a cache's codes for other tools, streaming (at most ``rows_per_file`` rows in memory).

    Parameters
    ----------
    cache : FeatureCache
    out_dir : str or Path
        Created if missing.  ``npy``: ``<tap>/emb/emb_00000.npy`` (float32, (n, D)) with
        ``<tap>/metadata/metadata_00000.parquet`` (``.csv`` without pyarrow) holding ``key`` (and
        the ``meta`` columns) in the same row order -- embedding-reader's ``parquet_npy`` layout.
        ``parquet``: ``<tap>.parquet``, one table with ``key``, the ``meta`` columns and
        ``embedding`` (fixed-size list of float32).  Needs the ``parquet`` extra (pyarrow).
    fmt : {"npy", "parquet"}
    taps : list of str, optional
        Default: every tap of the cache.
    keys : list of str, optional
        Export these rows in this order (e.g. a dataset's images); default every row, in the
        cache's order.  Keys without a row are left out (counted in the result).
    meta : dict of str -> list, optional
        Extra columns aligned with ``keys`` (e.g. ``path``, ``label``).

    Returns
    -------
    dict
        ``{"files": [paths written], "rows": {tap: n}, "missing": {tap: n}}``.

    Raises
    ------
    FeatxError
        Unknown format, nothing to export, or pyarrow missing for ``parquet``.
    """
    if fmt not in ("npy", "parquet"):
        raise FeatxError(f"expected npy or parquet, got {fmt!r}", param="format")
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        if fmt == "parquet":
            raise FeatxError("parquet needs its extra: pip install 'featx[parquet]'", param="format") from None
        pa = None
    have = cache.taps()
    taps = list(taps or have)
    if not taps:
        raise FeatxError(f"{cache.path}: nothing to export (no rows committed); run featx extract")
    unknown = [t for t in taps if t not in have]
    if unknown:
        raise FeatxError(f"{', '.join(map(repr, unknown))}: not a tap of {cache.path}; its taps: "
                         f"{', '.join(have) or 'none (no rows committed)'}", param="taps")
    out_dir = Path(out_dir)
    result = {"files": [], "rows": {}, "missing": {}}
    for tap in taps:
        if keys is None:
            pieces = _all_rows(cache, tap, rows_per_file)
            result["missing"][tap] = 0
        else:
            have = cache.contains(tap, [k if k is not None else "" for k in keys])
            idx = np.flatnonzero(have)
            result["missing"][tap] = int(len(keys) - idx.size)
            pieces = ((np.asarray(keys, dtype=object)[idx[s : s + rows_per_file]].tolist(),
                       cache.read(tap, [keys[i] for i in idx[s : s + rows_per_file]]),
                       {c: [v[i] for i in idx[s : s + rows_per_file]] for c, v in (meta or {}).items()})
                      for s in range(0, idx.size, rows_per_file))
        n, writer = 0, None
        try:
            for i, (k, codes, cols) in enumerate(pieces):
                n += len(k)
                table = {"key": k, **cols}
                if fmt == "npy":
                    emb, md = out_dir / tap / "emb", out_dir / tap / "metadata"
                    emb.mkdir(parents=True, exist_ok=True)
                    md.mkdir(parents=True, exist_ok=True)
                    target = emb / f"emb_{i:05d}.npy"
                    with _temporary(emb, "emb", ".npy") as tmp:
                        np.save(tmp, codes)
                        os.replace(tmp, target)
                    result["files"].append(target)
                    target = md / f"metadata_{i:05d}.{'parquet' if pa else 'csv'}"
                    with _temporary(md, "metadata", target.suffix) as tmp:
                        if pa is not None:
                            pq.write_table(pa.table(table), tmp) if target.suffix == ".parquet" else \
                                pacsv.write_csv(pa.table(table), tmp)
                        else:
                            _write_csv(tmp, table)
                        os.replace(tmp, target)
                    result["files"].append(target)
                else:
                    dim = codes.shape[1]
                    arrays = {c: pa.array(v) for c, v in table.items()}
                    arrays["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), dim)
                    batch = pa.table(arrays)
                    if writer is None:
                        out_dir.mkdir(parents=True, exist_ok=True)
                        target = out_dir / f"{tap}.parquet"
                        tmp = _tmp_name(out_dir, tap, ".parquet")
                        writer = pq.ParquetWriter(tmp, batch.schema)
                    writer.write_table(batch)
            if writer is not None:
                writer.close()
                os.replace(tmp, target)
                result["files"].append(target)
                writer = None
        except BaseException:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise
        result["rows"][tap] = n
    return result


def _all_rows(cache: FeatureCache, tap: str, step: int):
    """(keys, float32 codes, {}) blocks of every row of ``tap``, in the cache's order."""
    with cache._snapshot(tap) as blocks:
        for j, b in enumerate(blocks):
            keys = np.asarray(b.keys)
            for s in range(0, keys.size, step):
                k, rows = keys[s : s + step], np.arange(s, min(s + step, keys.size))
                if b.pending:  # journal or incoming rows: leave out what an earlier block holds
                    keep = np.ones(k.size, bool)
                    for e in blocks[:j]:
                        keep &= e.locate(k) < 0
                    k, rows = k[keep], rows[keep]
                if k.size:
                    yield k.astype("U32").tolist(), b.gather(rows), {}


def _write_csv(path: Path, table: dict) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(table))
        w.writerows(zip(*table.values()))
