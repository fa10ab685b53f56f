"""Read labeled text from DuckDB: a table, a SQL query, or a CSV/Parquet file.

`marketpulse.sources` opens the source; this loader reads it and names the labels, and
knows nothing about models or splits. It returns every usable row as a (text, label
name) pair in a canonical order (sorted), so the same data gives the same fingerprint
and the same split however DuckDB happened to scan it. Rows with
NULL/empty text or a NULL/empty/NaN label are skipped and counted, never dropped silently.

`drop_duplicates` (training calls it; `evaluate` scores every row as read) keeps each
text once, so no text can land in both the training and the test split. Texts are the
same when they are equal after `str.strip()`, the whitespace `marketpulse.text.is_blank`
judges by; case and inner whitespace are kept, as they can carry meaning. A text whose
rows all agree is kept once (its other rows count as `duplicate`). A text whose rows
disagree keeps the label that more than half of them hold, else it is dropped (its
dropped rows count as `conflicting_label`).

Labels may be strings or integers. Integer labels, and digits stored as text, are named
by `label_names` (`--label-names bearish,bullish,neutral`: 0 -> bearish ...) or else by
their digits; digits stored as text that are among the names are those names, as text.
A negative value has no position, so no `label_names` names it (`UnnamedValue`). Float
labels that are whole numbers (pandas writes an integer column with gaps as DOUBLE with
NaN) are those integers; any other number is an error. BOOLEAN labels are the integers 0
(false) and 1 (true), so `--label-names neg,pos` names them.
Given string labels, `label_names` is the allowed set (and fixes the label order).

`require_trainable` refuses labels that the runtime could not write: each label gets a
probability column (`results_schema.probability_column`), and two labels that differ only
in case or in characters outside a-z, 0-9 and _ (punctuation, non-Latin letters) would
share one. It refuses labels that all start with `LABEL_` too: a checkpoint reads them as
transformers' placeholder names (`checkpoint.are_placeholder_labels`), so the run could not
be saved.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from decimal import Decimal

from marketpulse.checkpoint import are_placeholder_labels
from marketpulse.errors import MarketpulseError
from marketpulse.results_schema import probability_column
from marketpulse.sources import Flags, open_source
from marketpulse.sql import quote_ident, spell_table
from marketpulse.text import is_blank


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


@functools.cache
def _keywords() -> frozenset[str]:
    """DuckDB's keywords that may not stand unquoted as a column name everywhere (`order`,
    `left`, `time`): every keyword but its unreserved ones, lower-cased."""
    import duckdb

    with duckdb.connect(":memory:") as con:
        rows = con.execute(
            "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category <> 'unreserved'"
        ).fetchall()
    return frozenset(name.lower() for (name,) in rows)


def sql_name(name: str) -> str:
    """A column name as a suggested query writes it: bare where DuckDB reads it bare
    (`label`, `Tag`), else double-quoted, a quote inside doubled (`"Sentiment Label"`,
    `"order"`)."""
    spelled = spell_table([name])  # bare when plain, else quoted
    return quote_ident(name) if name.lower() in _keywords() else spelled


def query_flag(sql: str) -> str:
    """`--query SQL` as a shell passes it on as one argument, exactly: in double quotes
    (`--query "SELECT ... WHERE tag <> 'rare'"`), in single quotes when the SQL holds a
    double quote and no single one, else in double quotes with \\ before " \\ $ and `."""
    if not re.search(r'["\\$`]', sql):
        return f'--query "{sql}"'
    if "'" not in sql:
        return f"--query '{sql}'"
    return '--query "' + re.sub(r'(["\\$`])', r"\\\1", sql) + '"'


def count_phrase(counts: dict[str, int]) -> str:
    """`{"null_text": 2, "empty_text": 0, "null_label": 1}` -> "2 null text, 1 null label"
    for a log line; "none" when every count is 0."""
    parts = [f"{n:,} {name.replace('_', ' ')}" for name, n in counts.items() if n]
    return ", ".join(parts) or "none"


