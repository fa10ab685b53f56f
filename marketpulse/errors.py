"""Errors a user can fix. The CLI prints their message as one line and exits 1.

Every message says what is wrong *and* what to do about it, e.g.
"column 'txt' not found in table 'news' (columns: id, text); pass --text-col with one of them".
"""


class MarketpulseError(Exception):
    """An expected failure caused by input, configuration or environment."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (DuckDB's run to several), else its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
