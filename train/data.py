"""Read labeled text from DuckDB: a table, a SQL query, or a CSV/Parquet file.

`marketpulse.sources` opens the source; this loader reads it and names the labels, and
knows nothing about models or splits. It returns every usable row as a (text, label
name) pair in a canonical order (sorted), so the same data gives the same fingerprint
and the same split however DuckDB happened to scan it. Rows with
NULL/empty text or a NULL/empty/NaN label are skipped and counted, never dropped silently.

How label values become names is `labels.py`'s; keeping each text once is `dedup.py`'s
(`drop_duplicates`), and refusing labels a model could not be trained on is
`label_checks.py`'s (`require_trainable`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from marketpulse.sources import Flags, open_source
from marketpulse.sql import quote_ident
from marketpulse.text import is_blank
from marketpulse.train.dedup import Duplicates
from marketpulse.train.labels import is_integer, is_nan, literal, name_labels


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
        elif y is None or is_nan(y) or (isinstance(y, str) and not y.strip()):
            skipped["null_label"] += 1
        else:
            texts.append(t)
            raw.append(y)
    labels, order, by_position = name_labels(raw, source)
    pairs = sorted(zip(texts, labels, strict=True))
    return LabeledRows(
        texts=[p[0] for p in pairs],
        labels=[p[1] for p in pairs],
        label_names=order,
        rows_read=len(rows),
        skipped=skipped,
        literals={name: literal(y) for y, name in zip(raw, labels, strict=True)},
        integer_labels=bool(raw) and all(is_integer(y) for y in raw),
        named_by_position=by_position,
    )
