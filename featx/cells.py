"""Cells of the CSV and Markdown files featx writes, safe to open in a spreadsheet.

Why: dataset names, class names and file names come from folders featx did not make.  A CSV cell that
begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a formula by Excel,
LibreOffice and Google Sheets (CSV or formula injection: ``=HYPERLINK(...)``, ``=cmd|...``).  OWASP's
recommendation (https://owasp.org/www-community/attacks/CSV_Injection) is followed: such a *text* cell is
prefixed with a single quote, which spreadsheets show but do not evaluate.  Numbers stay numbers: a numeric
column is never touched, and a text cell that is a plain number (``-0.5``, ``+3``) or a lone ``-`` (featx's
"none") is left as it is, since no spreadsheet evaluates it as a formula.  Every CSV and Markdown writer of
featx goes through :func:`safe_cell`, :func:`safe_frame` or :func:`markdown_cell`.
"""

from __future__ import annotations

#: First characters that make a spreadsheet evaluate a cell (OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _plain_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text == text.strip()


def _needs_quote(text: str) -> bool:
    """A text a spreadsheet would evaluate, once any leading quotes are set aside (so that :func:`plain_cell`
    can undo :func:`safe_cell` exactly: a name that itself begins ``'=`` is quoted too)."""
    core = text.lstrip("'")
    return core.startswith(FORMULA_STARTS) and core != "-" and not _plain_number(core)


def safe_cell(value):
    """``value`` itself, or a text that a spreadsheet would evaluate prefixed with ``'`` (see the module docstring).

    Non-text values (numbers, None) are returned unchanged.
    """
    if not isinstance(value, str) or not _needs_quote(value):
        return value
    return "'" + value


def plain_cell(value):
    """The inverse of :func:`safe_cell`, for featx reading its own files: ``plain_cell(safe_cell(x)) == x``."""
    if isinstance(value, str) and value.startswith("'") and _needs_quote(value[1:]):
        return value[1:]
    return value


def safe_frame(frame):
    """A copy of a pandas DataFrame whose text cells went through :func:`safe_cell` (numeric columns untouched)."""
    from pandas.api.types import is_numeric_dtype

    out = frame.copy()
    for column in out.columns:
        if not is_numeric_dtype(out[column].dtype):  # text (object or string dtype): only str cells change
            out[column] = out[column].map(safe_cell)
    out.columns = [safe_cell(c) for c in out.columns]
    return out


#: Line ends of every CSV file featx writes: CRLF, as RFC 4180 has it. Why: pandas quotes a cell holding the
#: line terminator but not a bare carriage return, so with "\n" a name holding "\r" split its row in two for
#: every reader (a hostile file name turned 8 prediction rows into 18); with "\r\n" such a cell is quoted.
CSV_LINE_END = "\r\n"


def write_csv(frame, target, **options) -> None:
    """``frame`` as a CSV file (or buffer) that opens safely: text cells through :func:`safe_frame`, rows
    ended by :data:`CSV_LINE_END` so that any character in a cell stays in its cell. ``options`` go to
    :meth:`pandas.DataFrame.to_csv` (``index``, ``float_format``, ...)."""
    safe_frame(frame).to_csv(target, lineterminator=CSV_LINE_END, **options)


def markdown_cell(value) -> str:
    """One cell of a Markdown table: :func:`safe_cell`, with ``|`` escaped and line breaks as spaces (a name
    holding either would otherwise break the table's rows)."""
    text = " ".join(str(safe_cell(value)).splitlines()) if value is not None else ""
    return text.replace("|", "\\|")
