"""Verification: every file of a cache folder read once, in blocks, and each problem found listed.

Nothing raises for damage here (``featx cache verify`` prints the list) and nothing is repaired.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

import featx.cache.layout as layout  # noqa: PLR0402 -- `from featx.cache import` would import the package, a cycle
from featx.cache.bloom import bloom_bits, bloom_test, key_hashes
from featx.cache.errors import CacheDamagedError, missing, repair_advice, why
from featx.cache.files import read_range
from featx.cache.folder import CacheFolder
from featx.cache.journal import verify_part
from featx.cache.layout import INDEX_DATASETS, KEY_DTYPE, MANIFEST, cache_path, chained_crc, row_checksums
from featx.cache.schema import tap_widths
from featx.cache.segments import segment_entry
from featx.cache.view import view_problem


def verify(folder: CacheFolder) -> list[str]:
    """Problems found (empty when the cache is sound): manifest, committed segments, a legacy file,
    pending files, ``view.h5`` and segment files nothing names.  A check that a writer's manifest
    swap overtook (a segment gone, a new generation) is done again, up to 3 times: no writer's lock
    is taken."""
    for _ in range(3):
        before = _generation(folder)
        problems = _verify_once(folder)
        if _generation(folder) == before:
            break
    return problems


def _generation(folder: CacheFolder):
    try:
        return (folder.manifest() or {}).get("generation")
    except CacheDamagedError:
        return None


def _verify_once(folder: CacheFolder) -> list[str]:
    try:
        m = folder.manifest()
    except CacheDamagedError as exc:
        return [f"{MANIFEST} is damaged ({exc.detail}): it lists the cache's segments; "
                f"{repair_advice(folder.path)}"] + verify_pending(folder)
    if m is None:
        if folder.legacy.exists():
            return verify_legacy(folder.legacy) + verify_pending(folder)
        return ["no manifest: not a cache folder (or nothing committed yet)"] + verify_pending(folder)
    problems = verify_committed(folder, m) + verify_pending(folder, tap_widths(m))
    view = view_problem(folder, m)
    if view:
        problems.append(view)
    problems += [f"segment file {p.name}: named by no manifest featx wrote (left in place, never deleted by "
                 "featx; 'featx cache repair' can take its rows in when the manifest is lost)"
                 for p in folder.unknown_segments(m)]
    return problems


def verify_committed(folder: CacheFolder, m: dict) -> list[str]:
    """Problems of the segments manifest ``m`` names: each against its entry, and keys across segments."""
    problems = []
    try:
        if cache_path(folder.path.parent, m["config"]).name != folder.path.name:
            problems.append("folder name does not match its configuration hash")
        all_keys: dict[str, list] = {}
        for seg in m["segments"]:
            _verify_segment(folder.segments_dir / seg["name"], seg, all_keys, problems)
        for tap, parts in all_keys.items():
            keys = np.concatenate(parts)
            if np.unique(keys).size != keys.size:
                problems.append(f"tap {tap}: a key has rows in more than one segment")
    except (OSError, KeyError, ValueError, TypeError) as exc:
        problems.append(f"cannot read: {exc}")
    return problems


def _verify_segment(path: Path, seg: dict, all_keys: dict, problems: list) -> None:
    """Append the problems of one committed segment to ``problems``; add its sorted keys to
    ``all_keys`` {tap: [keys]}."""
    try:
        actual = segment_entry(path)
        for tap, info in seg["taps"].items():
            a = actual["taps"].get(tap)
            lost = a is not None and a["offsets"].get("codes_crc") is not None and info.get("index_crc") is None
            if lost or a is None or any(a[k] != info[k] for k in ("rows", "dim", "dtype")) or any(
                    a["offsets"].get(k) != v for k, v in info["offsets"].items()):
                problems.append(f"segment {seg['name']} tap {tap}: " + (
                    "its manifest entry lacks the checksums the file holds; " + repair_advice(path.parent.parent)
                    if lost else "does not match the manifest"))
                continue
            problems += [f"segment {seg['name']} tap {tap}: {p}" for p in verify_block(path, info)]
            all_keys.setdefault(tap, []).append(
                read_range(path, info["offsets"]["sorted_keys"], KEY_DTYPE, 0, info["rows"]))
    except CacheDamagedError as exc:
        problems.append(f"segment {seg['name']}: cannot read: {exc.detail}")
    except FileNotFoundError:
        problems.append(f"segment {seg['name']}: {missing(path)}")
    except (OSError, ValueError, KeyError) as exc:
        problems.append(f"segment {seg['name']}: cannot read: {why(exc)}")


def verify_block(path: Path, info: dict) -> list[str]:
    """Problems of one tap of a segment (``info``: its manifest entry): keys, index, Bloom filter, codes."""
    problems = []
    n, dim, off = info["rows"], info["dim"], info["offsets"]
    keys = read_range(path, off["keys"], KEY_DTYPE, 0, n)
    sk = read_range(path, off["sorted_keys"], KEY_DTYPE, 0, n)
    sr = read_range(path, off["sorted_rows"], np.int64, 0, n)
    crc = read_range(path, off["codes_crc"], np.uint32, 0, n) if off.get("codes_crc") is not None else None
    if info.get("index_crc") is not None:
        index = {"keys": keys, "sorted_keys": sk, "sorted_rows": sr, "codes_crc": crc,
                 "bloom": (read_range(path, off["bloom"], np.uint8, 0, bloom_bits(n) // 8)
                           if off.get("bloom") is not None else None)}
        if chained_crc(index[k] for k in INDEX_DATASETS if index[k] is not None) != info["index_crc"]:
            problems.append("keys or key index do not match their checksum")
    if any(len(x) != 32 for x in keys.tolist()):
        problems.append("malformed keys")
    elif off.get("bloom") is not None and n and not bloom_test(
            read_range(path, off["bloom"], np.uint8, 0, bloom_bits(n) // 8), *key_hashes(keys)).all():
        problems.append("Bloom filter misses a key")
    if n and ((sr < 0).any() or (sr >= n).any() or not np.array_equal(keys[np.clip(sr, 0, n - 1)], sk)):
        problems.append("key index does not match the keys")
    elif n > 1 and (sk[1:] <= sk[:-1]).any():
        problems.append("duplicate keys" if (sk[1:] == sk[:-1]).any() else "key index not sorted")
    dtype = np.dtype(info["dtype"])
    step = max(1, layout.COPY_BYTES // (dim * dtype.itemsize))
    for start in range(0, n, step):
        try:
            block = read_range(path, off["codes"], dtype, start, min(step, n - start), (dim,))
        except CacheDamagedError:
            problems.append("codes truncated")
            break
        if crc is not None:
            bad = np.flatnonzero(row_checksums(block) != crc[start : start + block.shape[0]])
            if bad.size:
                problems.append(f"{bad.size} row(s) of codes do not match their checksum (row {start + bad[0]} first)")
                break
        if not np.isfinite(block).all():
            problems.append(f"non-finite values near row {start}")
            break
    return problems  # a segment without checksums (written before them) is read unchecked, not a problem


def verify_legacy(legacy: Path) -> list[str]:
    """Problems of a legacy single-file cache."""
    problems = []
    try:
        with h5py.File(legacy, "r") as f:
            config = json.loads(f.attrs["config"])
            if cache_path(legacy.parent, config).name + ".h5" != legacy.name:
                problems.append("file name does not match its configuration hash")
            for tap, g in f["taps"].items():
                _verify_legacy_tap(g, f"tap {tap}: ", problems)
    except (OSError, KeyError, ValueError) as exc:
        problems.append(f"cannot read: {exc}")
    return problems


def _verify_legacy_tap(g, prefix: str, problems: list) -> None:
    """Append the problems of one tap (group ``g``) of a legacy file to ``problems``."""
    keys, codes = g["keys"], g["codes"]
    if keys.shape[0] != codes.shape[0]:
        problems.append(f"{prefix}{keys.shape[0]} keys but {codes.shape[0]} rows")
    k = keys[:]
    if len(set(k.tolist())) != k.size:
        problems.append(f"{prefix}duplicate keys")
    if any(len(x) != 32 for x in k.tolist()):
        problems.append(f"{prefix}malformed keys")
    for start in range(0, codes.shape[0], 8192):
        if not np.isfinite(codes[start : start + 8192]).all():
            problems.append(f"{prefix}non-finite values near row {start}")
            break


def verify_pending(folder: CacheFolder, widths: dict | None = None) -> list[str]:
    """Problems of the journal parts and incoming segments (rows not committed yet); each tap's codes
    must be as wide as ``widths`` {tap: width} (the committed segments') or the first part's."""
    problems = []
    widths = dict(widths or {})
    for part in folder.parts():
        try:
            for tap, width in verify_part(part, widths).items():
                widths.setdefault(tap, width)
        except Exception as exc:  # noqa: BLE001
            detail = exc.detail if isinstance(exc, CacheDamagedError) else why(exc)
            problems.append(f"journal part {part.name} unreadable: {detail}")
    for inc in folder.incoming():
        try:
            entry = segment_entry(inc)
            for tap, info in entry["taps"].items():
                problems += [f"incoming {inc.name} tap {tap}: {p}" for p in verify_block(inc, info)]
                if widths.setdefault(tap, info["dim"]) != info["dim"]:
                    problems.append(f"incoming {inc.name} tap {tap}: codes {info['dim']} wide, but the cache's "
                                    f"are {widths[tap]} wide")
        except Exception as exc:  # noqa: BLE001
            detail = exc.detail if isinstance(exc, CacheDamagedError) else why(exc)
            problems.append(f"incoming segment {inc.name} unreadable: {detail}")
    return problems
