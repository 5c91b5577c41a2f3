"""How featx's argparse behaves: defaults in every help line, hidden old spellings, errors with a suggestion.

Why its own module: every command's parser is a :class:`FeatxParser`, so these rules hold for all of them
without each command repeating them; the commands only declare their options.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help states its default: the help text's own words when it says ``default``,
    else ``(default: VALUE)`` appended (``off`` for a flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if text == argparse.SUPPRESS or not action.option_strings or "default" in text.lower():
            return text
        if action.default is argparse.SUPPRESS:  # --help, --version, hidden aliases
            return text
        if action.nargs == 0 and action.default in (False, None):
            return f"{text} (default: off)"
        if isinstance(action, argparse.BooleanOptionalAction) and action.default in (True, False):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.default is None:
            return text  # the help must say what happens; the --help test catches a missing default
        value = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return f"{text} (default: {value})"


class _Alias(argparse.Action):
    """A hidden old spelling: sets the new option's value and warns that the name is going."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"featx: warning: {option_string} is now {self.new}; the old name goes in the next release",
              file=sys.stderr)
        setattr(namespace, self.dest, self.const if values is None else values)


def add_alias(parser, old: str, new: str, dest: str, **kwargs) -> None:
    """Accept ``old`` as a hidden spelling of ``new`` (same ``dest``); left out of ``--help``."""
    parser.add_argument(old, dest=dest, action=_Alias, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                        **kwargs)


class FeatxParser(argparse.ArgumentParser):
    """argparse whose errors are one line from the subcommand used, with a "did you mean" for misspellings."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # an abbreviation that works today breaks when an option is added
        super().__init__(*args, **kwargs)
        self.commands: dict = {}

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", FeatxParser)
        action = super().add_subparsers(**kwargs)
        self.commands = action.choices
        return action

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            used = self.commands.get(getattr(namespace, "command", None), self)
            used.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace

    def _option_names(self) -> dict:
        """Every option string -> the name to suggest (an alias suggests its new name)."""
        names = {}
        for action in self._actions:
            for s in action.option_strings:
                names[s] = action.new if isinstance(action, _Alias) else s
        return names

    def suggestion(self, message: str) -> str:
        """`` (did you mean --taps?)`` for a misspelt option or choice in an argparse message, else ``''``."""
        m = re.search(r"invalid choice: '?([^'\s]*)'? \(choose from (.*)\)", message)
        if m:
            choices = [c.strip().strip("'\"") for c in m.group(2).split(",")]
            close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.5)
            return f"; did you mean {close[0]!r}?" if close else ""
        m = re.search(r"unrecognized arguments: (.*)", message)
        if m:
            names = self._option_names()
            hints = []
            for word in m.group(1).split():
                if word.startswith("-"):
                    close = difflib.get_close_matches(word.split("=")[0], list(names), n=1, cutoff=0.6)
                    if close:
                        hints.append((names[close[0]], word.split("=")[0]))
            if len(hints) == 1:
                return f"; did you mean {hints[0][0]}?"
            return "; did you mean " + ", ".join(f"{new} (for {old})" for new, old in hints) + "?" if hints else ""
        return ""

    def error(self, message):
        """One line, exit 2: the error, its "did you mean" when there is one, and where the options are.

        The usage block is not printed: it buried the one useful line under a dozen lines of options
        (``featx COMMAND --help`` shows them, with their defaults)."""
        self.exit(2, f"{self.prog}: error: {message}{self.suggestion(message)}; see '{self.prog} --help'\n")


def add_command(subparsers, name: str, help: str, description: str | None = None) -> FeatxParser:
    """A subcommand's parser; its description is ``help`` as a sentence unless it has its own.

    Parameters
    ----------
    subparsers
        what :meth:`FeatxParser.add_subparsers` returned.
    name, help : str
        the command's name and its one line in ``featx --help`` (lower case, no full stop).
    description : str, optional
        the longer text at the top of ``featx NAME --help``.
    """
    if description is None:
        description = help[:1].upper() + help[1:] + "."
    return subparsers.add_parser(name, help=help, description=description)
