"""The one exception type that the CLI turns into a one-line message."""


class FeatxError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The message names the file or option at fault and what to do about it;
    ``featx`` prints it without a traceback and exits with status 2.
    """
