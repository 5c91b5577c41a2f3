"""Format 1: the single ``<name>.h5`` file older versions wrote, read as it is and migrated by a commit.

A legacy file holds attributes ``config`` and ``provenance`` (JSON), an optional ``failures``
dataset (a JSON string) and, per tap, ``taps/<tap>/keys`` (N,) S32 and ``codes`` (N, D), possibly
chunked and with repeated keys (the first row of a key wins).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import featx.cache.layout as layout  # noqa: PLR0402 -- `from featx.cache import` would import the package, a cycle
from featx.cache.bloom import bloom
from featx.cache.errors import CacheDamagedError
from featx.cache.files import check_space, fsync_dir
from featx.cache.folder import CacheFolder
from featx.cache.layout import as_keys, first_unique, row_checksums
from featx.cache.segments import segment_file


def legacy_header(f) -> tuple[dict, dict, list]:
    """(config, provenance, failures) of an open legacy file."""
    config = json.loads(f.attrs["config"])
    prov = json.loads(f.attrs.get("provenance", "{}"))
    failures = json.loads(f["failures"][()]) if "failures" in f else []
    return config, prov, failures


def migrate_legacy(folder: CacheFolder) -> dict:
    """Copy the legacy single file into one segment, streaming its codes (keys in memory).

    Returns the new segment's manifest entry; the legacy file is left in place (the commit removes
    it once the new manifest names the segment).
    """
    folder.segments_dir.mkdir(parents=True, exist_ok=True)
    check_space(folder.path, folder.legacy.stat().st_size)  # the segment is about as large as the old file
    name = folder.new_segment_name()
    with folder.legacy_open() as old:
        config = json.loads(old.attrs["config"])
        dtype = np.dtype(config["dtype"])
        with segment_file(folder.segments_dir, name, config) as (f, entry, ds):
            for tap, g in old.get("taps", {}).items():
                _migrate_tap(f, tap, g, dtype, entry, ds)
    fsync_dir(folder.segments_dir)
    entry["bytes"] = (folder.segments_dir / name).stat().st_size
    return entry


def _migrate_tap(f, tap: str, g, dtype: np.dtype, entry: dict, ds: dict) -> None:
    """One tap of the legacy file (group ``g``) into the new segment ``f``, first row of each key only."""
    keys = as_keys(g["keys"][:])
    keep = first_unique(keys)
    if keep.size == 0:
        return
    dim = int(g["codes"].shape[1])
    order = np.argsort(keys[keep], kind="stable")
    t = f.create_group(f"taps/{tap}")
    ds[tap] = {"keys": t.create_dataset("keys", data=keys[keep]),
               "codes": t.create_dataset("codes", shape=(keep.size, dim), dtype=dtype),
               "sorted_keys": t.create_dataset("sorted_keys", data=keys[keep][order]),
               "sorted_rows": t.create_dataset("sorted_rows", data=order.astype(np.int64)),
               "bloom": t.create_dataset("bloom", data=bloom(keys[keep])),
               "codes_crc": t.create_dataset("codes_crc", shape=(keep.size,), dtype=np.uint32)}
    step = max(1, layout.COPY_BYTES // (dim * dtype.itemsize))
    contiguous = keep.size == keys.size
    for start in range(0, keep.size, step):
        sel = keep[start : start + step]
        block = (g["codes"][int(sel[0]) : int(sel[-1]) + 1] if contiguous else
                 g["codes"][sel])
        block = block.astype(dtype, copy=False)
        if not np.isfinite(block).all():
            raise CacheDamagedError(folder_file(g), f"tap {tap}: NaN or infinite codes near row {int(sel[0])}")
        ds[tap]["codes"][start : start + sel.size] = block
        ds[tap]["codes_crc"][start : start + sel.size] = row_checksums(block)
    entry["taps"][tap] = {"rows": int(keep.size), "dim": dim, "dtype": dtype.name}


def folder_file(g):
    """The path of the file an h5py group is in (to name it in an error)."""
    return Path(g.file.filename)


def legacy_info(folder: CacheFolder) -> dict:
    """What :meth:`FeatureCache.info` reports of a legacy file: its config, provenance, failures and taps."""
    out = {"file": str(folder.legacy), "format": layout.LEGACY_FORMAT, "size_bytes": folder.legacy.stat().st_size}
    with folder.legacy_open() as f:
        out["config"], out["provenance"], out["failures"] = legacy_header(f)
        out["taps"] = {tap: {"rows": int(g["keys"].shape[0]), "dim": int(g["codes"].shape[1]),
                             "dtype": str(g["codes"].dtype)} for tap, g in f["taps"].items()}
    return out
