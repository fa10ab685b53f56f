"""SQL identifier handling shared by every stage.

User-supplied table and column names never reach SQL text raw: they are validated
and double-quoted here. Values always travel as bound parameters.

Opening DuckDB files is shared too: `connect` waits out another process's lock, and
`create_database` creates files in a storage format DuckDB 1.x clients can read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path

from marketpulse.errors import MarketpulseError, first_line

_HOW = (
    "use letters, digits and underscores, optionally qualified as schema.table, and "
    "double quotes around a part with other characters, e.g. 'main.\"Market Posts\"'"
)


def quote_ident(name: str) -> str:
    """Quote one identifier, doubling embedded quotes (works for any name)."""
    if not name or "\x00" in name:
        raise MarketpulseError(f"invalid SQL identifier {name!r}; pass a non-empty name")
    return '"' + name.replace('"', '""') + '"'


def _is_plain(part: str) -> bool:
    """A part that needs no quotes: a letter (of any script) or underscore, then letters,
    digits, underscores or $, as DuckDB reads an unquoted name."""
    return (
        bool(part)
        and (part[0] == "_" or part[0].isalpha())
        and all(c.isalnum() or c in "_$" for c in part)
    )


def spell_table(parts: list[str]) -> str:
    """A table's parts as a user passes them: `main.news`, `main."Market Posts"`."""
    return ".".join(p if _is_plain(p) else quote_ident(p) for p in parts)


def split_table(name: str) -> list[str]:
    """The parts of a table name as a user writes it: `main.news` -> [main, news],
    `main."Market Posts"` -> [main, Market Posts], `"a ""b"" c"` -> [a "b" c].

    1 to 3 parts (catalog.schema.table), each plain (see `_is_plain`) or in double
    quotes. Quotes around a plain part are refused, so that a name has one spelling:
    callers compare names as text (results.py refuses marketpulse's own table names
    that way), and `"runs"` must not pass for another name than runs.
    """
    parts, quoted, i = [], [], 0
    while True:
        quoted.append(name.startswith('"', i))
        if quoted[-1]:
            part, i = _quoted(name, i)
        else:
            end = name.find(".", i)
            end = len(name) if end < 0 else end
            part, i = name[i:end], end
            if not _is_plain(part):
                raise MarketpulseError(f"invalid table name {name!r}; {_HOW}")
        parts.append(part)
        if i == len(name):
            break
        if name[i] != ".":  # text right after a closing quote
            raise MarketpulseError(f"invalid table name {name!r}; {_HOW}")
        i += 1
    if len(parts) > 3:
        raise MarketpulseError(f"invalid table name {name!r}; {_HOW}")
    if any(q and _is_plain(p) for p, q in zip(parts, quoted, strict=True)):
        raise MarketpulseError(
            f"table name {name!r} quotes a name that needs no quotes; "
            f"write it as {spell_table(parts)!r}"
        )
    return parts


def _quoted(name: str, start: int) -> tuple[str, int]:
    """The double-quoted part of `name` that opens at `start`, and the index after it."""
    out, i = [], start + 1
    while True:
        close = name.find('"', i)
        if close < 0:
            raise MarketpulseError(
                f"invalid table name {name!r}: a quote is not closed; end a quoted part with "
                'a quote and write a quote inside it twice, e.g. \'"say ""hi"""\''
            )
        out.append(name[i:close])
        if not name.startswith('"', close + 1):
            break
        out.append('"')  # a doubled quote stands for one
        i = close + 2
    part = "".join(out)
    if not part or "\x00" in part:
        raise MarketpulseError(f"invalid table name {name!r}; {_HOW}")
    return part, close + 1


def quote_table(name: str) -> str:
    """Quote a table name that may be schema-qualified and may hold quoted parts (see
    `split_table`): `main.news` -> `"main"."news"`, `"Market Posts"` -> `"Market Posts"`."""
    return ".".join(quote_ident(p) for p in split_table(name))


