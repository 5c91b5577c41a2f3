"""Whole-or-absent file writes and bounded raw reads of contiguous datasets.

Why here: every file the cache writes (segment, journal part, manifest, view, export) is written
under a temporary name, fsynced and renamed, and removed if anything fails (ENOSPC included);
every read of a segment's bytes outside a mapping goes through :func:`read_range` or
:func:`pread_rows`, which turn a short read into a :class:`~featx.cache.errors.CacheDamagedError`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from pathlib import Path

import numpy as np

from featx.cache.errors import CacheDamagedError, missing


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; best effort."""
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


def tmp_name(folder: Path, stem: str, suffix: str) -> Path:
    """``<folder>/.tmp-<stem>-<pid>-<random>.<suffix>``: the name a file is written under before its rename."""
    return folder / f".tmp-{stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


@contextlib.contextmanager
def temporary(folder: Path, stem: str, suffix: str):
    """A temporary path that is removed if the block raises anything (ENOSPC included)."""
    tmp = tmp_name(folder, stem, suffix)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def check_space(folder: Path, need: int, margin: int = 1 << 20) -> None:
    """Raise ENOSPC (an ``OSError`` naming ``folder``) when its disk has fewer than ``need`` +
    ``margin`` bytes free -- before a compaction or export starts writing, since HDF5 reports a
    full disk late (when a file is closed) and in words of its own."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < need + margin:
        raise OSError(errno.ENOSPC, f"No space left on device ({free} bytes free, {need + margin} needed)",
                      str(folder))


def as_disk_error(exc: BaseException, folder: Path) -> BaseException:
    """``exc`` as an ENOSPC OSError naming ``folder`` when it says the disk is full (ENOSPC, HDF5's
    "errno = 28" in a RuntimeError, numpy's "requested and 0 written"), or when it is an h5py error
    and the disk now has under 1 MB free; else ``exc`` itself.  (The error of a full disk otherwise
    names a temporary file that no longer exists.)"""
    if not isinstance(exc, (OSError, RuntimeError, ValueError)):
        return exc
    text = str(exc)
    try:
        st = os.statvfs(folder)
        low = st.f_bavail * st.f_frsize < (1 << 20)
    except OSError:
        low = False
    short = "requested and" in text and "written" in text  # numpy's words for a short write
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    if full or "errno = 28" in text or "No space left" in text or short or low:
        return OSError(errno.ENOSPC, "No space left on device", str(folder))
    return exc


def fsync_file(path: Path) -> None:
    """Flush a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict) -> None:
    """``data`` as sorted-keys JSON at ``path``: temporary file, fsync, ``os.replace``, fsync of the folder."""
    with temporary(path.parent, path.name, ".json") as tmp:
        with open(tmp, "w") as fh:
            json.dump(data, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    fsync_dir(path.parent)


def pread_rows(source, offset: int, dtype, dim: int, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of a contiguous (N, dim) dataset in ``source`` (a path or an
    open file) at byte ``offset``; one pread per run of adjacent rows.

    Returns
    -------
    ndarray, ``dtype``, shape (len(rows), dim)

    Raises
    ------
    CacheDamagedError
        The file ends before a row asked for.
    """
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


def read_range(path: Path, offset: int, dtype, start: int, count: int, row_shape=()) -> np.ndarray:
    """Rows ``start:start+count`` of a contiguous dataset at byte ``offset``, read (not mapped: RSS
    stays flat).

    Returns
    -------
    ndarray, ``dtype``, shape (count, *row_shape)

    Raises
    ------
    CacheDamagedError
        The file is missing or ends before the rows.
    """
    dtype = np.dtype(dtype)
    row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
    want = count * int(np.prod(row_shape, dtype=np.int64))
    try:
        with open(path, "rb") as fh:
            out = np.fromfile(fh, dtype=dtype, count=want, offset=offset + start * row_bytes)
    except FileNotFoundError:
        raise CacheDamagedError(path, missing(path)) from None
    if out.size != want:
        raise CacheDamagedError(path, f"file ends before the {count} rows at byte {offset + start * row_bytes}")
    return out.reshape((count, *row_shape))
