"""The cache's errors, and the one-line phrases their messages are built from.

Damage is reported where a file is opened or read, naming the file and what to do; nothing is
repaired behind the user's back.
"""

from __future__ import annotations

from pathlib import Path

from featx.errors import FeatxError


class CacheLockedError(FeatxError):
    """Another process holds the cache's writer lock."""


class CacheDamagedError(FeatxError):
    """A file of a cache folder (segment, incoming segment, journal part, manifest) is missing,
    truncated or unreadable.  ``path`` names it, ``detail`` says what was found."""

    def __init__(self, path, detail: str, folder=None, advice: str | None = None):
        path = Path(path)
        folder = Path(folder) if folder is not None else path.parent.parent  # segments/seg-*.h5 -> the cache folder
        self.path, self.detail, self.folder = path, detail, folder
        if advice is None and path.parent.name in ("incoming", "journal"):  # rows not committed yet
            advice = part_advice(path)
        advice = advice or (f"run 'featx cache verify {folder}' to list the damage; no featx command repairs a "
                            f"segment: move {folder} aside and run featx extract again to rebuild the cache")
        super().__init__(f"{path}: damaged cache file ({detail}); {advice}")


def why(exc: BaseException) -> str:
    """One line of what a failed read said (h5py's messages are long and may span lines)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def missing(path: Path) -> str:
    """What a missing file's damage message says: the file, or its whole folder, is gone."""
    if path.parent.is_dir():
        return "the file is missing"
    return f"the file is missing: the whole {path.parent.name}/ folder is gone"


def part_advice(path: Path) -> str:
    """What to do about a damaged journal part or incoming segment (its rows were never committed)."""
    return (f"delete {path.name} (its rows were never committed: the next featx extract computes them again), "
            "then run the command again")


def repair_advice(folder: Path) -> str:
    """What to do about a missing or damaged ``MANIFEST.json`` (the segments still hold the rows)."""
    return (f"run 'featx cache repair {folder}' to rebuild it from the segments' own headers "
            "(nothing else is changed until then)")
