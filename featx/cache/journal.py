"""The journal: rows a running extraction finished, each batch one ``journal/part-*.npz``, not committed yet.

A part is written whole or absent (temporary name, fsync, rename) and holds, per tap,
``keys__<tap>`` (N,) S32, ``codes__<tap>`` (N, D) and ``crc__<tap>`` (N,) uint32, the CRC-32 of
each row of codes (parts written before checksums have none and are read unchecked).  A part is
checked whenever it is read: 1-D keys of 32 characters, 2-D float codes with one row per key,
finite values, the checksums; a part that fails is a :class:`CacheDamagedError` naming it, so its
rows are never committed.  A commit folds every part into one segment (:mod:`featx.cache.commit`)
and deletes them.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np

from featx.cache.errors import CacheDamagedError, part_advice, why
from featx.cache.files import temporary
from featx.cache.layout import KEY_DTYPE, TapRows, as_keys, row_checksums
from featx.errors import FeatxError


def write_part(journal: Path, rows: dict[str, TapRows], number: int) -> Path:
    """Write ``rows`` {tap: TapRows} as ``journal/part-<time>-<pid>-<number>.npz``, atomically.

    ``number`` counts this process's parts (with the time and pid, the name is unique and sorts by age).
    Returns the part's path.
    """
    journal.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.time_ns():020d}-{os.getpid()}-{number:06d}.npz"
    arrays = {}
    for tap, r in rows.items():
        keys, codes = np.asarray(r.keys, dtype=KEY_DTYPE).reshape(-1), np.asarray(r.codes)
        if codes.ndim != 2 or codes.shape[0] != keys.size or codes.dtype.kind != "f":
            raise ValueError(f"tap {tap}: {keys.size} keys but codes of shape {codes.shape} ({codes.dtype})")
        if not np.isfinite(codes).all():
            raise FeatxError(f"tap {tap}: the network gave NaN or infinite codes; they are never cached "
                             "(check the backbone's weights, or extract with --dtype float32)")
        arrays[f"keys__{tap}"] = keys
        arrays[f"codes__{tap}"] = codes
        arrays[f"crc__{tap}"] = row_checksums(codes)
    with temporary(journal, "part", ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        final = journal / name
        os.replace(tmp, final)
    return final


def part_arrays(part: Path, folder: Path, tap: str | None = None, widths: dict | None = None) -> dict:
    """{tap: (keys, codes)} of a journal part (only ``tap`` when given).  A missing part stays
    FileNotFoundError (a commit may have folded it in meanwhile); one that cannot be read, or whose
    codes of a tap are not as wide as ``widths`` {tap: width} says (the committed segments' widths,
    :func:`~featx.cache.schema.tap_widths`), is a :class:`CacheDamagedError`."""
    try:
        with np.load(part, allow_pickle=False) as z:
            names = [k[len("keys__"):] for k in z.files if k.startswith("keys__")]
            out = {t: (z[f"keys__{t}"], z[f"codes__{t}"], z[f"crc__{t}"] if f"crc__{t}" in z.files else None)
                   for t in names if tap is None or t == tap}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CacheDamagedError(part, why(exc), folder, advice=part_advice(part)) from None
    for t, (keys, codes, crc) in out.items():
        problem = rows_problem(keys, codes, crc)
        if not problem and widths and t in widths and codes.shape[1] != widths[t]:
            problem = f"codes {codes.shape[1]} wide, but the cache's codes of this tap are {widths[t]} wide"
        if problem:
            raise CacheDamagedError(part, f"tap {t}: {problem}", folder, advice=part_advice(part))
    return {t: (k, c) for t, (k, c, _) in out.items()}


def rows_problem(keys, codes, crc) -> str:
    """What is wrong with a part's rows of one tap (shapes, types, values, checksums); '' when sound."""
    if keys.ndim != 1 or keys.dtype.kind != "S" or keys.dtype.itemsize > 32:
        return f"keys of shape {keys.shape} and type {keys.dtype}, expected (N,) S32"
    if codes.ndim != 2 or codes.shape[0] != keys.size or codes.dtype.kind != "f" or codes.shape[1] < 1:
        return f"{keys.size} keys but codes of shape {codes.shape} and type {codes.dtype}"
    if any(len(k) != 32 for k in keys.tolist()):
        return "a key is not 32 characters"
    if crc is not None and (crc.shape != keys.shape or not np.array_equal(row_checksums(codes), crc)):
        return "codes do not match their checksum"
    if not np.isfinite(codes).all():
        return "codes hold NaN or infinite values"
    return ""


def part_taps(part: Path) -> set[str]:
    """The taps a part holds rows for (read from its zip directory only); a part that cannot be
    read is a :class:`CacheDamagedError`, a missing one FileNotFoundError."""
    try:
        with np.load(part, allow_pickle=False) as z:
            return {k[len("keys__"):] for k in z.files if k.startswith("keys__")}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CacheDamagedError(part, why(exc), part.parent.parent, advice=part_advice(part)) from None


def journal_rows(parts: list[Path], folder: Path, widths: dict | None = None) -> dict:
    """{tap: (keys (N,) S32, codes (N, D))}: every part's rows, concatenated in part order.

    Each part's codes must be as wide as ``widths`` {tap: width} says (the committed segments',
    :func:`~featx.cache.schema.tap_widths`) or, for a tap not in it, as the first part's: a part that is not is a :class:`CacheDamagedError`
    naming it (nothing is committed)."""
    journal: dict[str, list] = {}
    widths = dict(widths or {})
    for p in parts:
        for tap, (k, c) in part_arrays(p, folder, widths=widths).items():
            widths.setdefault(tap, c.shape[1])
            journal.setdefault(tap, []).append((as_keys(k), c))
    return {t: (np.concatenate([k for k, _ in v]), np.concatenate([c for _, c in v])) for t, v in journal.items()}


def verify_part(part: Path, widths: dict | None = None) -> dict:
    """Read and check every array of a part, its widths against ``widths`` {tap: width}; returns
    {tap: width} of its codes (raises CacheDamagedError, or whatever a damaged part raises)."""
    return {t: c.shape[1] for t, (_, c) in part_arrays(part, part.parent.parent, widths=widths).items()}