def _count(n: int, noun: str) -> str:
    """`_count(1, "row")` -> "1 row", `_count(2, "row")` -> "2 rows"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class DataSource:
    """Where labeled rows come from: exactly one of `table`, `query`, `input`."""

    db: str | None = None
    table: str | None = None
    query: str | None = None
    input: str | None = None
    text_col: str = "text"
    label_col: str = "label"
    label_names: tuple[str, ...] | None = None

    def describe(self) -> str:
        if self.table:
            return f"table {self.table} in {self.db}"
        if self.query:
            where = f" on {self.db}" if self.db else ""
            return f"query{where}: {self.query}"
        return f"file {self.input}"


@dataclass(frozen=True)
class Duplicates:
    """What `drop_duplicates` did, counted in texts; the `_rows` fields count the rows
    skipped, as `LabeledRows.skipped` does (`duplicate`, `conflicting_label`)."""

    repeated: int = 0  # texts on several rows that all agree on the label: kept once
    conflicting: int = 0  # texts whose rows disagree on the label
    majority_kept: int = 0  # of those, kept with the label more than half their rows hold
    repeated_rows: int = 0  # rows skipped as copies of a repeated text
    conflicting_rows: int = 0  # rows skipped from conflicting texts (all, when dropped)

    @property
    def dropped(self) -> int:
        """Conflicting texts with no majority label: dropped altogether."""
        return self.conflicting - self.majority_kept

    def record(self) -> dict[str, int]:
        """metrics.json's `rows.duplicate_texts`."""
        return {
            "repeated": self.repeated,
            "conflicting": self.conflicting,
            "majority_kept": self.majority_kept,
            "dropped": self.dropped,
        }

    def log_line(self) -> str | None:
        """The log line, counting texts and the rows skipped apart, e.g. '12 duplicate texts
        kept once (15 rows skipped); 3 texts had conflicting labels (2 kept with their
        majority label, 1 dropped; 7 rows skipped)'; None when no text was repeated."""
        if not (self.repeated or self.conflicting):
            return None
        parts = []
        if self.repeated:
            parts.append(
                f"{_count(self.repeated, 'duplicate text')} kept once "
                f"({_count(self.repeated_rows, 'row')} skipped)"
            )
        if not self.conflicting:
            parts.append("no text had conflicting labels")
        else:
            kept, dropped = self.majority_kept, self.dropped
            if not dropped:
                fate = f"kept with {'its' if kept == 1 else 'their'} majority label"
            elif not kept:
                fate = "dropped: no majority label"
            else:
                its = "its" if kept == 1 else "their"
                fate = f"{kept:,} kept with {its} majority label, {dropped:,} dropped"
            parts.append(
                f"{_count(self.conflicting, 'text')} had conflicting labels "
                f"({fate}; {_count(self.conflicting_rows, 'row')} skipped)"
            )
        return "; ".join(parts)


@dataclass
class LabeledRows:
    """Usable rows plus an account of what was read and skipped."""

    texts: list[str]
    labels: list[str]
    label_names: list[str]
    rows_read: int
    skipped: dict[str, int] = field(default_factory=dict)
    # each present label's value as a SQL literal (`'rare'`, `3`), for advice on filtering
    literals: dict[str, str] = field(default_factory=dict)
    integer_labels: bool = False  # the column held integers (or whole-number floats)
    # the integers were named by their position in label_names (0 -> the first name), not
    # matched to the names as text: evaluate records that, and only that, as positional
    named_by_position: bool = False
    # set by drop_duplicates: what it did, and the fingerprint of the rows before it
    duplicates: Duplicates | None = None
    fingerprint_as_read: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(name, 0) for name in self.label_names}

    def fingerprint(self) -> str:
        """sha256 of the usable (text, label) rows as read, in canonical order.

        Rows that `drop_duplicates` removed are still hashed: the fingerprint names the
        input data, so the same table gives the same fingerprint with or without them."""
        if self.fingerprint_as_read is not None:
            return self.fingerprint_as_read
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels, strict=True):
            digest.update(json.dumps([text, label], ensure_ascii=False).encode())
            digest.update(b"\n")
        return "sha256:" + digest.hexdigest()


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


def _is_nan(value) -> bool:
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
        name = sql_name(column) if column else "label"  # "": _literal, _is_integer
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


def _is_integer(value) -> bool:
    """An integer label, or digits stored as text: both are named by position."""
    return _as_int(value, "") is not None or (isinstance(value, str) and _is_digits(value.strip()))


def _literal(value) -> str:
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


def _name_labels(raw: list, source: DataSource) -> tuple[list[str], list[str], bool]:
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
        return _name_labels([int(y) for y in labels], source)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise UnknownLabel(unknown[0], source.label_col, list(names))
    return labels, list(names), False  # names as written (digits too, when one is a name)


