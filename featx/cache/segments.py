"""Segments: writing one immutable HDF5 file of rows, and reading its taps as lookup-ready blocks.

A segment holds, per tap, ``keys``, ``codes``, the sorted index ``sorted_keys``/``sorted_rows`` and
a Bloom filter (:mod:`featx.cache` documents the format).  Every dataset is contiguous and
uncompressed, so a reader maps the file and views each dataset at the byte offset the manifest
records (:meth:`Block.mapped`); codes are gathered with ``pread``.  A process keeps the last 256
segment mappings (:func:`map_segment`): committed segments never change.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import mmap
import os
import threading
import time
import uuid
from pathlib import Path

import h5py
import numpy as np

from featx.cache.bloom import bloom, bloom_bits
from featx.cache.errors import CacheDamagedError, repair_advice, why
from featx.cache.files import as_disk_error, check_space, fsync_dir, fsync_file, pread_rows, temporary
from featx.cache.layout import (
    DATASETS,
    FORMAT_VERSION,
    INDEX_DATASETS,
    KEY_DTYPE,
    as_keys,
    chained_crc,
    first_unique,
    row_checksums,
)
from featx.errors import FeatxError

_MAPS: collections.OrderedDict = collections.OrderedDict()  # (path,) -> (mmap, open file) of a segment
_MAPS_MAX = 256
_MAPS_LOCK = threading.Lock()
#: Whether reads check checksums (a segment tap's index when first mapped, each row as it is read).
#: Always True in use; ``scripts/bench_cache.py`` turns it off for a moment to measure what checking costs.
CHECK_READS = True


# ---- writing ---------------------------------------------------------------------------------
def segment_name() -> str:
    """A new segment file name: creation time first (names sort by age), then a random suffix."""
    return f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.h5"


def stamp(f, config: dict) -> None:
    """The attributes every segment file carries: the format version and its extractor configuration."""
    f.attrs["format"] = FORMAT_VERSION
    f.attrs["config"] = json.dumps(config, sort_keys=True)


@contextlib.contextmanager
def segment_file(folder: Path, name: str, config: dict, memory: bool = False):
    """Write a new segment ``folder/name``, whole or absent.

    Yields ``(f, entry, datasets)``: the open (temporary) HDF5 file, already stamped; the manifest
    entry ``{"name", "taps"}`` whose ``entry["taps"][tap]`` the caller fills with ``rows``, ``dim``
    and ``dtype``; and ``{tap: {dataset name: h5py.Dataset}}`` the caller fills as it creates them.
    On a normal exit the datasets' byte offsets and the CRC-32 of each tap's index datasets
    (``index_crc``, over :data:`~featx.cache.layout.INDEX_DATASETS` in that order, read back from the
    file) go into the entry, the file is fsynced and renamed to ``name``; on any exception the
    temporary file is removed.  The caller fsyncs ``folder`` and records ``entry["bytes"]``.

    ``memory``: HDF5 writes into memory and the finished file's bytes are written to disk by Python
    (a commit's new rows, already in memory): a full disk is then a plain ENOSPC from ``write``,
    never an HDF5 error in the middle of a file (HDF5 can crash the process after one).
    """
    entry = {"name": name, "taps": {}}
    with temporary(folder, "seg", ".h5") as tmp:
        image = io.BytesIO() if memory else None
        f = h5py.File(image if memory else tmp, "w")
        try:
            stamp(f, config)
            datasets: dict = {}
            yield f, entry, datasets
            f.flush()
            for tap, ds in datasets.items():
                entry["taps"][tap]["offsets"] = {k: d.id.get_offset() for k, d in ds.items()}
                entry["taps"][tap]["index_crc"] = chained_crc(ds[k][...] for k in INDEX_DATASETS if k in ds)
        except BaseException as exc:
            with contextlib.suppress(OSError):  # free the blocks first: HDF5 can then flush and close the
                os.truncate(tmp, 0)  # file (a failed close leaves ids whose later release crashes)
            close_quietly(f)
            disk = as_disk_error(exc, folder.parent)
            if disk is not exc:
                raise disk from None
            raise
        try:
            f.close()  # a full disk shows here too (HDF5 writes its metadata on close)
            if memory:
                with open(tmp, "wb") as fh:
                    fh.write(image.getbuffer())
        except (OSError, RuntimeError, ValueError) as exc:
            with contextlib.suppress(OSError):
                os.truncate(tmp, 0)
            close_quietly(f)
            raise as_disk_error(exc, folder.parent) from None
        fsync_file(tmp)
        os.replace(tmp, folder / name)


def close_quietly(f) -> None:
    """Close an h5py file after an error without a second error hiding the first (a full disk fails
    the close too); the temporary file is removed by the caller."""
    with contextlib.suppress(Exception):
        f.close()


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
    name = name or segment_name()
    check_space(folder.parent, segment_bytes(rows, dtype), margin=256 << 10)  # HDF5 fails late on a full disk, may crash
    with segment_file(folder, name, config, memory=True) as (f, entry, datasets):
        for tap, r in sorted(rows.items()):
            keys = as_keys(r.keys)
            if keys.size == 0:
                continue
            codes = np.asarray(r.codes)
            if codes.ndim != 2 or codes.shape[0] != keys.size:
                raise ValueError(f"tap {tap}: {keys.size} keys but codes of shape {codes.shape}")
            if not np.isfinite(codes).all():
                raise FeatxError(f"tap {tap}: the network gave NaN or infinite codes; they are never cached "
                             "(check the backbone's weights, or extract with --dtype float32)")
            order = np.argsort(keys, kind="stable")
            stored = codes.astype(dtype, copy=False)
            if not np.isfinite(stored).all():
                raise FeatxError(f"tap {tap}: codes overflow {dtype.name}; they are never cached "
                                 "(extract with --dtype float32)")
            g = f.create_group(f"taps/{tap}")
            datasets[tap] = {
                "keys": g.create_dataset("keys", data=keys),
                "codes": g.create_dataset("codes", data=stored),
                "sorted_keys": g.create_dataset("sorted_keys", data=keys[order]),
                "sorted_rows": g.create_dataset("sorted_rows", data=order.astype(np.int64)),
                "bloom": g.create_dataset("bloom", data=bloom(keys)),
                "codes_crc": g.create_dataset("codes_crc", data=row_checksums(stored)),
            }
            entry["taps"][tap] = {"rows": int(keys.size), "dim": int(codes.shape[1]), "dtype": dtype.name}
    fsync_dir(folder)
    entry["bytes"] = (folder / name).stat().st_size
    return entry


def segment_bytes(rows: dict, dtype: np.dtype) -> int:
    """About what a segment of ``rows`` {tap: TapRows} takes on disk: per row its codes, two keys, its
    sorted-row number and checksum, plus its Bloom filter and 64 kB of HDF5 metadata per tap."""
    total = 0
    for r in rows.values():
        n = int(np.asarray(r.keys).size)
        dim = int(np.asarray(r.codes).shape[-1]) if np.asarray(r.codes).ndim else 0
        total += n * (dim * dtype.itemsize + 2 * 32 + 8 + 4) + bloom_bits(n) // 8 + (64 << 10)
    return total


# ---- reading ---------------------------------------------------------------------------------
def segment_entry(path: Path, checksum: bool = False) -> dict:
    """Manifest entry of an existing segment file (read from the file itself); with ``checksum``,
    each tap's ``index_crc`` computed from the file's index datasets (taps with row checksums only).

    Raises
    ------
    FileNotFoundError
        The file is gone (the caller knows whether a commit may have moved it).
    CacheDamagedError
        The file is not a readable format-2 segment.
    """
    entry = {"name": path.name, "bytes": path.stat().st_size, "taps": {}}
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs.get("format", 0)) != FORMAT_VERSION:
                raise ValueError(f"not a format {FORMAT_VERSION} segment")
            for tap, g in f.get("taps", {}).items():
                entry["taps"][tap] = {"rows": int(g["keys"].shape[0]), "dim": int(g["codes"].shape[1]),
                                      "dtype": str(g["codes"].dtype),
                                      "offsets": {k: g[k].id.get_offset() for k in DATASETS if k in g}}
                if checksum and "codes_crc" in g:
                    entry["taps"][tap]["index_crc"] = chained_crc(g[k][...] for k in INDEX_DATASETS if k in g)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:  # KeyError: h5py's for a missing dataset
        raise CacheDamagedError(path, why(exc)) from None
    return entry


def unlisted_checksums(path: Path) -> bool:
    """Whether a segment file holds row checksums (``codes_crc``): a manifest entry of it without
    them is damage, not a segment written before checksums (read once per mapping of such an entry)."""
    try:
        return any("codes_crc" in t["offsets"] for t in segment_entry(path)["taps"].values())
    except CacheDamagedError:
        return False  # the mapping's own checks say what is wrong with the file


def map_segment(path: Path, keep: bool = True):
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
    m = (mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), fh, set())  # set: the taps whose index was checked
    if keep:
        with _MAPS_LOCK:
            _MAPS[key] = m
            while len(_MAPS) > _MAPS_MAX:
                _MAPS.popitem(last=False)  # unmapped once no array views it
    return m


def forget_maps(folder: Path, live: set) -> None:
    """Drop mappings of segments in ``folder`` that the manifest no longer names (their disk space
    is freed only when no process maps them)."""
    prefix = str(folder) + os.sep
    with _MAPS_LOCK:
        for key in [k for k in _MAPS if k[0].startswith(prefix) and Path(k[0]).name not in live]:
            del _MAPS[key]


class Block:
    """One tap of one segment (or journal part, or legacy file) as arrays a lookup can use.

    ``keys`` (N,) S32 and ``codes`` (N, D) in row order (codes: ndarray, memmap or h5py.Dataset);
    ``sorted_keys``/``sorted_rows`` the index (``keys[sorted_rows] == sorted_keys``, first
    occurrence of each key only).
    """

    def __init__(self, keys, codes, sorted_keys, sorted_rows, keep=None):
        self.keys, self.codes = keys, codes  # codes: ndarray, memmap or h5py.Dataset
        self.sorted_keys, self.sorted_rows = sorted_keys, sorted_rows
        self.keep = keep  # an open h5py.File to close with the snapshot
        self.pending = False  # journal part or incoming segment: may repeat a committed key
        self.codes_file = None  # (open file, byte offset) of contiguous codes, read with pread
        self.bloom = None  # the segment's Bloom filter over its keys, when it has one
        self.codes_crc = None  # (N,) uint32 CRC-32 of each row of codes as stored, when the segment has them
        self.path = None  # the segment file, to name in an error

    @property
    def rows(self) -> int:
        return int(self.sorted_keys.shape[0])

    @classmethod
    def from_arrays(cls, keys, codes):
        """A block over rows in memory (a journal part, a legacy file's tap); repeated keys: the first wins."""
        keys = as_keys(keys)
        first = first_unique(keys)
        order = first[np.argsort(keys[first], kind="stable")]
        return cls(keys, codes, keys[order], order)

    @classmethod
    def mapped(cls, path: Path, info: dict, keep_mapped: bool = True, size: int | None = None):
        """A block viewing a segment's tap in place (``info``: the tap's manifest entry; ``size``: the
        file's size the manifest records).

        The first time a process maps a tap, the CRC-32 of its index datasets is compared with the
        entry's ``index_crc`` (segments written before checksums have none: not checked); the
        codes are checked row by row as they are read (:meth:`gather`).

        Raises
        ------
        FileNotFoundError
            The file is gone.
        CacheDamagedError
            It cannot be mapped, is not the size its entry says, is too short for the offsets in
            ``info``, or its index does not match its checksum.
        """
        off = info["offsets"]
        n, d = info["rows"], info["dim"]
        try:
            buf, fh, checked = map_segment(path, keep_mapped)
        except FileNotFoundError:
            raise  # the caller knows whether a commit may have moved it
        except (OSError, ValueError) as exc:  # an empty file cannot be mapped
            raise CacheDamagedError(path, why(exc)) from None
        if size is not None and len(buf) != size:
            raise CacheDamagedError(path, f"{len(buf)} bytes, but its manifest entry says {size}")

        def view(name, dtype, shape):
            try:
                return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape)), offset=off[name]).reshape(shape)
            except ValueError:
                raise CacheDamagedError(path, f"{len(buf)} bytes, too short for the {name} its manifest entry "
                                              f"places at byte {off.get(name)}") from None

        block = cls(view("keys", KEY_DTYPE, (n,)), view("codes", info["dtype"], (n, d)),
                    view("sorted_keys", KEY_DTYPE, (n,)), view("sorted_rows", np.int64, (n,)))
        block.codes_file = (fh, off["codes"])  # the file as opened: valid even once unlinked
        block.path = path
        if off.get("bloom") is not None:
            block.bloom = view("bloom", np.uint8, (bloom_bits(n) // 8,))
        if off.get("codes_crc") is not None:
            block.codes_crc = view("codes_crc", np.uint32, (n,))
        tap_id = (off["keys"], info.get("index_crc"))
        if off.get("codes_crc") is None and tap_id not in checked and CHECK_READS:
            if unlisted_checksums(path):  # the entry lost them: never read a checked segment unchecked
                raise CacheDamagedError(path, "its manifest entry lacks the checksums the file holds",
                                        advice=repair_advice(path.parent.parent))
            checked.add(tap_id)
        if info.get("index_crc") is not None and tap_id not in checked and CHECK_READS:
            index = {"keys": block.keys, "sorted_keys": block.sorted_keys, "sorted_rows": block.sorted_rows,
                     "bloom": block.bloom, "codes_crc": block.codes_crc}
            if chained_crc(index[k] for k in INDEX_DATASETS if index[k] is not None) != info["index_crc"]:
                raise CacheDamagedError(path, "its keys or key index do not match their checksum", advice=(
                    "the checksum is the manifest's: " + repair_advice(path.parent.parent) + "; it leaves out "
                    "(and lists) a segment that is itself damaged"))
            checked.add(tap_id)
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
        """Codes of ``rows`` (any order, repeats allowed) as float32, (len(rows), D)."""
        uniq, inverse = np.unique(rows, return_inverse=True)
        if self.codes_file is not None:  # pread runs of rows: no mapping, so RSS stays what is returned
            data = pread_rows(*self.codes_file, self.codes.dtype, self.codes.shape[1], uniq)
            if self.codes_crc is not None and CHECK_READS:
                bad = np.flatnonzero(row_checksums(data) != self.codes_crc[uniq])
                if bad.size:
                    raise CacheDamagedError(self.path, f"{bad.size} row(s) of codes do not match their checksum "
                                                       f"(row {int(uniq[bad[0]])} first)")
            return data.astype(np.float32, copy=False)[inverse]
        if isinstance(self.codes, h5py.Dataset):
            data = self.codes[uniq] if uniq.size < self.codes.shape[0] // 4 else self.codes[:][uniq]
        else:
            data = self.codes[uniq]
        return np.asarray(data, dtype=np.float32)[inverse]
