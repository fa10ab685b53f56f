"""Errors a user can fix. The CLI prints their message as one line and exits 1.

Every message says what is wrong *and* what to do about it, e.g.
"column 'txt' not found in table 'news' (columns: id, text); pass --text-col with one of them".
"""


class MarketpulseError(Exception):
    """An expected failure caused by input, configuration or environment."""
