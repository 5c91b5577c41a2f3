"""``python -m featx.cli``: the ``featx`` command."""

import sys

from featx.cli import main

if __name__ == "__main__":  # importing this module (pkgutil.walk_packages does) must not run the command
    sys.exit(main())
