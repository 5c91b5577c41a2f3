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
from pathlib import Path

import h5py

from featx.cache.errors import CacheDamagedError, CacheLockedError, missing, why
from featx.cache.layout import MANIFEST
from featx.cache.segments import Block
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
                or any(self.incoming()))

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
        """The committed manifest (None for a legacy single-file cache or no cache).

        Raises
        ------
        CacheDamagedError
            ``MANIFEST.json`` is unreadable or not a manifest.
        """
        try:
            with open(self.manifest_path) as fh:
                m = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            detail = why(exc)
        else:
            if isinstance(m, dict) and isinstance(m.get("segments"), list) and isinstance(m.get("config"), dict):
                return m
            detail = "not a cache manifest: no config or segment list"
        raise CacheDamagedError(self.manifest_path, detail, self.path, advice=(
            "it lists the cache's segments and no featx command rebuilds it: move "
            f"{self.path} aside and run featx extract again to rebuild the cache"))

    def committed(self, seg: dict, info: dict, m: dict) -> Block:
        """The mapped block of a segment ``m`` names; a missing file is damage unless a commit swapped
        the manifest meanwhile (then FileNotFoundError: the caller takes a new snapshot)."""
        path = self.segments_dir / seg["name"]
        try:
            return Block.mapped(path, info)
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

    def collect_garbage(self, m: dict) -> None:
        """Delete segments the manifest no longer names, unless a reader is taking a snapshot."""
        if not self.segments_dir.is_dir():
            return
        live = {s["name"] for s in m["segments"]}
        dead = [p for p in self.segments_dir.glob("seg-*.h5") if p.name not in live]
        if not dead:
            return
        with self.reader_lock(exclusive=True, wait=False) as got:
            if got:
                for p in dead:
                    p.unlink(missing_ok=True)


def list_caches(cache_dir: str | Path) -> list[Path]:
    """Cache folders in ``cache_dir`` (and legacy single-file caches not migrated yet)."""
    cache_dir = Path(cache_dir)
    found = {p.parent for p in cache_dir.glob(f"*/{MANIFEST}")}
    found |= {p for p in cache_dir.glob("*.h5") if p.with_suffix("") not in found}
    return sorted(found)
