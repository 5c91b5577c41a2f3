"""The ``featx`` command: parses arguments and calls the Python API, nothing more.

One vocabulary (the table in the README): the same option name, meaning and choices for the same thing in
every command, matching the Python API's keyword (``--taps`` <-> ``taps=``).  Old spellings are hidden
aliases for one release: they still work, print a one-line warning, and are left out of ``--help``.

Errors in the arguments come from the subcommand that was used, with its usage and a "did you mean" for a
misspelt option or choice; everything a command can check cheaply (values, choices, paths) is checked
before its first expensive or writing step.

Where things are:

- :mod:`featx.cli.commands`: the list of commands, :func:`build_parser` and :func:`main` (errors -> exit status);
- one module per command (:mod:`~featx.cli.extract`, :mod:`~featx.cli.fit_head`, ...): ``add_parser``
  declares its options, ``run`` checks them and calls the API (imported there, lazily);
- :mod:`featx.cli.options`: the options and value types several commands share;
- :mod:`featx.cli.parser`: featx's argparse (defaults in help, hidden aliases, "did you mean");
- :mod:`featx.cli.checks`: cheap checks before work; :mod:`featx.cli.errors`: errors in the CLI's words;
- :mod:`featx.cli.output`: shared pieces of printed results.

Nothing here imports TensorFlow, scikit-learn or pandas until a command runs: ``featx --help`` stays fast.
"""

from featx.cli.checks import check_extractor, check_file, check_folder, check_out_file, check_out_folder
from featx.cli.commands import build_parser, main
from featx.cli.errors import PARAM_OPTIONS, option_for, os_error_line
from featx.cli.fit_head import head_names
from featx.cli.options import CACHE_HELP, EXIT_STATUS, count, fraction, nonnegative_float, port_number, \
    positive_float, positive_int, taps_list
from featx.cli.output import plural
from featx.cli.parser import FeatxParser, HelpFormatter, add_alias

__all__ = ["CACHE_HELP", "EXIT_STATUS", "PARAM_OPTIONS", "FeatxParser", "HelpFormatter", "add_alias", "build_parser",
           "check_extractor", "check_file", "check_folder", "check_out_file", "check_out_folder", "count", "fraction",
           "head_names", "main", "nonnegative_float", "option_for", "os_error_line", "plural", "port_number",
           "positive_float", "positive_int", "taps_list"]
