"""File names as text: one visible, reversible escape for names that are not valid UTF-8.

Why: a POSIX file name is bytes.  Python reads bytes that are not UTF-8 (Latin-1 names from old archives
and Windows shares: ``caf\\xe9.jpg``) as lone surrogates (PEP 383, ``surrogateescape``), which a path can
use but text cannot: CSV and Parquet writers, matplotlib and HTTP responses fail on them.  Every output
featx writes shows such a name with :func:`shown`, and wherever featx reads a name back from its own
outputs it uses :func:`unshown`, which gives the same file again.

The escape (documented in ``docs/names.md``):

* each byte that is not part of valid UTF-8 is written ``\\xHH`` (two lower-case hex digits, 80 to ff);
* a backslash is written ``\\\\`` only where it would otherwise read as an escape (followed by a backslash,
  by such a byte, or by ``x`` and two hex digits from 80 to ff); every other backslash is itself.

So a name that is valid UTF-8 is shown unchanged (Windows paths included), and ``unshown(shown(n)) == n``
for every name.  A leaf module: it imports nothing from featx.
"""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(r"\\\\|\\x[89a-f][0-9a-f]")
_LOOKS_ESCAPED = re.compile(r"x[89a-fA-F][0-9a-fA-F]")


def _is_byte(ch: str) -> bool:
    return "\udc80" <= ch <= "\udcff"


def shown(name) -> str:
    """``name`` (str, bytes or path) as text that any writer accepts: undecodable bytes as ``\\xHH``.

    Parameters
    ----------
    name : str, bytes or os.PathLike

    Returns
    -------
    str
        Valid Unicode (no lone surrogates); equal to ``str(name)`` when the name is valid UTF-8 and holds no
        backslash that looks like an escape.
    """
    text = os.fsdecode(os.fspath(name)) if isinstance(name, (bytes, os.PathLike)) else str(name)
    if "\\" not in text and not any(_is_byte(c) for c in text):
        return text
    out = []
    for i, ch in enumerate(text):
        if _is_byte(ch):
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch == "\\":
            after = text[i + 1:i + 2]
            ambiguous = after == "\\" or (after and _is_byte(after)) or _LOOKS_ESCAPED.match(text, i + 1)
            out.append("\\\\" if ambiguous else "\\")
        else:
            out.append(ch)
    return "".join(out)


def unshown(text: str) -> str:
    """The name :func:`shown` wrote as ``text``: ``\\xHH`` back to its byte, ``\\\\`` back to ``\\``.

    Returns
    -------
    str
        A name ``open`` and ``pathlib.Path`` accept (undecodable bytes as lone surrogates, PEP 383).
    """
    if "\\" not in text:
        return text

    def one(match: re.Match) -> str:
        found = match.group(0)
        return "\\" if found == "\\\\" else chr(0xDC00 + int(found[2:], 16))

    return _ESCAPE.sub(one, text)


def has_bytes(name) -> bool:
    """Whether ``name`` holds bytes that are not UTF-8 (so that :func:`shown` changes it)."""
    return shown(name) != (os.fsdecode(os.fspath(name)) if isinstance(name, (bytes, os.PathLike)) else str(name))