def table_names(con, database: str | None = None) -> list[str]:
    """The tables and views of `database` (default: the current one) as a user passes them:
    `news` in the main schema, `raw.news` in another, `"Market Posts"` quoted; for "not
    found" messages."""
    rows = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() "
        "WHERE database_name = coalesce(?, current_database()) "
        "UNION ALL SELECT schema_name, view_name FROM duckdb_views() "
        "WHERE database_name = coalesce(?, current_database()) AND NOT internal "
        "ORDER BY schema_name <> 'main', schema_name, table_name",
        [database, database],
    ).fetchall()
    return [spell_table([name] if schema == "main" else [schema, name]) for schema, name in rows]


def ascii_fold(name: str) -> str:
    """A name as DuckDB compares identifiers: A-Z lower-cased, every other letter kept
    (`Überschrift` matches `ÜBERSCHRIFT` but not `überschrift`, `ß` never matches `SS`)."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Columns(dict):
    """{column: type} that finds a column in any letter case, as DuckDB does (it resolves
    identifiers case-insensitively, quoted or not, folding A-Z only: `ascii_fold`, and
    allows no two columns that differ in case only): `"id" in cols` and `cols["id"]` find a column named ID. Iterating
    gives the names as the table spells them."""

    def _actual(self, name):
        if isinstance(name, str) and not dict.__contains__(self, name):
            folded = ascii_fold(name)
            for actual in self:
                if ascii_fold(actual) == folded:
                    return actual
        return name

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, self._actual(name))

    def __getitem__(self, name):
        return dict.__getitem__(self, self._actual(name))

    def get(self, name, default=None):
        return dict.get(self, self._actual(name), default)


def table_columns(con, table: str, *, db=None, table_flag: str = "--table") -> Columns:
    """Return {column: type} of an existing table or view, or raise naming the fix.

    `db` (the file the table should be in) goes into the message when given;
    `table_flag` is the flag that names the table (`--check-table` for export).
    """
    try:
        rows = con.execute(f"DESCRIBE {quote_table(table)}").fetchall()
    except MarketpulseError:
        raise
    except Exception as exc:  # duckdb.CatalogException and friends
        listed = ", ".join(table_names(con)) or "none"
        in_db = f" in {db}" if db else ""
        raise MarketpulseError(
            f"table {table!r} not found{in_db} (tables: {listed}); "
            f"pass {table_flag} with an existing table"
        ) from exc
    return Columns((r[0], r[1]) for r in rows)


def require_columns(
    con,
    table: str,
    columns: Mapping[str, str],
    *,
    where: str | None = None,
    db=None,
    table_flag: str = "--table",
) -> dict[str, str]:
    """Check that each column exists; `columns` maps flag name -> column name.

    `where` names the relation in the message (default "table 'NAME'"); `db` and
    `table_flag` are passed to `table_columns`.
    """
    have = table_columns(con, table, db=db, table_flag=table_flag)
    where = where or f"table {table!r}"
    for flag, col in columns.items():
        if col not in have:
            # column flags take the plain name: `Brand Name`, not SQL's `"Brand Name"`
            bare = (
                col[1:-1].replace('""', '"') if len(col) > 1 and col[0] == col[-1] == '"' else None
            )
            hint = f" ({flag} takes the name without SQL's quotes: {bare})" if bare in have else ""
            raise MarketpulseError(
                f"column {col!r} not found in {where} (columns: {', '.join(have)}); "
                f"pass {flag} with one of them{hint}"
            )
    return have


# --- opening DuckDB files --------------------------------------------------------------
# DuckDB lets ONE process open a file read-write OR any number open it read-only; the
# two exclude each other through an OS lock on the file. Every stage and the `sql`
# command open files through `connect`, which waits (with backoff, up to a timeout)
# while another process holds a conflicting lock instead of failing at once.

# The storage format of the database files marketpulse creates. DuckDB 2.x writes its
# own format by default, which DuckDB 1.x clients (the 1.x CLI, BI tools that bundle a
# 1.x driver) refuse to open; 'v1.0.0' is read by every DuckDB from 1.0 on. A file
# that already exists keeps the format it has.
DEFAULT_STORAGE_VERSION = "v1.0.0"
_STORAGE_VERSION = re.compile(r"^(v\d+\.\d+\.\d+|latest)$")


def check_storage_version(version: str) -> str:
    if not _STORAGE_VERSION.match(version or ""):
        raise MarketpulseError(
            f"invalid storage version {version!r}; pass a DuckDB version such as "
            f"{DEFAULT_STORAGE_VERSION} or v1.4.0, or 'latest'"
        )
    return version


def create_database(
    path, storage_version: str = DEFAULT_STORAGE_VERSION, *, dry_run: bool = False
) -> None:
    """Create an empty DuckDB file in `storage_version`'s format, unless it exists.

    `dry_run` makes nothing but refuses what would stop the making (no folder, a storage
    version DuckDB does not know): an in-memory database checks the option the same way.
    """
    import duckdb

    path = Path(path)
    if path.exists():
        return
    if not path.parent.is_dir():
        raise MarketpulseError(
            f"cannot create {path}: folder {path.parent} does not exist; create it or pass "
            "another path"
        )
    version = check_storage_version(storage_version)
    con = duckdb.connect()
    try:
        con.execute(
            f"ATTACH ? AS new_db (STORAGE_VERSION '{version}')",
            [":memory:" if dry_run else str(path)],
        )
    except duckdb.Error as exc:
        raise MarketpulseError(
            f"cannot create {path} with storage version {version} "
            f"({first_line(exc)[:200]}); pass another version or path"
        ) from exc
    finally:
        con.close()


def is_lock_conflict(exc: BaseException) -> bool:
    """DuckDB's error for a file another process holds with a conflicting lock."""
    text = str(exc).lower()
    return "could not set lock" in text or "conflicting lock" in text


