"""Outputs that appear whole or not at all: a temporary name beside the file, then one ``os.replace``.

Why: a run that fails half-way (a plot that cannot be drawn, a full disk, Ctrl-C) must never leave a file that
looks finished -- a truncated CSV, a ``model.featx`` without its ``metrics.json``.  :func:`whole` writes one
file so; :class:`Together` writes several that appear together at the end of a block, or none of them.
A leaf module: it imports nothing from featx.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def temporary_name(path: str | Path) -> Path:
    """``<folder>/.<stem>.tmp-<pid>-<random><suffix>``: hidden, unique, and with the file's own suffix (matplotlib
    and pandas choose the format by it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}{path.suffix}")


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@contextlib.contextmanager
def whole(path: str | Path):
    """Yield a temporary path to write instead of ``path``; renamed onto ``path`` when the block ends, removed
    if it raises (the exception goes on).  The folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> Path:
    """``text`` as UTF-8 at ``path``, whole or not at all; returns ``path``."""
    with whole(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


class Together:
    """Several outputs that appear together: each written under a temporary name, all renamed when the ``with``
    block ends (in the order they were asked for), all removed if it raises."""

    def __init__(self):
        self.pending: list[tuple[Path, Path]] = []

    def path(self, final: str | Path) -> Path:
        """Where to write ``final`` inside the block (its folder is created)."""
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(final)
        self.pending.append((tmp, final))
        return tmp

    def __enter__(self) -> "Together":
        return self

    def __exit__(self, kind, value, tb) -> bool:
        pending, self.pending = self.pending, []
        if kind is not None:
            for tmp, _ in pending:
                _remove(tmp)
            return False
        for tmp, final in pending:
            os.replace(tmp, final)
        return False
