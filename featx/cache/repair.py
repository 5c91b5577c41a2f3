"""``featx cache repair``: a lost or damaged ``MANIFEST.json`` rebuilt from the segments' own headers.

Damaged means missing, unparseable, failing its schema, or -- though sound JSON of the right shape --
disagreeing with a segment file it names (:func:`manifest_mismatch`: its size, a tap's rows,
width, dtype, offsets or index checksum, e.g. two entries' names swapped).

Why: the manifest is the only list of the committed segments, so losing it used to lose the whole
cache.  Every segment carries what its manifest entry says (format, configuration, per tap its
rows, dimension, dtype and dataset offsets; see :func:`featx.cache.segments.segment_entry`), so
the entry can be read back from the file.  Steps: check each ``segments/seg-*.h5`` (its header,
its index, every row against its checksum); keep those of this folder's configuration; choose a
set whose keys do not repeat (the segments ``RECORD.json`` says the last manifest named first,
then the largest: a compaction's segment holds the rows of the ones it merged); write the new
manifest.  Nothing is deleted: the damaged manifest is kept beside it as
``MANIFEST.json.damaged-<time>``, the segments left out stay on disk and are listed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import h5py
import numpy as np

from featx.cache.commit import codes_problem
from featx.cache.errors import CacheDamagedError
from featx.cache.files import read_range, write_json_atomic
from featx.cache.folder import CacheFolder
from featx.cache.layout import FORMAT_VERSION, KEY_DTYPE, cache_path, manifest_rows
from featx.cache.segments import segment_entry
from featx.cache.view import drop_view, write_view
from featx.errors import FeatxError


@dataclass
class Repaired:
    """What a repair did: ``kept`` segment names, ``left_out`` {name: why}, ``rows`` {tap: rows},
    ``moved`` (where the damaged manifest went, or None), ``needed`` (False: the manifest was sound)."""

    kept: list = field(default_factory=list)
    left_out: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)
    moved: str | None = None
    needed: bool = True


def repair(folder: CacheFolder) -> Repaired:
    """Rebuild ``MANIFEST.json`` from the segment files (under the writer's lock).

    Raises
    ------
    CacheLockedError
        Another process is writing this cache.
    FeatxError
        No segment of this folder's configuration could be read.
    """
    with folder.writing():
        folder.cleanup_temporary()
        try:
            m = folder.manifest()
            if m is not None and not manifest_mismatch(folder, m):
                return Repaired(needed=False)
        except CacheDamagedError:
            pass
        done = Repaired()
        candidates = readable_segments(folder, done)
        named = {n for n, t in folder.record()["segments"].items() if t is None}
        candidates.sort(key=lambda c: (c[0]["name"] not in named, -sum(i["rows"] for i in c[0]["taps"].values()),
                                       c[0]["name"]))
        chosen = choose_disjoint(folder, candidates, done)
        if not chosen:
            raise FeatxError(f"{folder.path}: no readable segment of this cache's configuration to rebuild "
                             f"{folder.manifest_path.name} from; move the folder aside and run featx extract again")
        config = candidates[0][1]
        generation = max(int(folder.record().get("generation", 0)), 0) + 1
        m = {"format": FORMAT_VERSION, "generation": generation, "config": config, "failures": [],
             "provenance": {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "repaired": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
             "segments": chosen}
        if folder.manifest_path.exists():
            done.moved = f"{folder.manifest_path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(folder.manifest_path, folder.path / done.moved)
        folder.remember([s["name"] for s in chosen], forget=done.left_out)
        drop_view(folder)
        write_json_atomic(folder.manifest_path, m)
        write_view(folder, m)
        folder.collect_garbage(m)
        done.kept, done.rows = [s["name"] for s in chosen], manifest_rows(m)
        return done


def manifest_mismatch(folder: CacheFolder, m: dict) -> str:
    """What in a schema-sound manifest ``m`` disagrees with the segment files' own headers (a file
    missing or unreadable, its size, a tap's rows, width, dtype, offsets, or ``index_crc`` computed
    from the file -- e.g. two entries' names swapped); '' when every entry matches its file."""
    for seg in m["segments"]:
        path = folder.segments_dir / seg["name"]
        try:
            actual = segment_entry(path, checksum=True)
        except (CacheDamagedError, OSError) as exc:
            return f"{seg['name']}: {getattr(exc, 'detail', None) or exc}"
        if actual["bytes"] != seg["bytes"] or set(actual["taps"]) != set(seg["taps"]):
            return f"{seg['name']}: its size or taps differ from its entry"
        for tap, info in seg["taps"].items():
            a = actual["taps"][tap]
            if any(a.get(k) != info.get(k) for k in ("rows", "dim", "dtype", "index_crc")) or a["offsets"] != {
                    k: v for k, v in info["offsets"].items() if v is not None}:
                return f"{seg['name']} tap {tap}: its entry does not match the file's header"
    return ""


def readable_segments(folder: CacheFolder, done: Repaired) -> list:
    """(manifest entry with index checksums, configuration) of every segment file that reads back
    whole and belongs to this folder's configuration; the others go to ``done.left_out``."""
    out = []
    for path in folder.segment_files():
        try:
            entry = segment_entry(path, checksum=True)
            config = segment_config(path)
            problem = "" if cache_path(folder.path.parent, config).name == folder.path.name else (
                "another extractor configuration")
            for tap, info in entry["taps"].items():
                problem = problem or codes_problem(path, info) or index_problem(path, info)
            if not problem:
                out.append((entry, config))
                continue
        except (CacheDamagedError, OSError, ValueError, KeyError, TypeError) as exc:
            problem = getattr(exc, "detail", None) or str(exc).splitlines()[0]
        done.left_out[path.name] = problem
    return out


def segment_config(path) -> dict:
    """The extractor configuration a segment file was written with (its ``config`` attribute)."""
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["config"])
    if not isinstance(config, dict):
        raise ValueError("its config attribute is not a JSON object")
    return config


