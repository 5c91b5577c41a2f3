"""The schema of the JSON files the cache writes (``MANIFEST.json``, ``RECORD.json``), checked before use.

Why: a reader views a segment's bytes at the offsets the manifest gives, so a manifest of the
right JSON but the wrong shape (a string for a row count, an offset past the end of the file,
two datasets overlapping, a dtype other than the configuration's) would crash a command or,
worse, give wrong rows.  Each check here returns what is wrong in a few words (empty: sound);
the caller turns it into a :class:`~featx.cache.errors.CacheDamagedError` naming the file.
"""

from __future__ import annotations

import re

import numpy as np

from featx.cache.bloom import bloom_bits
from featx.cache.layout import FORMAT_VERSION, KEY_DTYPE

SEGMENT_NAME = re.compile(r"seg-[0-9]{1,20}-[0-9a-f]{8}\.h5")
REQUIRED = ("keys", "codes", "sorted_keys", "sorted_rows")  # every tap of a segment has these datasets
CODE_DTYPES = ("float16", "float32")


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def manifest_problem(m) -> str:
    """What is wrong with a parsed ``MANIFEST.json`` (types, ranges, offsets and sizes); '' when sound."""
    if not isinstance(m, dict):
        return "not a cache manifest: not a JSON object"
    if not isinstance(m.get("config"), dict) or not isinstance(m.get("segments"), list):
        return "not a cache manifest: no config or segment list"
    if m.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        return f"format {m.get('format')!r}, expected {FORMAT_VERSION}"
    if not _int(m.get("generation", 0)) or m.get("generation", 0) < 0:
        return f"generation {m.get('generation')!r} is not a whole number >= 0"
    dtype = m["config"].get("dtype", "float32")
    if dtype not in CODE_DTYPES:
        return f"config dtype {dtype!r} is not one of {', '.join(CODE_DTYPES)}"
    for key in ("provenance",):
        if not isinstance(m.get(key, {}), dict):
            return f"{key} is not a JSON object"
    failures = m.get("failures", [])
    if not isinstance(failures, list) or not all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in failures):
        return "failures is not a list of [path, reason] pairs"
    names = set()
    for i, seg in enumerate(m["segments"]):
        problem = segment_problem(seg, dtype)
        if problem:
            return f"segment {i}: {problem}"
        if seg["name"] in names:
            return f"segment {seg['name']} is listed twice"
        names.add(seg["name"])
    widths: dict = {}
    for seg in m["segments"]:
        for tap, info in seg["taps"].items():
            if widths.setdefault(tap, info["dim"]) != info["dim"]:
                return (f"tap {tap}: segment {seg['name']} holds codes {info['dim']} wide, "
                        f"an earlier segment {widths[tap]} wide")
    return ""


def tap_widths(m: dict | None) -> dict:
    """{tap: width of its codes} as the segments of a sound manifest ``m`` record them (they agree:
    :func:`manifest_problem`); empty for None."""
    return {tap: info["dim"] for seg in (m or {}).get("segments", []) for tap, info in seg["taps"].items()}


def segment_problem(seg, dtype: str) -> str:
    """What is wrong with one segment entry of a manifest; '' when sound."""
    if not isinstance(seg, dict) or not isinstance(seg.get("name"), str) or not SEGMENT_NAME.fullmatch(seg["name"]):
        return "not a segment entry (a name seg-<digits>-<8 hex>.h5 expected)"
    size = seg.get("bytes")
    if not _int(size) or size < 0:
        return f"{seg['name']}: bytes {size!r} is not a whole number >= 0"
    if not isinstance(seg.get("taps"), dict):
        return f"{seg['name']}: taps is not a JSON object"
    for tap, info in seg["taps"].items():
        problem = tap_problem(info, dtype, size)
        if problem:
            return f"{seg['name']} tap {tap}: {problem}"
    return ""


def dataset_bytes(info: dict) -> dict:
    """{dataset: its size in bytes} of a tap entry (the Bloom filter's as :mod:`featx.cache.bloom` sizes it)."""
    from_rows = info["rows"]
    key = np.dtype(KEY_DTYPE).itemsize
    out = {"keys": from_rows * key, "sorted_keys": from_rows * key, "sorted_rows": from_rows * 8,
           "codes": from_rows * info["dim"] * np.dtype(info["dtype"]).itemsize, "codes_crc": from_rows * 4}
    if info["offsets"].get("bloom") is not None:
        out["bloom"] = bloom_bits(from_rows) // 8
    return {k: v for k, v in out.items() if info["offsets"].get(k) is not None}


def tap_problem(info, dtype: str, size: int) -> str:
    """What is wrong with one tap entry: types and ranges, then every dataset inside the file and none
    overlapping another; '' when sound."""
    if not isinstance(info, dict):
        return "not a JSON object"
    for key, low in (("rows", 0), ("dim", 1)):
        if not _int(info.get(key)) or info[key] < low:
            return f"{key} {info.get(key)!r} is not a whole number >= {low}"
    if info.get("dtype") != dtype:
        return f"dtype {info.get('dtype')!r}, but the configuration's is {dtype!r}"
    off = info.get("offsets")
    if not isinstance(off, dict) or any(k not in off for k in REQUIRED):
        return f"offsets must name {', '.join(REQUIRED)}"
    if not all(v is None or (_int(v) and v >= 0) for v in off.values()) or any(off[k] is None for k in REQUIRED):
        return "an offset is not a whole number >= 0"
    if "index_crc" in info and (not _int(info["index_crc"]) or not 0 <= info["index_crc"] < 2**32):
        return f"index_crc {info['index_crc']!r} is not a CRC-32"
    if ("index_crc" in info) != (off.get("codes_crc") is not None):  # both, or neither (before checksums)
        return "index_crc and the codes_crc offset come together (one is missing)"
    if info["rows"] == 0:
        return ""
    spans = sorted((off[k], off[k] + n, k) for k, n in dataset_bytes(info).items())
    for (a, end, k), nxt in zip(spans, spans[1:] + [(size, size, "the end of the file")]):
        if end > nxt[0]:
            return f"{k} at byte {a} ({end - a} bytes) runs into {nxt[2]} (byte {nxt[0]})"
    return ""


def record_problem(r) -> str:
    """What is wrong with a parsed ``RECORD.json``; '' when sound."""
    if not isinstance(r, dict) or not isinstance(r.get("segments"), dict):
        return "not a segment record: no segments object"
    if not _int(r.get("generation", 0)) or not (r.get("writing_since") is None or _int(r["writing_since"])):
        return "generation or writing_since is not a whole number"
    writing = r.get("writing", [])
    if not isinstance(writing, list) or not all(isinstance(n, str) and SEGMENT_NAME.fullmatch(n) for n in writing):
        return "writing is not a list of segment names"
    for name, dropped in r["segments"].items():
        if not SEGMENT_NAME.fullmatch(name) or not (dropped is None or isinstance(dropped, (int, float))):
            return f"entry {name!r}: expected a segment name and null or a time"
    return ""
