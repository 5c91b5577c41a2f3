"""The one exception type that the CLI turns into a one-line message."""

from __future__ import annotations


class FeatxError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The message names the file or parameter at fault and what to do about it; ``featx`` prints it without
    a traceback and exits with status 2.

    Parameters
    ----------
    message : str
        What is wrong and what to do, phrased for a Python caller (no command-line flags).
    param : str, optional
        The Python keyword at fault (``"taps"``, ``"cache_dir"``).  ``str(error)`` starts with it; the
        CLI names the matching option instead (``--taps``, ``--cache``).
    """

    def __init__(self, message: str = "", param: str | None = None):
        super().__init__(*((message,) if param is None else (message, param)))
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message
