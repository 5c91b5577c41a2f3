""":class:`FeatureCache`: reading and writing one extractor configuration's rows.

Reads take a consistent snapshot (committed segments first, then incoming segments and journal
parts) and look keys up segment by segment; writes go to the journal, and
:mod:`featx.cache.commit`, :mod:`featx.cache.compaction` and :mod:`featx.cache.verify` do the
rest on the folder.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import uuid
from pathlib import Path

import numpy as np

from featx.cache.bloom import bloom_test, key_hashes
from featx.cache.commit import commit as commit_folder
from featx.cache.compaction import compact_segments
from featx.cache.folder import CacheFolder
from featx.cache.journal import part_arrays, part_taps, write_part
from featx.cache.layout import TapRows, as_keys
from featx.cache.legacy import legacy_info
from featx.cache.schema import tap_widths
from featx.cache.segments import Block, forget_maps, segment_entry, write_segment
from featx.cache.repair import repair as repair_folder
from featx.cache.verify import verify as verify_folder
from featx.errors import FeatxError


def _close(blocks: list) -> None:
    for b in blocks:
        if b.keep is not None:
            b.keep.close()


class FeatureCache(CacheFolder):
    """One extractor configuration's rows: committed segments, plus journal and incoming segments.

    Parameters: ``path`` and ``config`` as :class:`~featx.cache.folder.CacheFolder` (the folder, or a legacy
    ``<name>.h5`` file; the configuration, needed to write).
    """

    def __init__(self, path: str | Path, config: dict | None = None):
        super().__init__(path, config)
        self._part_no = 0

    # ---- reading --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def snapshot(self, tap: str):
        """Blocks holding ``tap``'s rows in lookup order (committed first), consistent as a whole.

        Taken again (up to 20 times) when a commit swaps the manifest meanwhile.

        Raises
        ------
        FeatxError
            The cache kept changing while being read.
        """
        for attempt in range(20):
            try:
                blocks = self._take_snapshot(tap)
            except FileNotFoundError:
                time.sleep(0.01 * attempt)  # a commit moved a part or incoming segment meanwhile: again
                continue
            try:
                yield blocks
            finally:
                _close(blocks)
            return
        raise FeatxError(f"{self.path}: the cache kept changing while being read; try again")

    def _take_snapshot(self, tap: str) -> list[Block]:
        """One try at a snapshot, under the shared readers' lock; FileNotFoundError when a commit
        swapped the manifest meanwhile."""
        blocks: list[Block] = []
        try:
            with self.reader_lock():
                m = self.manifest()
                if m is not None:
                    forget_maps(self.segments_dir, {seg["name"] for seg in m["segments"]})
                    for seg in m["segments"]:
                        info = seg["taps"].get(tap)
                        if info and info["rows"]:
                            blocks.append(self.committed(seg, info, m))
                elif self.legacy.exists():
                    self._add_legacy(blocks, tap)
                self._add_pending(blocks, tap, m)
                again = self.manifest()
                if (again or {}).get("generation") != (m or {}).get("generation") or (again is None) != (m is None):
                    raise FileNotFoundError  # a commit swapped the manifest meanwhile: parts may be gone
        except BaseException:
            _close(blocks)
            raise
        return blocks

    def _add_legacy(self, blocks: list, tap: str) -> None:
        f = self.legacy_open()
        if tap in f.get("taps", {}):
            g = f["taps"][tap]
            b = Block.from_arrays(g["keys"][:], g["codes"])
            b.keep = f
            blocks.append(b)
        else:
            f.close()

    def _add_pending(self, blocks: list, tap: str, m: dict | None = None) -> None:
        for inc in self.incoming():
            entry = segment_entry(inc)
            if tap in entry["taps"]:
                blocks.append(Block.mapped(inc, entry["taps"][tap], keep_mapped=False))
                blocks[-1].pending = True
        for part in self.parts():
            for k, c in part_arrays(part, self.path, tap, widths=tap_widths(m)).values():
                blocks.append(Block.from_arrays(k, c))
                blocks[-1].pending = True

    def taps(self) -> list[str]:
        """Names of the taps with rows (committed, incoming or journalled), sorted."""
        names = set()
        m = self.manifest()
        if m is not None:
            for seg in m["segments"]:
                names |= set(seg["taps"])
        elif self.legacy.exists():
            with self.legacy_open() as f:
                names |= set(f.get("taps", {}).keys())
        for inc in self.incoming():
            with contextlib.suppress(OSError, ValueError):
                names |= set(segment_entry(inc)["taps"])
        for part in self.parts():
            with contextlib.suppress(FileNotFoundError):  # folded in by a commit meanwhile
                names |= part_taps(part)
        return sorted(names)

    def keys(self, tap: str, among=None) -> set[str]:
        """Keys that have a row for ``tap`` (committed, incoming or journalled).

        Parameters
        ----------
        tap : str
        among : iterable of str, optional
            Only ask about these keys (cost proportional to their number, not to the cache size);
            None returns every key.

        Returns
        -------
        set of str
        """
        if among is not None:
            among = [k for k in among if k is not None]
            return set(itertools.compress(among, self.contains(tap, among).tolist()))
        found: set[str] = set()
        with self.snapshot(tap) as blocks:
            for b in blocks:
                found.update(np.asarray(b.sorted_keys).astype("U32").tolist())
        return found

    def contains(self, tap: str, keys) -> np.ndarray:
        """(n,) bool: whether each key of ``keys`` has a row for ``tap``."""
        wanted, inverse = np.unique(as_keys(keys), return_inverse=True)  # sorted: searches walk forward
        where, _ = self._lookup(tap, wanted)
        return (where >= 0)[inverse.reshape(-1)]

    def _lookup(self, tap: str, wanted: np.ndarray, blocks=None):
        """(block index, row) of each of ``wanted`` (sorted, unique keys); -1 where absent."""
        where = np.full(wanted.size, -1, np.int64)
        rows = np.full(wanted.size, -1, np.int64)
        with contextlib.nullcontext(blocks) if blocks is not None else self.snapshot(tap) as blocks:
            missing, hashes = wanted.size, None
            for i, b in enumerate(blocks):
                if missing == 0:
                    break
                if b.rows < missing:  # this block's keys searched among the asked: no copies
                    pos, r = b.matches(wanted)
                    new = where[pos] < 0  # an earlier block wins
                    where[pos[new]], rows[pos[new]] = i, r[new]
                    missing -= int(new.sum())
                else:
                    todo = np.flatnonzero(where < 0)
                    if b.bloom is not None:  # most keys are in another segment: skip their searches
                        if hashes is None:
                            hashes = key_hashes(wanted)
                        todo = todo[bloom_test(b.bloom, hashes[0][todo], hashes[1][todo])]
                    r = b.locate(wanted[todo], is_sorted=True)
                    hit = r >= 0
                    where[todo[hit]], rows[todo[hit]] = i, r[hit]
                    missing -= int(hit.sum())
        return where, rows

    def read(self, tap: str, keys) -> np.ndarray:
        """Rows of ``tap`` for ``keys``, in that order.

        Parameters
        ----------
        tap : str
        keys : sequence of str
            Content keys (32 hex characters); repeats allowed.

        Returns
        -------
        ndarray, float32, shape (len(keys), D)

        Raises
        ------
        FeatxError
            When a key has no row for ``tap`` (run ``featx extract``).
        """
        wanted, inverse = np.unique(as_keys(keys), return_inverse=True)  # sorted: searches walk forward
        inverse = inverse.reshape(-1)
        with self.snapshot(tap) as blocks:
            where, rows = self._lookup(tap, wanted, blocks)
            if (where < 0).any():
                missing = wanted[np.flatnonzero(where < 0)[0]].decode()
                raise FeatxError(f"{self.path}: no {tap} codes for image {missing!r}; run featx extract")
            dim = blocks[0].codes.shape[1] if blocks else 0
            out = np.empty((wanted.size, dim), dtype=np.float32)
            for i, b in enumerate(blocks):
                dest = np.flatnonzero(where == i)
                if dest.size:
                    out[dest] = b.gather(rows[dest])
            return out[inverse]

    # ---- writing --------------------------------------------------------------------------------
    def append(self, rows: dict[str, TapRows]) -> Path:
        """Write finished rows as one journal part, atomically (whole or absent)."""
        self._part_no += 1
        return write_part(self.journal, rows, self._part_no)

    def add_segment(self, rows: dict[str, TapRows]) -> Path:
        """Write ``rows`` as one whole segment into ``incoming/`` (no lock needed).

        For workers that compute rows away from the writer (Ray actors): the next
        :meth:`commit` adopts the file by renaming it, without copying its codes.  Keys within a
        tap must be unique.  Returns the segment's path.
        """
        if self.config is None:
            raise ValueError("add_segment needs the configuration")
        name = f"inc-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
        write_segment(self.incoming_dir, rows, self.config, name=name)
        return self.incoming_dir / name

    def commit(self, provenance: dict | None = None, failures: list | None = None) -> None:
        """Make journalled and incoming rows part of the cache: one new segment, one manifest swap.

        Cost is proportional to the new rows (plus one binary search per new key in each
        existing segment), not to the rows already cached.  A legacy single-file cache is
        migrated first.  Takes the writer's lock unless this object holds it.
        (:func:`featx.cache.commit.commit` has the steps.)
        """
        commit_folder(self, provenance, failures)

    def compact(self) -> dict:
        """Merge all segments into one, streaming; returns ``{"before": n, "after": m, "rows": ...}``.

        Codes are copied in blocks of at most 32 MB; the sorted key index is built by a k-way
        merge of the segments' own indexes in blocks (16 MB of keys for all segments together),
        so memory stays bounded whatever the cache size.  Journal and incoming rows are
        committed first.  Readers keep their snapshot; the old segments are deleted when no
        reader is taking one (else by the next commit).
        """
        with self.writing():
            if self.config is None:
                self.config = self.read_config()
            if self.config is None:
                raise FeatxError(f"{self.path}: no cache here; list them with 'featx cache ls'")
            self.commit()
            return compact_segments(self)

    # ---- inspection ---------------------------------------------------------------------------
    def info(self) -> dict:
        """What ``featx cache info`` shows: folder, format, size, segments, pending files, config,
        provenance, failures and ``{tap: {"rows", "dim", "dtype"}}``."""
        view = self.path / "view.h5"  # one HDF5 file over every segment, for h5py users (a convenience)
        out = {"folder": str(self.path), "file": str(view) if view.exists() else None, "size_bytes": 0, "segments": 0,
               "pending_parts": len(self.parts()), "incoming_segments": len(self.incoming()), "taps": {}}
        m = self.manifest()
        if m is not None:
            out.update(format=m.get("format"), generation=m.get("generation"), config=m["config"],
                       provenance=m.get("provenance", {}), failures=m.get("failures", []),
                       segments=len(m["segments"]), size_bytes=sum(s.get("bytes", 0) for s in m["segments"]))
            for s in m["segments"]:
                for tap, info in s["taps"].items():
                    t = out["taps"].setdefault(tap, {"rows": 0, "dim": info["dim"], "dtype": info["dtype"]})
                    t["rows"] += info["rows"]
        elif self.legacy.exists():
            out.update(legacy_info(self))
        return out

    def repair(self):
        """Rebuild a lost or damaged ``MANIFEST.json`` from the segments' own headers; returns a
        :class:`featx.cache.repair.Repaired` (what was kept, what left out and why)."""
        return repair_folder(self)

    def verify(self) -> list[str]:
        """Problems found (empty when the cache is sound).  Reads every row once, in blocks."""
        return verify_folder(self)
