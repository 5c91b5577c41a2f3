"""Errors and notes in the command line's words: one line each, on stderr, naming the option to change.

Why: the Python API raises :class:`~featx.errors.FeatxError` naming its keyword (``cache_dir``) and lets
``OSError`` through; a command-line user needs the option (``--cache``), the path, and what to do, in one
line.  :func:`featx.cli.main` calls these and turns the result into an exit status.
"""

from __future__ import annotations

import errno
import logging
import re
import sys

from featx.cli.options import default_cache_folder

#: Python keyword -> CLI option, where they differ (for FeatxError(param=...) raised by the API).
PARAM_OPTIONS = {"cache_dir": "--cache", "out_dir": "--out", "trust": "--trust-bundle", "learning_rate": "--lr",
                 "with_sweep": "--sweep", "max_bytes": "--max-upload-mb", "tap": "--taps"}

OS_HINTS = {
    "ENOSPC": "no space left on device; free some space or point --cache/--out at another disk "
              "(finished work is kept: run the command again)",
    "EDQUOT": "disk quota exceeded; free some space or point --cache/--out at another disk",
    "EACCES": "permission denied; choose a folder you can write with --cache/--out",
    "EPERM": "operation not permitted; choose a folder you can write with --cache/--out",
    "EROFS": "read-only file system; choose a writable folder with --cache/--out",
    "EMFILE": "too many open files; raise the limit (ulimit -n) or use fewer --workers",
}


def option_for(param: str) -> str:
    """The CLI option that sets the Python keyword ``param`` (``cache_dir`` -> ``--cache``)."""
    return PARAM_OPTIONS.get(param, "--" + param.replace("_", "-"))


def featx_error_line(exc, args) -> str:
    """``<option>: <message>`` for a FeatxError that names its keyword, else its text (no prefix)."""
    param = getattr(exc, "param", None)
    if not param:
        return str(exc)
    option = option_for(param)
    if param == "backbone" and getattr(args, "backbones", None):  # the user typed the plural spelling
        option = "--backbones"
    return f"{option}: {exc.message}"


def destination(args):
    """Where the command writes, to name it when an OSError carries no file name (a write to an open file)."""
    out, cache = getattr(args, "out", None), getattr(args, "cache", None)
    if getattr(args, "command", None) == "extract" or (cache is not None and out is None):
        return default_cache_folder() if cache is None else cache
    return out


def os_error_line(exc: OSError, where=None) -> str:
    """``<path>: <what went wrong and what to do>`` for an OSError (also h5py's, which carry no errno).

    Parameters
    ----------
    exc : OSError
        any operating-system error; ``exc.filename`` names the path when the OS gave one.
    where : path, optional
        named instead when the error carries no file name (the command's ``--cache`` or ``--out``).

    Returns
    -------
    str
        one line, without the ``featx: error:`` prefix.
    """
    code = exc.errno
    text = str(exc)
    if code is None:  # h5py: "Can't write data (file write failed: ..., errno = 28, error message = ...)"
        found = re.search(r"errno = (\d+)", text)
        code = int(found.group(1)) if found else None
    name = errno.errorcode.get(code, "") if code is not None else ""
    what = OS_HINTS.get(name) or (exc.strerror or text.splitlines()[0] if text else type(exc).__name__).lower()
    path = exc.filename or exc.filename2
    if path is None:
        found = re.search(r"name = '([^']+)'", text)  # h5py names the file this way
        path = found.group(1) if found else where
    return f"{path}: {what}" if path else what


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (it may be replaced later)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def log_to_stderr(verbose: bool) -> None:
    """featx's notes (what a folder scan left out) go to stderr; each file by name with --verbose."""
    log = logging.getLogger("featx")
    for handler in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("featx: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
