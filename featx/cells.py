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


def safe_cell(value):
    """``value`` itself, or a text that a spreadsheet would evaluate prefixed with ``'`` (see the module docstring).

    Non-text values (numbers, None) are returned unchanged.
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS) or value == "-" or _plain_number(value):
        return value
    return "'" + value


def safe_frame(frame):
    """A copy of a pandas DataFrame whose text cells went through :func:`safe_cell` (numeric columns untouched)."""
    from pandas.api.types import is_numeric_dtype

    out = frame.copy()
    for column in out.columns:
        if not is_numeric_dtype(out[column].dtype):  # text (object or string dtype): only str cells change
            out[column] = out[column].map(safe_cell)
    out.columns = [safe_cell(c) for c in out.columns]
    return out


def markdown_cell(value) -> str:
    """One cell of a Markdown table: :func:`safe_cell`, with ``|`` escaped and line breaks as spaces (a name
    holding either would otherwise break the table's rows)."""
    text = " ".join(str(safe_cell(value)).splitlines()) if value is not None else ""
    return text.replace("|", "\\|")