def load_labeled(source: DataSource, flags: Flags | None = None) -> LabeledRows:
    """Read (text, label) rows, skipping and counting unusable ones.

    `flags` name the source in errors (default `--db`/`--table`/`--query`/`--input`;
    evaluate's `--domain`)."""
    text, label = quote_ident(source.text_col), quote_ident(source.label_col)
    with open_source(
        db=source.db,
        table=source.table,
        query=source.query,
        input=source.input,
        require={"--text-col": source.text_col, "--label-col": source.label_col},
        flags=flags or Flags(),
        text_flag="--text-col",
    ) as relation:
        rows = relation.con.execute(
            f"SELECT CAST({text} AS VARCHAR), {label} FROM {relation.name}"
        ).fetchall()

    skipped = {"null_text": 0, "empty_text": 0, "null_label": 0}
    texts, raw = [], []
    for t, y in rows:
        if t is None:
            skipped["null_text"] += 1
        elif is_blank(t):
            skipped["empty_text"] += 1
        elif y is None or _is_nan(y) or (isinstance(y, str) and not y.strip()):
            skipped["null_label"] += 1
        else:
            texts.append(t)
            raw.append(y)
    labels, order, by_position = _name_labels(raw, source)
    pairs = sorted(zip(texts, labels, strict=True))
    return LabeledRows(
        texts=[p[0] for p in pairs],
        labels=[p[1] for p in pairs],
        label_names=order,
        rows_read=len(rows),
        skipped=skipped,
        literals={name: _literal(y) for y, name in zip(raw, labels, strict=True)},
        integer_labels=bool(raw) and all(_is_integer(y) for y in raw),
        named_by_position=by_position,
    )


def duplicate_key(text: str) -> str:
    """What two texts must share to be the same text: equal after `str.strip()`, the
    whitespace `marketpulse.text.is_blank` judges by. Case is not folded."""
    return text.strip()


def drop_duplicates(rows: LabeledRows) -> LabeledRows:
    """Keep each text (`duplicate_key`) once, so no text is split across train and test.

    A text whose rows all carry one label keeps one row; the others are counted as
    `duplicate`. A text whose rows disagree keeps one row with the label more than half
    of its rows hold (the rest counted as `conflicting_label`), or, with no such label,
    none (all counted as `conflicting_label`). The row kept is the first in canonical
    order, so the result and its order are as reproducible as the rows read."""
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(rows.texts):
        groups.setdefault(duplicate_key(text), []).append(i)
    keep: list[int] = []
    skipped = {"duplicate": 0, "conflicting_label": 0}
    repeated = conflicting = majority_kept = 0
    for members in groups.values():
        votes = Counter(rows.labels[i] for i in members)
        if len(votes) == 1:
            keep.append(members[0])
            if len(members) > 1:
                repeated += 1
                skipped["duplicate"] += len(members) - 1
            continue
        conflicting += 1
        label, n = votes.most_common(1)[0]
        if 2 * n > len(members):  # a strict majority; a tie or a plurality is not one
            majority_kept += 1
            keep.append(next(i for i in members if rows.labels[i] == label))
            skipped["conflicting_label"] += len(members) - 1
        else:
            skipped["conflicting_label"] += len(members)
    keep.sort()  # the rows' canonical order
    return replace(
        rows,
        texts=[rows.texts[i] for i in keep],
        labels=[rows.labels[i] for i in keep],
        skipped={**rows.skipped, **skipped},
        duplicates=Duplicates(
            repeated,
            conflicting,
            majority_kept,
            repeated_rows=skipped["duplicate"],
            conflicting_rows=skipped["conflicting_label"],
        ),
        fingerprint_as_read=rows.fingerprint(),
    )


