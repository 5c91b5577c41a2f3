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

from featx.errors import FeatxError

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
        """The file's entries, checked: ``{"failures": {str: str}}``; {} when there is no file.

        Raises
        ------
        FeatxError
            The file is unreadable or not of that shape (one line naming it and what to do: it only
            remembers which files failed to decode, so deleting it loses nothing else).
        """
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            entries = data.get("failures") if isinstance(data, dict) else None
            if isinstance(entries, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in entries.items()):
                return entries
            problem = 'expected {"failures": {"<loader>:<content key>": "<reason>", ...}}'
        raise FeatxError(f"{self.path}: damaged ({problem}); it only remembers which files failed to decode: "
                         "delete it and run the command again (those files are tried once more)")

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
            try:
                with open(tmp, "w") as fh:
                    fh.write(json.dumps({"failures": entries}, indent=0, sort_keys=True))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
