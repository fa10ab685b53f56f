"""Terminal display width, for padding table columns that hold any text.

`str.ljust` and format widths count code points, but a terminal draws an East Asian
wide or fullwidth character (CJK, kana, hangul, most emoji) in two columns and a
combining mark or zero-width character in none, so a column holding 株式会社 would push
the rest of its row four columns right. `width` counts as the terminal does, from the
standard library's Unicode tables (`unicodedata`, no extra package):

- East Asian Width W or F: 2 columns;
- combining marks (Mn, Me), format characters (Cf: zero-width space and joiner, ...) and
  control characters: 0;
- everything else: 1.

Every table marketpulse prints (`marketpulse sql`, the trends report, the metrics and
evaluation tables) pads with `ljust` / `rjust` from here.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

_ZERO = frozenset({"Mn", "Me", "Cf", "Cc"})


@lru_cache(maxsize=4096)
def _char_width(ch: str) -> int:
    if unicodedata.category(ch) in _ZERO:
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def width(text: str) -> int:
    """The columns a terminal draws `text` in (see the module docstring)."""
    if text.isascii() and text.isprintable():
        return len(text)
    return sum(_char_width(ch) for ch in text)


def ljust(text: str, columns: int, fill: str = " ") -> str:
    """`text` padded on the right to `columns` display columns (never cut)."""
    return text + fill * max(0, columns - width(text))


def rjust(text: str, columns: int, fill: str = " ") -> str:
    """`text` padded on the left to `columns` display columns (never cut)."""
    return fill * max(0, columns - width(text)) + text


def clip(text: str, columns: int, ellipsis: str = "...") -> str:
    """`text` as is when it fits in `columns` display columns, else cut to fit with
    `ellipsis` at the end (a wide character is never split)."""
    if width(text) <= columns:
        return text
    room, used, out = columns - width(ellipsis), 0, []
    for ch in text:
        used += _char_width(ch)
        if used > room:
            break
        out.append(ch)
    return "".join(out) + ellipsis
