"""Export: a cache's codes written for other tools (numpy + parquet/csv metadata, or one parquet table).

Streaming: at most ``rows_per_file`` rows are in memory at once.  An export is written whole
into a temporary folder beside its target (``.tmp-<name>-<pid>-<8 hex>``), which then replaces the
target as a whole (the old one is renamed aside, then deleted): an export never mixes with an
earlier one, and a failed or killed export leaves the previous target as it was and no partial
file (the next export to the same target removes a killed one's temporary folder).  The target
holds ``EXPORT.json`` (format, taps, rows); an existing target is replaced only when it is empty
or holds that file, so a mistyped ``--out`` never deletes a folder featx did not write.  The free
space is checked first (codes at 4 bytes a number, plus keys); a full disk is ENOSPC (h5py and
pyarrow's words for it included), with nothing left behind.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
from pathlib import Path

import numpy as np

from featx.cells import safe_cell
from featx.cache.files import as_disk_error, check_space, fsync_dir, temporary, tmp_name, write_json_atomic
from featx.cache.store import FeatureCache
from featx.errors import FeatxError
from featx.vocabulary import EXPORT_FORMATS


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
    if fmt not in EXPORT_FORMATS:
        raise FeatxError(f"expected {' or '.join(EXPORT_FORMATS)}, got {fmt!r}", param="format")
    arrow = _arrow(fmt)
    taps = _taps_to_export(cache, taps)
    out_dir = Path(out_dir)
    check_target(out_dir)
    write = write_npy if fmt == "npy" else write_parquet
    result = {"files": [], "rows": {}, "missing": {}}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_killed_exports(out_dir)
    check_space(out_dir.parent, export_bytes(cache, taps, keys))
    tmp = tmp_name(out_dir.parent, out_dir.name, "")
    try:
        tmp.mkdir()
        for tap in taps:
            pieces, result["missing"][tap] = tap_pieces(cache, tap, keys, meta, rows_per_file)
            result["rows"][tap] = write(tmp, tap, pieces, arrow, result["files"])
        write_json_atomic(tmp / EXPORT_MARK, {"format": fmt, "taps": taps, "rows": result["rows"],
                                              "cache": str(cache.path)})
        replace_folder(tmp, out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        disk = as_disk_error(exc, out_dir.parent)
        if disk is not exc:
            raise disk from None
        raise
    result["files"] = [out_dir / Path(f).relative_to(tmp) for f in result["files"]]
    return result


EXPORT_MARK = "EXPORT.json"  # in every export folder: what it holds, and that featx may replace it


def check_target(out_dir: Path) -> None:
    """Refuse a target that exists and is neither empty nor an earlier export (FeatxError naming --out)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FeatxError(f"{out_dir}: exists and is not a folder; choose another folder for the export",
                         param="out_dir")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / EXPORT_MARK).exists():
        raise FeatxError(f"{out_dir}: holds files that are not a featx export (no {EXPORT_MARK}); an export "
                         "replaces its folder as a whole: choose a new or empty folder", param="out_dir")


def export_bytes(cache: FeatureCache, taps: list, keys) -> int:
    """What an export writes, about: 4 bytes a number plus 64 bytes of key and metadata a row."""
    info = cache.info()["taps"]
    return sum((len(keys) if keys is not None else info.get(t, {}).get("rows", 0))
               * (4 * info.get(t, {}).get("dim", 0) + 64) for t in taps)


def remove_killed_exports(out_dir: Path) -> None:
    """Temporary export folders of ``out_dir`` that a killed process left (its pid is gone)."""
    for tmp in out_dir.parent.glob(f".tmp-{out_dir.name}-*"):
        rest = tmp.name[len(f".tmp-{out_dir.name}-"):]
        aside = rest.startswith("old-")  # the previous export, renamed aside just before the new one went in
        pid = rest.split("-")[1 if aside else 0]
        if not pid.isdigit() or _alive(int(pid)) or not tmp.is_dir():
            continue
        if aside and not out_dir.exists():
            os.replace(tmp, out_dir)  # killed between the two renames: the previous export comes back
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def replace_folder(new: Path, target: Path) -> None:
    """Put folder ``new`` in the place of ``target`` (renamed aside, then deleted)."""
    fsync_dir(new)
    if target.exists():
        old = tmp_name(target.parent, target.name + "-old", "")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
    fsync_dir(target.parent)


