"""What a blank text is, defined once for every stage.

A text is blank, and skipped as 'empty_text', exactly when Python's `not text.strip()`
is true: it is empty, or every character in it is one where `str.isspace()` is true.
That set (`WHITESPACE`) matches Python exactly, so it is wider than ASCII whitespace: it
holds U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000 and
the separators U+001C-U+001F, and not U+200B (zero width space) or U+FEFF. Neither
DuckDB's `trim` (spaces only) nor RE2's `\\s` (ASCII only) judges the same way, so every
stage asks here, in the form it runs, and a text `score` skips is skipped by train,
adapt, export's check texts and calibration, and explain alike:

    is_blank(text)       Python; `text` is a str
    blank_mask(texts)    Arrow compute on a string array; NULL stays NULL
    blank_sql(expr)      DuckDB SQL, a BOOLEAN expression; NULL gives NULL, so
                         `WHERE NOT blank_sql(t)` drops NULL texts too

The Arrow and SQL forms run the same RE2 pattern (`BLANK_PATTERN`), built from
`WHITESPACE`; tests/test_blank_text.py checks that all three agree with `str.strip`.
"""

from __future__ import annotations

# The characters where str.isspace() is true, which are the ones str.strip() strips.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# RE2 (Arrow's and DuckDB's regex engine): nothing but WHITESPACE from start to end.
# Written as \x{...} escapes so the SQL text holds no invisible characters; RE2's `$`
# matches only at the very end (a trailing newline is not skipped over as in Python).
BLANK_PATTERN = "^[" + "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE) + "]*$"


def is_blank(text: str) -> bool:
    """True when `text` is empty or whitespace only, as `str.strip` sees it."""
    return not text.strip()


def blank_mask(texts):
    """A pyarrow BooleanArray: which of `texts` (an Arrow string array) are blank."""
    import pyarrow.compute as pc

    return pc.match_substring_regex(texts, BLANK_PATTERN)


def blank_sql(expr: str) -> str:
    """A DuckDB SQL expression: is the VARCHAR expression `expr` blank (NULL if NULL)."""
    return f"regexp_matches({expr}, '{BLANK_PATTERN}')"
