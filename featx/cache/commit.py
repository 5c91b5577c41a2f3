"""The commit: journal parts and workers' incoming segments become part of the cache, in one manifest swap.

Steps, each a function below: read the committed state (migrating a legacy file if there is
one), collect the pending keys, keep only the rows no committed segment holds yet (first
occurrence of a key wins), adopt the incoming segments (hard links, no copy; more than
``MERGE_ADOPTED_OVER`` are merged into one), write the journal's rows as one new segment, swap
the manifest, then delete what was folded in.  A failure before the swap removes every file this
commit created; the previous manifest still names only complete segments.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import numpy as np

import featx.cache.layout as layout  # noqa: PLR0402 -- `from featx.cache import` would import the package, a cycle
from featx.cache.errors import CacheDamagedError
from featx.cache.files import pread_rows, read_range, write_json_atomic
from featx.cache.folder import CacheFolder
from featx.cache.journal import journal_rows
from featx.cache.layout import FORMAT_VERSION, KEY_DTYPE, TapRows, first_unique, row_checksums
from featx.cache.legacy import legacy_header, migrate_legacy
from featx.cache.merge import merge_segments
from featx.cache.schema import tap_widths
from featx.cache.segments import segment_entry, write_segment
from featx.cache.view import drop_view, refresh_view, write_view

MERGE_ADOPTED_OVER = 64  # a commit adopting more worker segments than this merges them into one


def commit(folder: CacheFolder, provenance: dict | None = None, failures: list | None = None) -> None:
    """Make journalled and incoming rows part of the cache: one new segment, one manifest swap.

    Cost is proportional to the new rows (plus one binary search per new key in each existing
    segment), not to the rows already cached.  A legacy single-file cache is migrated first.
    Takes the writer's lock unless ``folder`` holds it.  ``provenance`` updates the recorded one;
    ``failures`` (when given) replaces the recorded list.

    Raises
    ------
    ValueError
        ``folder.config`` is None.
    CacheLockedError, CacheDamagedError
        Another writer holds the lock; a file to fold in is damaged (nothing is changed).
    """
    if folder.config is None:
        raise ValueError("commit needs the configuration")
    with folder.writing():
        folder.cleanup_temporary()
        m, migrating = committed_state(folder)
        parts, incoming = folder.parts(), folder.incoming()
        if not (parts or incoming or migrating) and folder.manifest_path.exists() and failures is None:
            with contextlib.suppress(OSError):
                folder.journal.rmdir()
            refresh_view(folder, m)  # a compaction killed before its view was renamed left a stale one
            folder.collect_garbage(m)
            return
        new = fold(folder, m, parts, incoming, migrating, provenance, failures)
        remove_folded(folder, parts, incoming, migrating)
        write_view(folder, new)
        folder.collect_garbage(new)


def committed_state(folder: CacheFolder) -> tuple[dict, bool]:
    """(the manifest to build on, whether a legacy file is to be migrated).

    With no manifest yet, a fresh one (from the legacy file's header when there is one).  A
    legacy file that a migration killed after its manifest swap left behind is deleted here.
    """
    m = folder.manifest()
    if m is not None and m.get("migrated_from") == folder.legacy.name and folder.legacy.exists():
        folder.legacy.unlink()  # a migration killed after its manifest swap
    migrating = m is None and folder.legacy.exists()
    if m is None:
        m = new_manifest(folder)
    return m, migrating


def new_manifest(folder: CacheFolder) -> dict:
    """A manifest with no segments: the legacy file's config, provenance and failures, or the folder's config."""
    if folder.legacy.exists():
        with folder.legacy_open() as f:
            config, prov, failures = legacy_header(f)
    else:
        config, prov, failures = folder.config, {}, []
    return {"format": FORMAT_VERSION, "generation": 0, "config": config, "provenance": prov,
            "failures": failures, "segments": []}


def fold(folder: CacheFolder, m: dict, parts: list, incoming: list, migrating: bool,
         provenance: dict | None, failures: list | None) -> dict:
    """Write the new segments and swap the manifest; returns the new manifest.  On any exception
    every segment written here is removed before the error propagates."""
    created: list[Path] = []
    folder.path.mkdir(parents=True, exist_ok=True)
    try:
        segments = list(m["segments"])
        if migrating:
            m["migrated_from"] = folder.legacy.name
            segments.append(migrate_legacy(folder))
            created.append(folder.segments_dir / segments[-1]["name"])
        sources, journal = pending_keys(folder, parts, incoming, m)
        keep = new_rows(folder, m, segments, sources)
        segments += adopt_incoming(folder, sources[:-1], keep, m["config"], created)
        last = len(sources) - 1
        rows = {t: TapRows(k[keep[last, t]], c[keep[last, t]])
                for t, (k, c) in journal.items() if keep[last, t].any()}
        if rows:  # journal parts: one new segment with the rows not cached yet
            segments.append(write_segment(folder.segments_dir, rows, m["config"], name=folder.new_segment_name()))
            created.append(folder.segments_dir / segments[-1]["name"])
        new = next_manifest(m, segments, provenance, failures)
        folder.path.mkdir(parents=True, exist_ok=True)
        drop_view(folder)  # consistent or absent, whatever moment a kill comes
        write_json_atomic(folder.manifest_path, new)
    except BaseException:
        for path in created:  # never named by a manifest: not part of the cache
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return new


def pending_keys(folder: CacheFolder, parts: list, incoming: list, m: dict | None = None) -> tuple[list, dict]:
    """Every key waiting to be committed, at once (memory ~ the new rows).  A part or incoming
    segment whose codes are not as wide as the committed ones of the same tap (manifest ``m``) is a
    :class:`CacheDamagedError` naming it: nothing is committed.

    Returns
    -------
    sources : list
        ``(incoming path, manifest entry, {tap: keys})`` per incoming segment, then
        ``(None, None, {tap: keys})`` for the journal, last.
    journal : dict
        ``{tap: (keys, codes)}`` of every journal part, concatenated.
    """
    sources = []
    widths = tap_widths(m)
    for inc in incoming:
        entry = segment_entry(inc, checksum=True)
        for tap, info in entry["taps"].items():
            problem = codes_problem(inc, info)
            if not problem and widths.setdefault(tap, info["dim"]) != info["dim"]:
                problem = f"codes {info['dim']} wide, but the cache's codes of this tap are {widths[tap]} wide"
            if problem:
                raise CacheDamagedError(inc, f"tap {tap}: {problem}", folder.path)
        sources.append((inc, entry, {t: read_range(inc, i["offsets"]["keys"], KEY_DTYPE, 0, i["rows"])
                                     for t, i in entry["taps"].items()}))
    journal = journal_rows(parts, folder.path, widths)
    sources.append((None, None, {t: k for t, (k, _) in journal.items()}))
    return sources, journal


def codes_problem(path: Path, info: dict) -> str:
    """What is wrong with a segment tap's codes (a worker's segment before it is adopted without a
    copy): rows that do not match their checksum, NaN or infinite values; '' when sound.  Reads the
    codes once, in blocks."""
    n, dim, dtype = info["rows"], info["dim"], np.dtype(info["dtype"])
    step = max(1, layout.COPY_BYTES // (dim * dtype.itemsize))
    for start in range(0, n, step):
        count = min(step, n - start)
        codes = read_range(path, info["offsets"]["codes"], dtype, start, count, (dim,))
        if not np.isfinite(codes).all():
            return f"NaN or infinite codes near row {start}"
        crc_at = info["offsets"].get("codes_crc")
        if crc_at is not None and not np.array_equal(row_checksums(codes),
                                                     read_range(path, crc_at, np.uint32, start, count)):
            return f"codes near row {start} do not match their checksum"
    return ""


def new_rows(folder: CacheFolder, m: dict, segments: list, sources: list) -> dict:
    """{(source index, tap): (n,) bool}: the rows of each source to keep -- a key's first
    occurrence across the sources, and only when no segment of ``segments`` holds it yet."""
    keep: dict[tuple, np.ndarray] = {}
    for tap in sorted({t for _, _, ks in sources for t in ks}):
        pieces = [(n, ks[tap]) for n, (_, _, ks) in enumerate(sources) if tap in ks]
        every = np.concatenate([k for _, k in pieces])
        mask = np.zeros(every.size, bool)
        mask[first_unique(every)] = True
        for s in segments:
            if s["taps"].get(tap, {}).get("rows"):
                b = folder.committed(s, s["taps"][tap], m)
                idx = np.flatnonzero(mask)
                mask[idx[b.locate(every[idx]) >= 0]] = False
        at = 0
        for n, k in pieces:
            keep[n, tap] = mask[at : at + k.size]
            at += k.size
    return keep


def adopt_incoming(folder: CacheFolder, sources: list, keep: dict, config: dict, created: list) -> list:
    """Manifest entries of the incoming segments ``sources`` made committed segments, merged into one
    when more than ``MERGE_ADOPTED_OVER``.  Each file made is added to ``created`` as it is made."""
    adopted = []
    for n, (inc, entry, ks) in enumerate(sources):  # Ray workers' segments
        entry = adopt_one(folder, inc, entry, ks, {t: keep[n, t] for t in ks}, config)
        if entry is not None:
            created.append(folder.segments_dir / entry["name"])
            adopted.append(entry)
    if len(adopted) > MERGE_ADOPTED_OVER:  # many small worker segments: one, streaming
        merged = merge_segments(folder.segments_dir, [(folder.segments_dir / e["name"], e) for e in adopted], config,
                                name=folder.new_segment_name())
        created.append(folder.segments_dir / merged["name"])
        adopted = [merged]  # the linked files are named by no manifest: garbage
    return adopted


def adopt_one(folder: CacheFolder, inc: Path, entry: dict, keys: dict, keep: dict, config: dict) -> dict | None:
    """One incoming segment as a new committed segment: a hard link (no copy) when every row is new,
    else a new segment of the new rows only (a retried batch).  None when no row is new."""
    name = folder.new_segment_name()
    folder.segments_dir.mkdir(parents=True, exist_ok=True)
    if all(keep[t].all() for t in keys):  # a second name for the same file, no copy:
        try:  # incoming/ keeps the first until the manifest is swapped
            os.link(inc, folder.segments_dir / name)
        except OSError:
            shutil.copyfile(inc, folder.segments_dir / name)
        entry["name"] = name
        return entry
    kept = {}  # rows another segment already holds (a retried batch): the rest only
    for t, info in entry["taps"].items():
        rows_ = np.flatnonzero(keep[t])
        if rows_.size:
            codes = pread_rows(inc, info["offsets"]["codes"], info["dtype"], info["dim"], rows_)
            kept[t] = TapRows(keys[t][rows_], codes)
    return write_segment(folder.segments_dir, kept, config, name=name) if kept else None


def next_manifest(m: dict, segments: list, provenance: dict | None, failures: list | None) -> dict:
    """The manifest after this commit: next generation, ``segments``, provenance stamped."""
    prov = dict(m.get("provenance") or {})
    prov.update(provenance or {})
    prov.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if provenance is not None or len(segments) != len(m["segments"]):
        prov["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {**m, "format": FORMAT_VERSION, "generation": int(m.get("generation", 0)) + 1,
            "provenance": prov, "segments": segments,
            "failures": failures if failures is not None else m.get("failures", [])}


def remove_folded(folder: CacheFolder, parts: list, incoming: list, migrating: bool) -> None:
    """After the manifest swap: delete the journal parts, incoming segments and legacy file folded in."""
    for p in parts:
        p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # absent, or not empty: no empty journal folder left
        folder.journal.rmdir()
    for inc in incoming:
        inc.unlink(missing_ok=True)
    if migrating:
        folder.legacy.unlink(missing_ok=True)
        folder.legacy.with_name(folder.legacy.name + ".lock").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.legacy_journal.rmdir()