def _and(items: list[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _rename_query(names: list[str], source: DataSource, others: str = "") -> str:
    """`--query` naming each of `names` class_0, class_1, ... in a CASE, for the user to put
    the real names in; `others` is what the other labels become (`ELSE`), if any."""
    label = sql_name(source.label_col)
    whens = " ".join(f"WHEN {_literal(n)} THEN 'class_{i}'" for i, n in enumerate(names))
    other = f" ELSE {others}" if others else ""
    case = f"CASE {label} {whens}{other} END"
    return query_flag(f"SELECT {sql_name(source.text_col)}, {case} AS {label} FROM ...")


def require_named_labels(rows: LabeledRows, source: DataSource) -> None:
    """Labels a checkpoint can keep: not all `LABEL_...`, which `load_checkpoint` reads as
    transformers' placeholder names, refusing the model only once it has been trained."""
    names = rows.label_names
    if not are_placeholder_labels(names):
        return
    if rows.integer_labels and source.label_names:  # the names came from --label-names
        example = ",".join(f"class_{i}" for i in range(len(names)))
        fix = f"pass --label-names with the classes' names, e.g. --label-names {example}"
    else:
        query = _rename_query(names, source)
        fix = f"name the classes with --query, e.g. {query}, with your names for them"
    raise MarketpulseError(
        f"labels in column {source.label_col!r} all start with LABEL_ "
        f"({_and([repr(n) for n in names])}), which a checkpoint reads as transformers' "
        f"placeholder names (no names), so the trained model could not be saved; {fix}"
    )


def require_distinct_columns(rows: LabeledRows, source: DataSource) -> None:
    """Every label its own probability column, as `marketpulse score` requires.

    The runtime names a label's column `results_schema.probability_column(label)` and
    refuses a model whose labels share one; training such a model would waste the run."""
    columns: dict[str, list[str]] = {}
    for name in rows.label_names:
        columns.setdefault(probability_column(name), []).append(name)
    shared = {col: names for col, names in columns.items() if len(names) > 1}
    if not shared:
        return
    which = "; ".join(
        f"{_and([repr(n) for n in names])} become {col}" for col, names in shared.items()
    )
    column = source.label_col
    # labels that differ in more than case (`看涨`, `看跌`; `neg!`, `neg?`) stay apart
    # under lower(): only new names for them can keep their columns apart
    apart = [n for names in shared.values() if len({n.lower() for n in names}) > 1 for n in names]
    by_label_names = rows.integer_labels and source.label_names  # names from --label-names
    if apart:
        ascii_only = "column names keep only a-z, 0-9 and _, so "
        if by_label_names:
            example = ",".join(f"class_{i}" for i in range(len(rows.label_names)))
            fix = f"{ascii_only}pass --label-names with ASCII names, e.g. --label-names {example}"
        else:
            label = sql_name(column)
            others = ""  # the rest as they are, or lower-cased when some differ only in case
            if len(apart) < len(rows.label_names):
                case_only = any(len({n.lower() for n in ns}) == 1 for ns in shared.values())
                others = f"lower({label})" if case_only else label
            query = _rename_query(apart, source, others)
            fix = f"{ascii_only}give them ASCII names with --query, e.g. {query}, or rename them"
    elif by_label_names:
        fix = "pass --label-names whose names differ in a letter or digit, not only in case"
    else:
        text, label = sql_name(source.text_col), sql_name(column)
        query = query_flag(f"SELECT {text}, lower({label}) AS {label} FROM ...")
        fix = f"map them to one spelling with --query, e.g. {query}, or rename them"
    raise MarketpulseError(
        f"labels in column {column!r} collide once sanitized into probability column names "
        f"({which}), which `marketpulse score` refuses; {fix}"
    )


def require_trainable(rows: LabeledRows, source: DataSource, min_per_class: int) -> None:
    """Labels the runtime can write (`require_distinct_columns`); at least two classes,
    each with enough rows to land in every split; not all `LABEL_...`
    (`require_named_labels`)."""
    require_named_labels(rows, source)
    require_distinct_columns(rows, source)
    skipped = sum(rows.skipped.values())
    # duplicates are skipped too (drop_duplicates), and are not "unusable": name each kind
    note = f" after skipping {skipped} rows ({count_phrase(rows.skipped)})" if skipped else ""
    present = {name: n for name, n in rows.counts.items() if n > 0}
    if not present and not rows.skipped.get("conflicting_label"):
        raise MarketpulseError(
            f"no usable rows in {source.describe()} (skipped {count_phrase(rows.skipped)}); "
            "pass a source with non-empty text and labels"
        )
    if len(present) < 2:
        found = ", ".join(f"{k!r}" for k in present) or "none"
        # texts repeated with conflicting labels were dropped: their labels are the fix
        fix = (
            "give each repeated text one label, or pass a different --label-col"
            if rows.skipped.get("conflicting_label")
            else "pass a different --label-col"
        )
        raise MarketpulseError(
            f"column {source.label_col!r} has {len(present)} distinct label(s) (found: {found})"
            f"{note}; training needs at least two classes, {fix}"
        )
    column = source.label_col
    for name, n in rows.counts.items():
        if n >= min_per_class:
            continue
        if n and name in rows.literals:  # filtering the rows out works for any label
            where = f"{sql_name(column)} <> {rows.literals[name]}"
            fix = "add rows or leave that label out with --query, e.g. " + query_flag(
                f"SELECT ... WHERE {where}"
            )
        elif not rows.named_by_position:  # a name only --label-names gave: leave it out
            fix = "add rows with that label or leave it out of --label-names"
        else:  # --label-names names integers by position: a name cannot just be left out
            value = source.label_names.index(name) if source.label_names else name
            fix = (
                f"add rows with {sql_name(column)} = {value}, or pass --label-names with one "
                f"name per value {column!r} holds"
            )
        raise MarketpulseError(
            f"label {name!r} has only {n} usable rows{note}; each class needs at least "
            f"{min_per_class} to appear in train, validation and test; {fix}"
        )
