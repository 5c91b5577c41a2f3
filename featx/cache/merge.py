"""Merging segments into one new segment, streaming: memory stays bounded whatever the cache size.

Codes are copied in blocks of at most ``layout.COPY_BYTES``; the sorted key index is built by a
k-way merge of the segments' own indexes, in blocks of ``_MERGE_KEY_BYTES`` of keys for all
segments together.  Used by compaction (every segment into one) and by a commit adopting many
workers' segments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import featx.cache.layout as layout  # noqa: PLR0402 -- `from featx.cache import` would import the package, a cycle
from featx.cache.bloom import bloom_bits, bloom_set
from featx.cache.errors import CacheDamagedError
from featx.cache.files import check_space, fsync_dir, read_range
from featx.cache.layout import KEY_DTYPE, row_checksums
from featx.cache.segments import segment_file, segment_name

_MERGE_KEY_BYTES = 16 << 20  # budget for the k-way merge's key buffers, all segments together


def merge_segments(segments_dir: Path, srcs: list, config: dict, name: str | None = None) -> dict:
    """One new segment ``name`` (default: a new name) in ``segments_dir`` holding the rows of ``srcs``
    [(path, manifest entry)], in order, streaming.  Keys must not repeat across ``srcs``.  Returns
    its manifest entry; on any exception the new file is removed."""
    segments_dir.mkdir(parents=True, exist_ok=True)
    check_space(segments_dir.parent, sum(e.get("bytes", 0) for _, e in srcs))  # as large as its sources
    taps = sorted({t for _, e in srcs for t in e["taps"]})
    name = name or segment_name()
    with segment_file(segments_dir, name, config) as (f, entry, ds):
        for tap in taps:
            tap_srcs = [(path, e["taps"][tap]) for path, e in srcs if e["taps"].get(tap, {}).get("rows")]
            if tap_srcs:
                ds[tap] = merge_tap(f, tap, tap_srcs)
                entry["taps"][tap] = {"rows": int(ds[tap]["keys"].shape[0]),
                                      "dim": int(ds[tap]["codes"].shape[1]),
                                      "dtype": str(ds[tap]["codes"].dtype)}
    try:
        fsync_dir(segments_dir)
        entry["bytes"] = (segments_dir / name).stat().st_size
    except BaseException:
        (segments_dir / name).unlink(missing_ok=True)
        raise
    return entry


def merge_tap(f, tap: str, srcs: list) -> dict:
    """Concatenate ``srcs`` [(path, tap's manifest entry)] into a new group ``taps/<tap>`` of ``f``;
    merge their sorted indexes (bounded memory).  Returns {dataset name: h5py.Dataset}."""
    dim, dtype = srcs[0][1]["dim"], np.dtype(srcs[0][1]["dtype"])
    sizes = [info["rows"] for _, info in srcs]
    total = sum(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    g = f.create_group(f"taps/{tap}")
    out = {"keys": g.create_dataset("keys", shape=(total,), dtype=KEY_DTYPE),
           "codes": g.create_dataset("codes", shape=(total, dim), dtype=dtype),
           "sorted_keys": g.create_dataset("sorted_keys", shape=(total,), dtype=KEY_DTYPE),
           "sorted_rows": g.create_dataset("sorted_rows", shape=(total,), dtype=np.int64),
           "codes_crc": g.create_dataset("codes_crc", shape=(total,), dtype=np.uint32)}
    flags = _copy_rows(srcs, starts, out, dim, dtype)
    out["bloom"] = g.create_dataset("bloom", data=np.packbits(flags, bitorder="little"))
    out = {k: out[k] for k in ("keys", "codes", "sorted_keys", "sorted_rows", "bloom", "codes_crc")}
    del flags
    _merge_index(srcs, starts, out, total)
    return out


def _copy_rows(srcs: list, starts: np.ndarray, out: dict, dim: int, dtype: np.dtype) -> np.ndarray:
    """Copy keys and codes segment after segment, in blocks, checking each source row against its
    checksum (when the source has them) and writing the new segment's; returns the (unpacked) Bloom
    flags of every key copied.  A row that fails its check is a CacheDamagedError: a compaction
    never carries a damaged row into a new segment."""
    step = max(1, layout.COPY_BYTES // (dim * dtype.itemsize))
    flags = np.zeros(bloom_bits(int(starts[-1])), bool)
    for (path, info), at in zip(srcs, starts):  # rows: segment after segment, in blocks
        off = info["offsets"]
        for s in range(0, info["rows"], step):
            n = min(step, info["rows"] - s)
            keys = read_range(path, off["keys"], KEY_DTYPE, s, n)
            out["keys"][at + s : at + s + n] = keys
            bloom_set(flags, keys)
            codes = read_range(path, off["codes"], dtype, s, n, (dim,))
            crc = row_checksums(codes)
            if off.get("codes_crc") is not None and not np.array_equal(
                    crc, read_range(path, off["codes_crc"], np.uint32, s, n)):
                raise CacheDamagedError(path, f"rows {s}..{s + n - 1}: codes do not match their checksum")
            out["codes"][at + s : at + s + n] = codes
            out["codes_crc"][at + s : at + s + n] = crc
    return flags


def _merge_index(srcs: list, starts: np.ndarray, out: dict, total: int) -> None:
    """Fill ``sorted_keys``/``sorted_rows`` by a k-way merge of the sources' indexes, in blocks:
    each round emits every buffered key up to the smallest buffered maximum."""
    block = max(256, _MERGE_KEY_BYTES // (32 * len(srcs)))
    cursor = [0] * len(srcs)
    written = 0
    while written < total:  # k-way merge: emit every key up to the smallest buffered maximum
        bufs = {}
        for i, (path, info) in enumerate(srcs):
            if cursor[i] < info["rows"]:
                n = min(block, info["rows"] - cursor[i])
                bufs[i] = read_range(path, info["offsets"]["sorted_keys"], KEY_DTYPE, cursor[i], n)
        limits = [b[-1] for i, b in bufs.items() if cursor[i] + b.size < srcs[i][1]["rows"]]
        bound = min(limits) if limits else None
        keys, rows = [], []
        for i, b in bufs.items():
            n = b.size if bound is None else int(np.searchsorted(b, bound, side="right"))
            if n:
                keys.append(b[:n])
                rows.append(read_range(srcs[i][0], srcs[i][1]["offsets"]["sorted_rows"], np.int64,
                                       cursor[i], n) + starts[i])
                cursor[i] += n
        keys, rows = np.concatenate(keys), np.concatenate(rows)
        order = np.argsort(keys, kind="stable")  # ties: the earlier segment first
        out["sorted_keys"][written : written + keys.size] = keys[order]
        out["sorted_rows"][written : written + keys.size] = rows[order]
        written += keys.size