def index_problem(path, info: dict) -> str:
    """What is wrong with a tap's key index (keys of 32 characters, ``keys[sorted_rows] == sorted_keys``)."""
    n = info["rows"]
    keys = read_range(path, info["offsets"]["keys"], KEY_DTYPE, 0, n)
    sk = read_range(path, info["offsets"]["sorted_keys"], KEY_DTYPE, 0, n)
    sr = read_range(path, info["offsets"]["sorted_rows"], np.int64, 0, n)
    if any(len(k) != 32 for k in keys.tolist()) or (sr < 0).any() or (sr >= n).any():
        return "malformed keys or key index"
    if not np.array_equal(keys[sr], sk) or (n > 1 and (sk[1:] <= sk[:-1]).any()):
        return "key index does not match the keys"
    return ""


def choose_disjoint(folder: CacheFolder, candidates: list, done: Repaired) -> list:
    """Entries of ``candidates`` (in order) whose keys repeat none of those chosen before them; a
    segment whose keys are all held already is left out as 'its rows are in <others>', one that
    shares only some as a conflict (listed, left on disk)."""
    held: dict[str, np.ndarray] = {}
    chosen = []
    for entry, _ in candidates:
        path = folder.segments_dir / entry["name"]
        keys = {t: read_range(path, i["offsets"]["sorted_keys"], KEY_DTYPE, 0, i["rows"])
                for t, i in entry["taps"].items()}
        shared = {t: int(np.isin(k, held[t]).sum()) if t in held else 0 for t, k in keys.items()}
        if not any(shared.values()):
            chosen.append(entry)
            for t, k in keys.items():
                held[t] = np.union1d(held.get(t, np.zeros(0, KEY_DTYPE)), k)
            continue
        whole = all(shared[t] == k.size for t, k in keys.items())
        done.left_out[entry["name"]] = ("its rows are all in the segments kept" if whole else
                                        f"{sum(shared.values())} of its rows are also in the segments kept")
    return chosen
