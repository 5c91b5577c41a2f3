"""Compaction: every committed segment merged into one, streaming, then one manifest swap.

Readers keep their snapshot; the old segments are deleted by a later commit or compaction once
the garbage collection's grace period has passed and no reader is taking a snapshot
(:meth:`featx.cache.folder.CacheFolder.collect_garbage`).  Before anything is written, the free
space is checked against the size of the segments (the new one is as large): a disk that cannot
hold it is the same ENOSPC error as a write that fills it, with nothing written.
"""

from __future__ import annotations

from featx.cache.files import check_space, write_json_atomic
from featx.cache.folder import CacheFolder
from featx.cache.layout import manifest_rows
from featx.cache.merge import merge_segments
from featx.cache.view import drop_view, refresh_view, write_view


def compact_segments(folder: CacheFolder) -> dict:
    """Merge the committed segments of ``folder`` into one (the caller holds the writer's lock and
    has committed the pending rows).

    Returns
    -------
    dict
        ``{"before": segments before, "after": segments after, "rows": {tap: rows}}``.
    """
    m = folder.manifest()
    before = len(m["segments"])
    if before <= 1:
        refresh_view(folder, m)
        folder.collect_garbage(m)
        return {"before": before, "after": before, "rows": manifest_rows(m)}
    for s in m["segments"]:  # each source's index against its checksum (its codes are checked as copied)
        for info in s["taps"].values():
            if info["rows"]:
                folder.committed(s, info, m)
    need = sum(s["bytes"] for s in m["segments"])
    check_space(folder.path, need)
    entry = merge_segments(folder.segments_dir, [(folder.segments_dir / s["name"], s) for s in m["segments"]],
                           m["config"], name=folder.new_segment_name())
    try:
        new = {**m, "generation": int(m.get("generation", 0)) + 1, "segments": [entry]}
        drop_view(folder)  # consistent or absent, whatever moment a kill comes
        write_json_atomic(folder.manifest_path, new)
    except BaseException:
        (folder.segments_dir / entry["name"]).unlink(missing_ok=True)
        raise
    write_view(folder, new)
    folder.collect_garbage(new)
    return {"before": before, "after": 1, "rows": manifest_rows(new)}
