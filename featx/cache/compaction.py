"""Compaction: every committed segment merged into one, streaming, then one manifest swap.

Readers keep their snapshot; the old segments are deleted when no reader is taking one (else by
the next commit or compaction).
"""

from __future__ import annotations

from featx.cache.files import write_json_atomic
from featx.cache.folder import CacheFolder
from featx.cache.layout import manifest_rows
from featx.cache.merge import merge_segments
from featx.cache.view import write_view


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
        return {"before": before, "after": before, "rows": manifest_rows(m)}
    entry = merge_segments(folder.segments_dir, [(folder.segments_dir / s["name"], s) for s in m["segments"]],
                           m["config"])
    try:
        new = {**m, "generation": int(m.get("generation", 0)) + 1, "segments": [entry]}
        write_json_atomic(folder.manifest_path, new)
    except BaseException:
        (folder.segments_dir / entry["name"]).unlink(missing_ok=True)
        raise
    write_view(folder, new)
    folder.collect_garbage(new)
    return {"before": before, "after": 1, "rows": manifest_rows(new)}
