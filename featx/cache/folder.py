"""One cache folder on disk: its paths, its locks, its manifest, and what is pending in it.

:class:`CacheFolder` is what the writing and checking steps (:mod:`featx.cache.commit`,
:mod:`featx.cache.compaction`, :mod:`featx.cache.verify`) work on; :class:`featx.cache.FeatureCache`
adds reading and writing rows on top of it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import time
from pathlib import Path

import h5py

from featx.cache.errors import (
    CacheDamagedError,
    CacheLockedError,
    missing,
    repair_advice,
    why,
)
from featx.cache.files import write_json_atomic
from featx.cache.layout import MANIFEST, RECORD, grace_seconds
from featx.cache.schema import manifest_problem, record_problem
from featx.cache.segments import Block, segment_name
from featx.errors import FeatxError


class CacheFolder:
    """The files of one extractor configuration's cache.

    Parameters
    ----------
    path : str or Path
        The cache folder (``cache_path(cache_dir, config)``).  A legacy ``<name>.h5`` file path is
        accepted too: it names the folder ``<name>`` and the old file is read (and migrated by the
        next commit).
    config : dict, optional
        The extractor configuration; needed to write.
    """

    def __init__(self, path: str | Path, config: dict | None = None):
        path = Path(path)
        if path.suffix == ".h5" and not (path / MANIFEST).exists():
            self.path, self.legacy = path.with_suffix(""), path
        else:
            self.path, self.legacy = path, path.with_name(path.name + ".h5")
        self.config = config
        self.manifest_path = self.path / MANIFEST
        self.record_path = self.path / RECORD
        self.segments_dir = self.path / "segments"
        self.incoming_dir = self.path / "incoming"
        self.journal = self.path / "journal"
        self.legacy_journal = self.legacy.with_name(self.legacy.name + ".journal")
        self._lock_fd: int | None = None

    # ---- locking ------------------------------------------------------------------------------
    def lock(self):
        """Take the writer's lock; a second writer gets a clear error.

        Raises
        ------
        CacheLockedError
            Another process holds ``writer.lock``.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CacheLockedError(
                    f"{self.path}: another featx process is writing this cache; wait for it to finish "
                    "or use another --cache folder"
                ) from None
            raise
        self._lock_fd = fd
        return self

    def wait_for_lock(self, notice=None):
        """Take the writer's lock, waiting for another writer to finish (saying so once on stderr,
        or through ``notice(message)``) instead of failing."""
        try:
            return self.lock()
        except CacheLockedError:
            message = (f"featx: {self.path}: another featx process is writing this cache; waiting for it "
                       "to finish (rows already cached are read without waiting)")
            (notice or (lambda text: print(text, file=sys.stderr, flush=True)))(message)
        fd = os.open(self.path / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        return self

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self.lock()

    def __exit__(self, *exc):
        self.unlock()

    @contextlib.contextmanager
    def writing(self):
        """The writer's lock for the block: taken here unless this object already holds it."""
        if self._lock_fd is not None:
            yield
            return
        with self:
            yield

    @contextlib.contextmanager
    def reader_lock(self, exclusive: bool = False, wait: bool = True):
        """Shared: a reader taking its snapshot; exclusive (never waiting): a writer deleting.

        Yields whether the lock was taken.
        """
        try:
            fd = os.open(self.path / "readers.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a read-only or missing folder: nobody can be deleting there
            yield not exclusive
            return
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
                got = True
            except OSError:
                got = False
            yield got
        finally:
            os.close(fd)  # releases the lock

    # ---- what is there --------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.manifest_path.exists() or self.legacy.exists() or any(self.parts())
                or any(self.incoming()) or bool(self.segment_files()) or self.record_path.exists())

    def segment_files(self) -> list[Path]:
        """Every ``segments/seg-*.h5`` file on disk, named by the manifest or not."""
        return sorted(self.segments_dir.glob("seg-*.h5")) if self.segments_dir.is_dir() else []

    def parts(self) -> list[Path]:
        """Journal parts not committed yet (a legacy cache's ``<name>.h5.journal/`` first), oldest first."""
        parts = []
        for d in (self.legacy_journal, self.journal):
            if d.is_dir():
                parts += sorted(d.glob("part-*.npz"))
        return parts

    def incoming(self) -> list[Path]:
        """Workers' segments in ``incoming/`` not adopted yet, oldest first."""
        return sorted(self.incoming_dir.glob("inc-*.h5")) if self.incoming_dir.is_dir() else []

    def manifest(self) -> dict | None:
        """The committed manifest, checked against its schema (None: a legacy single-file cache, or
        no cache here).

        Raises
        ------
        CacheDamagedError
            ``MANIFEST.json`` is unreadable or not a sound manifest, or it is missing while segment
            files or ``RECORD.json`` say that a manifest was written (the advice names ``featx cache
            repair``).
        """
        try:
            with open(self.manifest_path) as fh:
                m = json.load(fh)
        except FileNotFoundError:
            if not self.once_committed():
                return None
            detail = (f"the file is missing, but {len(self.segment_files())} segment file(s) hold the cache's "
                      "rows")
        except (OSError, ValueError) as exc:
            detail = why(exc)
        else:
            detail = manifest_problem(m)
            if not detail:
                return m
        raise CacheDamagedError(self.manifest_path, detail, self.path, advice=repair_advice(self.path))

    def once_committed(self) -> bool:
        """Whether a manifest was ever written here: the record names a segment, or a segment file is
        not one that a first writer killed before its first manifest swap left."""
        r = self.record()
        if r["segments"]:
            return True
        writing = set(r.get("writing", []))
        return any(p.name not in writing for p in self.segment_files())

    def record(self) -> dict:
        """``RECORD.json``: {"generation", "segments": {name: None while a manifest names it, else the
        time it stopped}} -- every segment featx wrote; an empty record when there is none or it is
        unreadable (then nothing is deleted: garbage collection deletes only what the record names)."""
        try:
            with open(self.record_path) as fh:
                r = json.load(fh)
        except (OSError, ValueError):
            return {"generation": 0, "segments": {}}
        return r if not record_problem(r) else {"generation": 0, "segments": {}}

    def new_segment_name(self) -> str:
        """A new segment name, written into the record's ``writing`` list BEFORE the caller creates
        the file (under the writer's lock): a file a writer killed before its manifest swap leaves is
        then known as featx's own, and only such recorded names are ever deleted -- never a file
        for what its name says (a copied-in segment's time may be anything)."""
        name = segment_name()
        r = self.record()
        r["writing"] = sorted(set(r.get("writing", [])) | {name})
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.record_path, r)
        return name

    def remember(self, names, forget=()) -> None:
        """Record ``names`` as named by the manifest about to be written, and drop ``forget`` from the
        record (a repair's left-out segments: unknown from now on, so never deleted)."""
        r = self.record()
        r["segments"].update({n: None for n in names})
        for n in forget:
            r["segments"].pop(n, None)
        write_json_atomic(self.record_path, r)

    def committed(self, seg: dict, info: dict, m: dict) -> Block:
        """The mapped block of a segment ``m`` names; a missing file is damage unless a commit swapped
        the manifest meanwhile (then FileNotFoundError: the caller takes a new snapshot)."""
        path = self.segments_dir / seg["name"]
        try:
            return Block.mapped(path, info, size=seg["bytes"])
        except FileNotFoundError:
            if (self.manifest() or {}).get("generation") != m.get("generation"):
                raise
            raise CacheDamagedError(path, missing(path)) from None

    def legacy_open(self):
        """The legacy single file, open read-only (a one-line error when it cannot be opened)."""
        try:
            return h5py.File(self.legacy, "r")
        except OSError as exc:
            raise FeatxError(f"{self.legacy}: cannot open the cache file ({why(exc)}); run "
                             f"'featx cache verify {self.legacy}'") from None

    def read_config(self) -> dict | None:
        """The extractor configuration the cache was written with (None: no cache here)."""
        m = self.manifest()
        if m is not None:
            return m["config"]
        if self.legacy.exists():
            with self.legacy_open() as f:
                return json.loads(f.attrs["config"])
        return None

    # ---- housekeeping (under the writer's lock) -------------------------------------------------
    def cleanup_temporary(self) -> None:
        """Temporary files a killed writer left (only under the writer's lock)."""
        for d in (self.path, self.segments_dir, self.journal, self.incoming_dir, self.legacy_journal):
            if d.is_dir():
                for stale in d.glob(".tmp-*"):
                    stale.unlink(missing_ok=True)

    def collect_garbage(self, m: dict) -> list[str]:
        """Note in the record which segments ``m`` no longer names, and delete those that stopped
        being named at least ``grace_seconds()`` ago, unless a reader is taking a snapshot.

        Only names the record holds are ever deleted (segments featx wrote and a manifest named, or
        was about to name when its writer was killed); a segment file the record does not know is
        left where it is (``verify`` reports it).  Returns the names deleted.
        """
        r = self.record()
        live = {s["name"] for s in m["segments"]}
        now = time.time()
        before = json.dumps(r, sort_keys=True)
        r["generation"] = max(int(r.get("generation", 0)), int(m.get("generation", 0)))
        for name in live:
            r["segments"][name] = None
        for name, dropped in list(r["segments"].items()):
            if name not in live and dropped is None:
                r["segments"][name] = now
        r.pop("writing_since", None)  # an older featx's: a name's time never makes a file deletable
        for name in r.pop("writing", []):  # files a writer recorded before making them, now unnamed
            if name not in r["segments"] and (self.segments_dir / name).exists():
                r["segments"][name] = now
        due = [n for n, t in r["segments"].items() if t is not None and now - t >= grace_seconds()]
        if due:
            with self.reader_lock(exclusive=True, wait=False) as got:
                if got:
                    for name in due:
                        (self.segments_dir / name).unlink(missing_ok=True)
                        del r["segments"][name]
                else:
                    due = []
        if json.dumps(r, sort_keys=True) != before:
            with contextlib.suppress(OSError):  # the record is bookkeeping: a full disk keeps the old one
                write_json_atomic(self.record_path, r)
        return due

    def unknown_segments(self, m: dict) -> list[Path]:
        """Segment files neither ``m`` nor the record names (never deleted: reported by verify)."""
        r = self.record()
        known = {s["name"] for s in m["segments"]} | set(r["segments"]) | set(r.get("writing", []))
        return [p for p in self.segment_files() if p.name not in known]  # a writer's: the next commit records them


def list_caches(cache_dir: str | Path) -> list[Path]:
    """Cache folders in ``cache_dir`` (and legacy single-file caches not migrated yet): every folder
    with a manifest, or without one but with what a cache leaves (segments, RECORD.json, journal
    parts, workers' segments) -- a lost manifest is damage, listed, never "no caches"."""
    cache_dir = Path(cache_dir)
    found = {p.parent for p in cache_dir.glob(f"*/{MANIFEST}")}
    found |= {p for p in cache_dir.glob("*/") if p.is_dir() and CacheFolder(p).exists()}
    found |= {p for p in cache_dir.glob("*.h5") if p.with_suffix("") not in found}
    return sorted(found)
