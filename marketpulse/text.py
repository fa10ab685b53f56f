"""What a blank text is, defined once for every stage.

A text is blank, and skipped as 'empty_text', when it holds no visible character: it
is empty, or every character in it is whitespace (`str.isspace()`, the characters
Python's `str.strip` strips), a control or format character (Unicode categories Cc and
Cf: U+200B zero width space, U+FEFF, soft hyphens, tag characters ...) or U+FFFD. The
tokenizer drops all of those (BERT's text cleaning), so such a text became `[CLS]
[SEP]` and got a confident label from no words at all. Neither DuckDB's `trim` (spaces
only) nor RE2's `\\s` (ASCII only) judges the same way, so every stage asks here, in the
form it runs, and a text `score` skips is skipped by train, adapt, export's check texts
and calibration, and explain alike:

    is_blank(text)       Python; `text` is a str
    blank_mask(texts)    Arrow compute on a string array; NULL stays NULL
    blank_sql(expr)      DuckDB SQL, a BOOLEAN expression; NULL gives NULL, so
                         `WHERE NOT blank_sql(t)` drops NULL texts too

All three run one character class (`INVISIBLE`, built from Python's Unicode tables);
tests/test_blank_text.py checks that they agree with the definition above.
"""

from __future__ import annotations

import re

# The characters where str.isspace() is true, which are the ones str.strip() strips.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


# Every character a blank text may consist of, as (first, last) code point ranges:
# whitespace, U+FFFD and the Unicode categories Cc and Cf of Unicode INVISIBLE_UNICODE
# (Python 3.11's tables; tests/test_blank_text.py recomputes them there). Written out,
# since computing them costs 0.6 s per import, and fixed, so that the same text is blank
# under every Python: 3.12's Unicode 15 adds U+13439-U+1343F, left out here.
INVISIBLE_UNICODE = "14.0.0"
INVISIBLE: tuple[tuple[int, int], ...] = (
    (0x0000, 0x0020),
    (0x007F, 0x00A0),
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x1680, 0x1680),
    (0x180E, 0x180E),
    (0x2000, 0x200F),
    (0x2028, 0x202F),
    (0x205F, 0x2064),
    (0x2066, 0x206F),
    (0x3000, 0x3000),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0xFFFD, 0xFFFD),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
)

# RE2 (Arrow's and DuckDB's regex engine): nothing but INVISIBLE from start to end.
# Written as \x{...} escapes so the SQL text holds no invisible characters; RE2's `$`
# matches only at the very end (a trailing newline is not skipped over as in Python).
BLANK_PATTERN = "^[" + "".join(f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in INVISIBLE) + "]*$"
_BLANK = re.compile(
    "[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in INVISIBLE) + "]*"
)


def is_blank(text: str) -> bool:
    """True when `text` holds no visible character (see the module docstring)."""
    return not text.strip() or _BLANK.fullmatch(text) is not None


def blank_mask(texts):
    """A pyarrow BooleanArray: which of `texts` (an Arrow string array) are blank."""
    import pyarrow.compute as pc

    return pc.match_substring_regex(texts, BLANK_PATTERN)


def blank_sql(expr: str) -> str:
    """A DuckDB SQL expression: is the VARCHAR expression `expr` blank (NULL if NULL)."""
    return f"regexp_matches({expr}, '{BLANK_PATTERN}')"
