"""How error messages spell the fixes they suggest, so that the user can paste them.

`sql_name` writes a column name as a suggested query needs it, `query_flag` a `--query SQL`
as a shell passes it on as one argument, and `count_phrase` counts (rows skipped, split
sizes) as words for a log line. Loading, the label checks, training and evaluate all use
them; they read nothing but DuckDB's list of keywords.
"""

from __future__ import annotations

import functools
import re

from marketpulse.sql import quote_ident, spell_table


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
