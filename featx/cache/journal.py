"""The journal: rows a running extraction finished, each batch one ``journal/part-*.npz``, not committed yet.

A part is written whole or absent (temporary name, fsync, rename) and holds, per tap,
``keys__<tap>`` (N,) S32 and ``codes__<tap>`` (N, D).  A commit folds every part into one segment
(:mod:`featx.cache.commit`) and deletes them.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np

from featx.cache.errors import CacheDamagedError, part_advice, why
from featx.cache.files import temporary
from featx.cache.layout import KEY_DTYPE, TapRows, as_keys


def write_part(journal: Path, rows: dict[str, TapRows], number: int) -> Path:
    """Write ``rows`` {tap: TapRows} as ``journal/part-<time>-<pid>-<number>.npz``, atomically.

    ``number`` counts this process's parts (with the time and pid, the name is unique and sorts by age).
    Returns the part's path.
    """
    journal.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.time_ns():020d}-{os.getpid()}-{number:06d}.npz"
    arrays = {}
    for tap, r in rows.items():
        arrays[f"keys__{tap}"] = np.asarray(r.keys, dtype=KEY_DTYPE)
        arrays[f"codes__{tap}"] = r.codes
    with temporary(journal, "part", ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        final = journal / name
        os.replace(tmp, final)
    return final


def part_arrays(part: Path, folder: Path, tap: str | None = None) -> dict:
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
        raise CacheDamagedError(part, why(exc), folder, advice=part_advice(part)) from None


def part_taps(part: Path) -> set[str]:
    """The taps a part holds rows for (read from its zip directory only)."""
    with np.load(part) as z:
        return {k[len("keys__"):] for k in z.files if k.startswith("keys__")}


def journal_rows(parts: list[Path], folder: Path) -> dict:
    """{tap: (keys (N,) S32, codes (N, D))}: every part's rows, concatenated in part order."""
    journal: dict[str, list] = {}
    for p in parts:
        for tap, (k, c) in part_arrays(p, folder).items():
            journal.setdefault(tap, []).append((as_keys(k), c))
    return {t: (np.concatenate([k for k, _ in v]), np.concatenate([c for _, c in v])) for t, v in journal.items()}


def verify_part(part: Path) -> None:
    """Read every array of a part (raises whatever a damaged part raises)."""
    with np.load(part) as z:
        for name in z.files:
            z[name]
