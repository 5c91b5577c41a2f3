"""The feature cache: CNN codes keyed by image content, one folder per extractor configuration.

Everything other code needs is imported from here (:class:`FeatureCache`, :class:`TapRows`,
:func:`cache_path`, :func:`content_key`, :func:`default_cache_dir`, :func:`list_caches`,
:func:`export`, the errors).  The package depends on nothing in featx but :mod:`featx.errors` and
:mod:`featx.vocabulary`.

Modules, lowest layer first (each imports only modules above it in this list):

============== ==============================================================================
layout         format constants, content keys, folder names, :class:`TapRows`
errors         :class:`CacheLockedError`, :class:`CacheDamagedError` and their phrases
files          whole-or-absent writes (temporary name, fsync, rename); bounded raw reads
bloom          the per-segment Bloom filter
schema         the schema of MANIFEST.json and RECORD.json, checked before they are trusted
segments       writing a segment; mapping one and looking keys up in it (:class:`Block`)
journal        journal parts: writing, reading, concatenating
folder         :class:`CacheFolder`: paths, locks, manifest, pending files, garbage; ``list_caches``
view           ``view.h5``
merge          streaming merge of segments into one (k-way merge of their indexes)
legacy         format 1 (one ``<name>.h5`` file): reading its header, migrating it
commit         the commit workflow: journal + incoming -> segments, one manifest swap
compaction     every segment merged into one
verify         every file read once, problems listed
repair         a lost or damaged manifest rebuilt from the segments' own headers
store          :class:`FeatureCache`: snapshot reads, lookups, appends; calls the above
exporting      :func:`export` to npy/parquet files
============== ==============================================================================

On-disk format (version 2)
--------------------------
``<cache dir>`` (``$FEATX_CACHE``, default ``cache``) holds one folder per extractor configuration,
named ``<backbone>-<pooling>-<dtype>-<hash>``, where ``<hash>`` is the first 12 hex characters of
SHA-256 over the configuration as sorted-keys JSON::

    MANIFEST.json          the committed state (below); replaced atomically
    RECORD.json            every segment featx wrote, and when a manifest stopped naming it (below)
    segments/seg-*.h5      immutable HDF5 segments, one per commit (or one per compaction)
    journal/part-*.npz     rows a running extraction finished, not committed yet
    incoming/inc-*.h5      whole segments written by Ray workers, adopted by the next commit
    view.h5                HDF5 virtual datasets: one ``taps/<tap>/keys`` and ``codes`` over all
                           segments, for plain h5py users (featx itself never reads it); attribute
                           ``generation``: the manifest's it matches
    writer.lock            exclusive flock: one writer at a time
    readers.lock           shared flock: held by a reader while it takes its snapshot

Keys.  A row's key is its image's content key: BLAKE2b of the file's bytes, 16-byte digest, as 32
lowercase hex characters, stored as ``S32`` (:func:`content_key`).  A key has one row per tap.

``MANIFEST.json`` (sorted-keys JSON) holds ``format`` (2); ``generation`` (int, one more at each
swap: a reader compares it before and after taking its snapshot); ``config`` (the extractor
configuration's cache key: backbone, weights, input size, preprocessing, pooling, dtype, ...;
taps are not part of it: one folder holds every tap); ``provenance`` (``created`` and
``updated`` times as ``%Y-%m-%dT%H:%M:%S%z``, plus what the writer passed: featx and library
versions, engine); ``failures`` (``[[path, reason], ...]`` of the last extraction);
``segments``, in lookup order, each ``{"name": "seg-<time_ns:020d>-<8 hex>.h5", "bytes": file size,
"taps": {tap: {"rows": N, "dim": D, "dtype": "float32"|"float16", "offsets": {dataset: byte
offset in the file}, "index_crc": CRC-32}}}``; and, after a migration, ``migrated_from`` (the legacy
file's name).  ``index_crc`` is zlib's CRC-32 over the bytes of ``keys``, ``sorted_keys``,
``sorted_rows``, ``bloom`` and ``codes_crc`` in that order (segments written before checksums have
neither it nor ``codes_crc``; they are read unchecked).  The rule for an entry without checksums:
it is trusted as written before checksums only when its segment FILE holds no ``codes_crc``; an
entry that has one of ``index_crc`` / ``codes_crc`` but not the other fails the schema check,
and an entry without both for a file that holds ``codes_crc`` is damage (checked once per
process when such an entry is mapped, one HDF5 header read, and by ``verify``); ``featx cache
repair`` rebuilds the entry, checksums included, from the file.  The manifest is checked against this
schema whenever it is read (:mod:`featx.cache.schema`: types, ranges, the dtype equal to the
configuration's, every dataset inside the file size ``bytes`` and none overlapping another); a
missing manifest where segments exist, or one that fails the check, is damage.

``RECORD.json`` holds ``generation`` (the last manifest's it saw), ``segments`` ``{name: null while
the manifest names it, else the time (s) it stopped}`` and ``writing`` (the names a writer
recorded, under its lock, BEFORE creating each segment file: a file a killed writer leaves is then
featx's own; the next commit moves those no manifest names into ``segments`` as unnamed).  Only
names the record holds are ever deleted: a file's name (its time) never makes it deletable.
Garbage collection deletes only segments the record holds, once they have been
unnamed for :func:`~featx.cache.layout.grace_seconds` (``$FEATX_CACHE_GRACE``, default 3600 s: a
plain h5py reader holding an old ``view.h5`` keeps its rows that long); any other segment file is
never deleted (``verify`` lists it).  ``featx cache repair`` (:mod:`featx.cache.repair`) rebuilds a
lost or damaged manifest from the segments' own headers.

A segment (``segments/seg-*.h5``; an incoming one is ``incoming/inc-<time_ns>-<pid>-<8 hex>.h5``) has
attributes ``format`` (2) and ``config`` (sorted-keys JSON) and, per tap, a group ``taps/<tap>``
with ``keys`` (N,) S32 and ``codes`` (N, D) in row order, plus a persisted index ``sorted_keys``
(N,) S32 and ``sorted_rows`` (N,) int64 (``keys[sorted_rows] == sorted_keys``) and a Bloom filter
``bloom`` (10 bits per key rounded up to a power of two, at least 64; 4 probes; stored as
little-endian packed bits, uint8; see :mod:`featx.cache.bloom`), which lets a lookup skip the
segments that surely lack a key, and ``codes_crc`` (N,) uint32, zlib's CRC-32 of each row of
``codes`` as stored: a reader checks a tap's ``index_crc`` the first time its process maps the
segment and each row's CRC as it reads the row; compaction checks every row it copies.  Within a segment a key appears once; across the segments a
manifest names, once too.  Every dataset is contiguous and uncompressed, so a reader maps the
segment (``mmap``; a process keeps the last 256 segments mapped, as they never change) and views
each dataset at the byte offset the manifest records: a lookup is a binary search in each
segment's ``sorted_keys`` (or, when more keys are asked than a segment holds, a search of that
segment's keys among the asked ones), and a read gathers only the rows asked for with ``pread``
(runs of adjacent rows in one call) -- cost proportional to the keys asked for, not to the cache
size, and memory bounded by what is returned.

A journal part (``journal/part-<time_ns:020d>-<pid>-<n:06d>.npz``) is an uncompressed ``.npz``
with, per tap, ``keys__<tap>`` (N,) S32, ``codes__<tap>`` (N, D) and ``crc__<tap>`` (N,) uint32
(each row's CRC-32; absent in parts of older versions); it may repeat a committed key (the
committed row wins).  A part is checked whenever it is read (shapes, key length, finite codes,
CRCs, and each tap's width: that of the committed segments, or of the first part for a new tap)
and a part that fails is never committed.  The segments a manifest names agree on each tap's
width (``dim``); a manifest whose segments do not is damage.  NaN or infinite codes are never written.  Temporary files are named ``.tmp-<stem>-<pid>-<8 hex><suffix>`` in
the folder of their final name.

Writes: :meth:`FeatureCache.append` writes a journal part (temporary name, fsync, rename: whole or
absent).  :meth:`FeatureCache.commit` turns all parts into ONE new segment (cost proportional to
the new rows; keys already present are dropped, so a key has one row), adopts complete Ray
segments from ``incoming/`` by hard-linking them (more than ``MERGE_ADOPTED_OVER`` = 64 of them
are merged into one, streaming), and swaps the manifest (temporary file, fsync,
``os.replace``, fsync of the folder).  :meth:`FeatureCache.compact` merges all segments into one,
streaming (codes copied in blocks; the sorted index by a k-way merge in blocks), and swaps the
manifest the same way.  A process killed at any moment leaves the previous manifest, which names
only complete segments; the next commit removes its temporary files, records the segments it
left unnamed for garbage collection (the record's ``writing``) and folds in its journal.  On any exception (ENOSPC included) a writer removes
its own temporary files before the error propagates.

Damage (a segment, journal part or manifest missing, truncated, unreadable or failing its
schema or checksum) is a :class:`CacheDamagedError` naming the file, raised where the file is
opened or read; nothing is rewritten.  Compaction and export check the free space before they
write, and report HDF5's or pyarrow's words for a full disk as ENOSPC.  ``verify`` lists every damaged file instead of raising.

Readers and deletion: a reader takes a shared ``flock`` on ``readers.lock``, reads the manifest
and maps the segments it names, then releases the lock -- its snapshot stays valid without the
lock because an open or mapped file outlives its unlink on POSIX.  Readers never take
``writer.lock``: only a process that must compute missing rows does (waiting for another writer,
and saying so).  A writer deletes a segment that the manifest no longer names only after the
grace period and only while it holds ``readers.lock`` exclusively (tried without waiting); when a
reader is taking its snapshot the files stay and the next commit or compaction deletes them.
``view.h5`` is deleted just before each manifest swap and written after it (consistent or
absent), and rewritten by any commit that finds it stale.

Older caches were one ``<name>.h5`` file (format 1) next to where the folder now goes (with its
journal in ``<name>.h5.journal/``; see :mod:`featx.cache.legacy`).  They are read as they are,
and migrated into a segment by the next commit (the old file is removed only after the new
manifest is in place).
"""

from __future__ import annotations

from featx.cache.bloom import BLOOM_BITS_PER_KEY
from featx.cache.commit import MERGE_ADOPTED_OVER
from featx.cache.errors import CacheDamagedError, CacheLockedError
from featx.cache.exporting import export
from featx.cache.folder import list_caches
from featx.cache.layout import (FORMAT_VERSION, KEY_DTYPE, LEGACY_FORMAT, MANIFEST, TapRows, cache_path,
                                config_hash, content_key, default_cache_dir)
from featx.cache.segments import write_segment
from featx.cache.store import FeatureCache
from featx.vocabulary import DTYPES

__all__ = ["BLOOM_BITS_PER_KEY", "DTYPES", "FORMAT_VERSION", "KEY_DTYPE", "LEGACY_FORMAT", "MANIFEST",
           "MERGE_ADOPTED_OVER", "CacheDamagedError", "CacheLockedError", "FeatureCache", "TapRows", "cache_path",
           "config_hash", "content_key", "default_cache_dir", "export", "list_caches", "write_segment"]
