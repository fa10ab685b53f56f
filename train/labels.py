"""Name the label values read from a source; nothing here reads one.

Labels may be strings or integers. Integer labels, and digits stored as text, are named
by `label_names` (`--label-names bearish,bullish,neutral`: 0 -> bearish ...) or else by
their digits; digits stored as text that are among the names are those names, as text.
A negative value has no position, so no `label_names` names it (`UnnamedValue`). Float
labels that are whole numbers (pandas writes an integer column with gaps as DOUBLE with
NaN) are those integers; any other number is an error. BOOLEAN labels are the integers 0
(false) and 1 (true), so `--label-names neg,pos` names them.
Given string labels, `label_names` is the allowed set (and fixes the label order).

`data.load_labeled` calls `name_labels` on a column's values (`is_nan` tells it which are
missing), `literal` writes a value as SQL for advice on filtering, and `is_integer` says
whether a value is named by position.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import TYPE_CHECKING

from marketpulse.errors import MarketpulseError
from marketpulse.train.advice import query_flag, sql_name

if TYPE_CHECKING:
    from marketpulse.train.data import DataSource


class UnknownLabel(MarketpulseError):
    """A label value that none of the given label names matches."""

    def __init__(self, label: str, column: str, names: list[str]):
        self.label, self.column, self.names = label, column, names
        super().__init__(
            f"label {label!r} in column {column!r} is not among the label names "
            f"({', '.join(names)}); add it to --label-names or filter those rows with --query"
        )


class UnnamedValue(MarketpulseError):
    """An integer label that --label-names cannot name: negative, or past the last name.

    `values` holds every distinct value read, so evaluate, which can also name values
    with --label-map, can say the fixes that work there."""

    def __init__(self, message: str, values: list[int]):
        self.values = values
        super().__init__(message)


def parse_label_names(value: str | None) -> tuple[str, ...] | None:
    """`"bearish, bullish,neutral"` -> ("bearish", "bullish", "neutral")."""
    if value is None or not value.strip():
        return None
    names = tuple(part.strip() for part in value.split(","))
    if any(not n for n in names) or len(set(names)) != len(names):
        raise MarketpulseError(
            f"--label-names {value!r} has empty or repeated names; "
            "pass distinct comma-separated names, e.g. bearish,bullish,neutral"
        )
    return names


def is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _as_int(value, column: str) -> int | None:
    """An integer label's value (1.0 -> 1, True -> 1), or None for a label that is not a
    number."""
    if isinstance(value, bool):  # a BOOLEAN column: False=0, True=1, named by --label-names
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        if math.isfinite(value) and value == int(value):
            return int(value)
        name = sql_name(column) if column else "label"  # "": literal, is_integer
        example = f"SELECT ..., CASE WHEN {name} > 0 THEN 'up' ELSE 'down' END AS {name} FROM ..."
        raise MarketpulseError(
            f"label {value} in column {column!r} is not a whole number; labels are classes: "
            "pass a --label-col of class names or integers, or make classes with --query, "
            f"e.g. {query_flag(example)}"
        )
    return None


def _is_digits(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also takes "²" and other characters `int` refuses."""
    return text.isascii() and text.isdigit()


def is_integer(value) -> bool:
    """An integer label, or digits stored as text: both are named by position."""
    return _as_int(value, "") is not None or (isinstance(value, str) and _is_digits(value.strip()))


def literal(value) -> str:
    """A label value as SQL writes it: `'rare'`, `3` (1.0 -> `1`), `true`."""
    if isinstance(value, bool):  # `flag <> 1` is a type error on a BOOLEAN column
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    number = _as_int(value, "")
    return str(number) if number is not None else "'" + str(value).replace("'", "''") + "'"


def _no_name(value: int, values: list[int], source: DataSource) -> str:
    """Why integer `value` has no name by --label-names, with a fix that works in train:
    more names reach a value past the last name, but no name reaches a negative value,
    so those values must shift to start at 0, or be named by their own digits."""
    names, column = source.label_names, source.label_col
    text, label = sql_name(source.text_col), sql_name(column)
    shift = query_flag(f"SELECT {text}, {label} + {-value} AS {label} FROM ...")
    if value >= 0:
        return (
            f"label value {value} in column {column!r} has no name ({len(names)} names "
            f"given: {', '.join(names)}); pass one name per value 0..{values[-1]} with "
            "--label-names"
        )
    return (
        f"label value {value} in column {column!r} has no name: --label-names names the "
        f"values 0..{len(names) - 1} by position, so a negative value has none; shift the "
        f"values to start at 0 in a --query, e.g. {shift}, or drop --label-names to name "
        "each class by its value"
    )


def name_labels(raw: list, source: DataSource) -> tuple[list[str], list[str], bool]:
    """Map raw label values to names; return (names per row, label order, whether
    integers were named by their position in --label-names)."""
    names = source.label_names
    ints = [_as_int(v, source.label_col) for v in raw]
    if raw and all(i is not None for i in ints):
        if names is None:
            order = [str(i) for i in sorted(set(ints))]
            return [str(i) for i in ints], order, False
        values = sorted(set(ints))
        bad = [i for i in values if not 0 <= i < len(names)]
        if bad:
            raise UnnamedValue(_no_name(bad[0], values, source), values)
        return [names[i] for i in ints], list(names), True
    labels = [str(v).strip() for v in raw]
    if names is None:
        return labels, sorted(set(labels)), False
    if labels and all(_is_digits(y) for y in labels) and not set(labels) & set(names):
        # digits stored as text (a CSV read as VARCHAR): they index --label-names too
        return name_labels([int(y) for y in labels], source)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise UnknownLabel(unknown[0], source.label_col, list(names))
    return labels, list(names), False  # names as written (digits too, when one is a name)