def _arrow(fmt: str):
    """(pyarrow, pyarrow.parquet), or None when pyarrow is missing and ``fmt`` can do without it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        if fmt == "parquet":
            raise FeatxError("parquet needs its extra: pip install 'featx[parquet]'", param="format") from None
        return None
    return pa, pq


def _taps_to_export(cache: FeatureCache, taps) -> list[str]:
    """``taps`` (default: every tap of the cache), each checked to be one of the cache's."""
    have = cache.taps()
    taps = list(taps or have)
    if not taps:
        raise FeatxError(f"{cache.path}: nothing to export (no rows committed); run featx extract")
    unknown = [t for t in taps if t not in have]
    if unknown:
        raise FeatxError(f"{', '.join(map(repr, unknown))}: not a tap of {cache.path}; its taps: "
                         f"{', '.join(have) or 'none (no rows committed)'}", param="taps")
    return taps


def tap_pieces(cache: FeatureCache, tap: str, keys, meta, step: int):
    """(an iterator of (keys, float32 codes, {column: values}) blocks of at most ``step`` rows,
    the number of ``keys`` without a row).  ``keys`` None: every row, in the cache's order."""
    if keys is None:
        return all_rows(cache, tap, step), 0
    have = cache.contains(tap, [k if k is not None else "" for k in keys])
    idx = np.flatnonzero(have)
    pieces = ((np.asarray(keys, dtype=object)[idx[s : s + step]].tolist(),
               cache.read(tap, [keys[i] for i in idx[s : s + step]]),
               {c: [v[i] for i in idx[s : s + step]] for c, v in (meta or {}).items()})
              for s in range(0, idx.size, step))
    return pieces, int(len(keys) - idx.size)


def all_rows(cache: FeatureCache, tap: str, step: int):
    """(keys, float32 codes, {}) blocks of every row of ``tap``, in the cache's order."""
    with cache.snapshot(tap) as blocks:
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


def write_npy(out_dir: Path, tap: str, pieces, arrow, files: list) -> int:
    """``<tap>/emb/emb_<i>.npy`` and ``<tap>/metadata/metadata_<i>.parquet`` (``.csv`` when ``arrow``
    is None) per piece; each path is added to ``files`` once written.  Returns the rows written."""
    n = 0
    for i, (k, codes, cols) in enumerate(pieces):
        n += len(k)
        table = {"key": k, **cols}
        emb, md = out_dir / tap / "emb", out_dir / tap / "metadata"
        emb.mkdir(parents=True, exist_ok=True)
        md.mkdir(parents=True, exist_ok=True)
        target = emb / f"emb_{i:05d}.npy"
        with temporary(emb, "emb", ".npy") as tmp:
            np.save(tmp, codes)
            os.replace(tmp, target)
        files.append(target)
        target = md / f"metadata_{i:05d}.{'parquet' if arrow else 'csv'}"
        with temporary(md, "metadata", target.suffix) as tmp:
            if arrow is not None:
                pa, pq = arrow
                pq.write_table(pa.table(table), tmp)
            else:
                write_csv(tmp, table)
            os.replace(tmp, target)
        files.append(target)
    return n


def write_parquet(out_dir: Path, tap: str, pieces, arrow, files: list) -> int:
    """``<tap>.parquet``: one table (``key``, meta columns, ``embedding`` as fixed-size lists), written
    piece by piece under a temporary name; added to ``files`` once renamed.  Returns the rows written."""
    pa, pq = arrow
    n, writer = 0, None
    try:
        for k, codes, cols in pieces:
            n += len(k)
            arrays = {c: pa.array(v) for c, v in {"key": k, **cols}.items()}
            arrays["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), codes.shape[1])
            batch = pa.table(arrays)
            if writer is None:
                out_dir.mkdir(parents=True, exist_ok=True)
                target = out_dir / f"{tap}.parquet"
                tmp = tmp_name(out_dir, tap, ".parquet")
                writer = pq.ParquetWriter(tmp, batch.schema)
            writer.write_table(batch)
        if writer is not None:
            writer.close()
            os.replace(tmp, target)
            files.append(target)
            writer = None
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    return n


def write_csv(path: Path, table: dict) -> None:
    """``table`` {column: values} as a CSV file with a header row (the metadata when pyarrow is missing)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([safe_cell(c) for c in table])
        w.writerows([safe_cell(v) for v in row] for row in zip(*table.values()))  # spreadsheet-safe (featx.cells)