def connect(
    path,
    *,
    read_only: bool,
    timeout: float,
    on_wait=None,
    config=None,
    fix: str = "close the other connection or raise --lock-timeout",
):
    """`duckdb.connect`, retried with backoff while another process holds the file.

    `on_wait(seconds_waited, first_error_line)` is called when the wait begins and then
    every 30 s. Raises MarketpulseError ending in `fix` once `timeout` seconds have
    passed; other DuckDB errors (not a database file, ...) are raised as they are.
    """
    import duckdb

    return retry_on_lock(
        lambda: duckdb.connect(str(path), read_only=read_only, config=config or {}),
        path,
        read_only=read_only,
        timeout=timeout,
        on_wait=on_wait,
        fix=fix,
    )


def lock_detail(exc: Exception) -> str:
    """DuckDB's lock error in one line, without its trailing link to the docs."""
    return first_line(exc).split(" See also")[0].rstrip(". ")


def retry_on_lock(
    attempt,
    path,
    *,
    read_only: bool,
    timeout: float,
    on_wait=None,
    fix: str = "close the other connection or raise --lock-timeout",
):
    """`attempt()` (a connect, or an ATTACH of `path`), retried as `connect` describes."""
    import duckdb

    start = time.monotonic()
    delay, told = 0.02, None
    while True:
        try:
            return attempt()
        except duckdb.Error as exc:
            if not is_lock_conflict(exc):
                raise
            waited = time.monotonic() - start
            if waited >= timeout:
                who = "a writer" if read_only else "another process (a reader or writer)"
                raise MarketpulseError(
                    f"{path} stayed locked by {who} for {waited:.0f}s ({lock_detail(exc)}); {fix}"
                ) from exc
            if on_wait is not None and (told is None or waited - told >= 30):
                told = waited
                on_wait(waited, first_line(exc))
            time.sleep(min(delay, max(timeout - waited, 0.001)))
            delay = min(delay * 1.5, 0.5)
