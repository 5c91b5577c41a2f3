"""Files whose exact bytes failed to decode, remembered so that a re-run does not retry them.

One small JSON file per cache folder, ``<cache>/failed-decodes.json``, maps
``"<loader version>:<content key>"`` to the reason.  The loader version (:func:`loader_version`)
names featx's decoding rules and the OpenCV and Pillow releases: after any of them changes,
every remembered failure is tried again.  A file that is edited has another content key, so it
is tried again too.  Writes are atomic (temporary file, then rename) under an exclusive ``flock``,
so two processes never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

FILE_NAME = "failed-decodes.json"


def loader_version() -> str:
    """What decides whether a file decodes: featx's rules and the decoding libraries' versions."""
    import cv2
    import PIL

    from featx.images import LOADER_VERSION

    return f"featx-loader{LOADER_VERSION}/opencv{cv2.__version__}/pillow{PIL.__version__}"


class DecodeFailures:
    """The remembered decode failures of one cache folder.

    Parameters
    ----------
    cache_dir : str or Path
        The cache folder (``--cache``).
    """

    def __init__(self, cache_dir):
        self.path = Path(cache_dir) / FILE_NAME
        self.version = loader_version()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data.get("failures", {}) if isinstance(data, dict) else {}

    def remembered(self) -> dict[str, str]:
        """Content key -> reason, for failures recorded under this loader version."""
        prefix = self.version + ":"
        return {k[len(prefix):]: v for k, v in self._read().items() if k.startswith(prefix)}

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(FILE_NAME + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def update(self, failed: dict[str, str], succeeded=()) -> None:
        """Remember ``failed`` (content key -> reason) and forget ``succeeded`` keys."""
        succeeded = set(succeeded)
        if not failed and not succeeded:
            return
        with self._locked():
            entries = self._read()
            before = dict(entries)
            for key in succeeded:
                entries.pop(f"{self.version}:{key}", None)
            for key, reason in failed.items():
                entries[f"{self.version}:{key}"] = reason
            if entries == before:
                return
            tmp = self.path.with_name(f".{FILE_NAME}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"failures": entries}, indent=0, sort_keys=True))
            os.replace(tmp, self.path)
