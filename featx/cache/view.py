"""``view.h5``: one HDF5 file of virtual datasets over every segment, for plain h5py users.

featx reads ``MANIFEST.json``, never this file; the view is consistent with the manifest or
absent.  Per tap, ``taps/<tap>/keys`` (N,) S32 and ``taps/<tap>/codes`` (N, D) concatenate the
segments in manifest order; attributes ``note``, ``config`` and ``generation`` (the manifest's).
It is rewritten (temporary name, rename) by every commit and compaction, and by any commit that
finds it stale; when it cannot be written, the stale one is deleted.  A plain h5py reader that
opened an older view keeps the old file (POSIX keeps an open file) and its segments stay on disk for
the garbage collection's grace period (:func:`featx.cache.layout.grace_seconds`), so it keeps
reading the rows it saw.
"""

from __future__ import annotations

import contextlib
import json
import os

import h5py
import numpy as np

from featx.cache.files import temporary
from featx.cache.folder import CacheFolder
from featx.cache.layout import KEY_DTYPE, manifest_rows


def virtual(group, name: str, shape: tuple, dtype, sources: list, source_name: str, fill=None) -> None:
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


def write_view(folder: CacheFolder, m: dict) -> None:
    """``view.h5``: per tap, one virtual ``keys`` and ``codes`` dataset over every segment of ``m``
    (deleted instead when it cannot be written: consistent or absent)."""
    try:
        with temporary(folder.path, "view", ".h5") as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["note"] = ("virtual view over segments/*.h5 at manifest generation "
                                   f"{m['generation']}; featx reads MANIFEST.json, not this file")
                f.attrs["config"] = json.dumps(m["config"], sort_keys=True)
                f.attrs["generation"] = int(m["generation"])
                for tap, total in manifest_rows(m).items():
                    segs = [(f"segments/{s['name']}", s["taps"][tap]["rows"]) for s in m["segments"]
                            if s["taps"].get(tap)]
                    info = next(s["taps"][tap] for s in m["segments"] if s["taps"].get(tap))
                    g = f.require_group(f"taps/{tap}")
                    virtual(g, "keys", (total,), KEY_DTYPE, segs, f"taps/{tap}/keys")
                    virtual(g, "codes", (total, info["dim"]), info["dtype"], segs, f"taps/{tap}/codes",
                            fill=np.nan)
            os.replace(tmp, folder.path / "view.h5")
    except OSError:
        with contextlib.suppress(OSError):  # a full disk: no view rather than a stale one
            (folder.path / "view.h5").unlink()


def drop_view(folder: CacheFolder) -> None:
    """Delete ``view.h5`` just before a manifest swap, so that a writer killed between the swap and
    the new view leaves no view rather than a stale one (an h5py reader holding it keeps its file)."""
    with contextlib.suppress(FileNotFoundError):
        (folder.path / "view.h5").unlink()


def view_sources(path) -> dict:
    """{tap: [segment file names]} that ``view.h5``'s codes read, in order, and its generation under
    ``None``.  Raises OSError (or KeyError/ValueError) when the file is not a readable view."""
    out: dict = {}
    with h5py.File(path, "r") as f:
        out[None] = int(f.attrs["generation"])
        for tap, g in f.get("taps", {}).items():
            out[tap] = [src.file_name.rsplit("/", 1)[-1] for src in g["codes"].virtual_sources()]
            if g["keys"].shape[0] != g["codes"].shape[0]:
                raise ValueError(f"tap {tap}: {g['keys'].shape[0]} keys but {g['codes'].shape[0]} rows")
    return out


def expected_sources(m: dict) -> dict:
    """What :func:`view_sources` says of the view of manifest ``m``."""
    out: dict = {None: int(m["generation"])}
    for s in m["segments"]:
        for tap, info in s["taps"].items():
            if info["rows"]:
                out.setdefault(tap, []).append(s["name"])
    return out


def view_problem(folder: CacheFolder, m: dict) -> str:
    """What is wrong with ``view.h5`` against manifest ``m`` ('' when it matches, or is absent)."""
    path = folder.path / "view.h5"
    if not path.exists():
        return ""
    try:
        found = view_sources(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        return f"view.h5 is unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if found != expected_sources(m):
        return (f"view.h5 does not match the manifest (its generation {found.get(None)}, the manifest's "
                f"{m['generation']}): the next commit or 'featx cache compact' rewrites it")
    return ""


def refresh_view(folder: CacheFolder, m: dict) -> None:
    """Rewrite ``view.h5`` when it is missing or does not match ``m`` (a commit with nothing to add)."""
    if not (folder.path / "view.h5").exists() or view_problem(folder, m):
        write_view(folder, m)
