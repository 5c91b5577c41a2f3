"""``view.h5``: one HDF5 file of virtual datasets over every segment, for plain h5py users.

A convenience only: featx reads ``MANIFEST.json``, never this file, and a failure to write it is
ignored.  Per tap, ``taps/<tap>/keys`` (N,) S32 and ``taps/<tap>/codes`` (N, D) concatenate the
segments in manifest order (codes read as NaN where a segment file is unreadable); attributes
``note`` and ``config``.
"""

from __future__ import annotations

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
    """``view.h5``: per tap, one virtual ``keys`` and ``codes`` dataset over every segment of ``m``."""
    try:
        with temporary(folder.path, "view", ".h5") as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["note"] = ("virtual view over segments/*.h5 at manifest generation "
                                   f"{m['generation']}; featx reads MANIFEST.json, not this file")
                f.attrs["config"] = json.dumps(m["config"], sort_keys=True)
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
        pass  # a convenience only: the manifest is the cache
