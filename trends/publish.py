"""Where trends computes its tables and how they reach --db.

The run's connection reads --db read-only; `write_to` attaches a scratch DuckDB file
to it where every CREATE TABLE lands while every name still reads from --db. `publish`
then copies the tables it made into --db in one transaction, each commented with its
source, and drops those of the set it did not make, so a reader sees the old set or the
new one, never a mix; then it writes the --csv/--parquet files. `after_commit` turns a
failed file write after that commit (those files, or the --plot picture) into one line
saying the tables were written.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from marketpulse.errors import MarketpulseError, first_line
from marketpulse.sql import connect, quote_ident
from marketpulse.trends.notes import waiting

if TYPE_CHECKING:
    from marketpulse.trends.stage import TrendsConfig

WORK = "marketpulse_trends_work"  # the name the scratch database is attached under


def write_to(con, work: Path) -> None:
    """Make the scratch file `work` where this connection's CREATE TABLEs land, while
    every name still reads from --db: the scratch file first on the search path, then
    each schema of --db (a source `sales.posts` resolves as before)."""
    db = con.execute("SELECT current_database()").fetchone()[0]
    schemas = [
        r[0]
        for r in con.execute(
            "SELECT schema_name FROM duckdb_schemas() WHERE database_name = ? "
            "ORDER BY schema_name = 'main' DESC, schema_name",
            [db],
        ).fetchall()
    ]
    con.execute(f"ATTACH ? AS {quote_ident(WORK)} (READ_WRITE)", [str(work)])
    con.execute(f"USE {quote_ident(WORK)}")
    path = ",".join(
        [f"{quote_ident(WORK)}.main", *(f"{quote_ident(db)}.{quote_ident(s)}" for s in schemas)]
    )
    con.execute(f"SET search_path = '{path.replace(chr(39), chr(39) * 2)}'")


def publish(cfg: TrendsConfig, work: Path, names: list[str], latest: str | None, note: str):
    """Copy the tables of `names` made in `work` into --db, each commented with `note` (its
    source: `checks.check_owners`), and drop those it did not make (an earlier run's
    forecasts after --horizon 0, say), with the latest-scores view, in one transaction: a
    reader sees the old set or the new one, never a mix. Then the --csv/--parquet files.
    --db is held read-write for the copy only."""
    con = connect(cfg.db, read_only=False, timeout=cfg.lock_timeout, on_wait=waiting(cfg))
    try:
        con.execute(f"ATTACH ? AS {quote_ident(WORK)} (READ_ONLY)", [str(work)])
        made = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [WORK]
            ).fetchall()
        }
        con.execute("BEGIN TRANSACTION")
        if latest is not None:
            con.execute(latest)
        for name in names:
            target = f"main.{quote_ident(name)}"
            if name in made:
                source = f"{quote_ident(WORK)}.main.{quote_ident(name)}"
                con.execute(f"CREATE OR REPLACE TABLE {target} AS FROM {source}")
                con.execute(f"COMMENT ON TABLE {target} IS '{note.replace(chr(39), chr(39) * 2)}'")
            else:
                con.execute(f"DROP TABLE IF EXISTS {target}")
        con.execute("COMMIT")
        con.execute(f"DETACH {quote_ident(WORK)}")
        with after_commit(cfg, names[0], "--csv/--parquet"):
            return _export(con, names[0], cfg)
    finally:
        con.close()  # without COMMIT (an error), DuckDB rolls the whole copy back


@contextmanager
def after_commit(cfg: TrendsConfig, table: str, flag: str):
    """A file write after the tables were committed (the --csv/--parquet files, the
    --plot picture): any failure is one line saying the tables were written, and that
    only this file failed."""
    try:
        yield
    except OSError as exc:  # pyarrow's IO errors are OSErrors too
        raise MarketpulseError(
            f"the trend tables were written to {cfg.db} ({table}), but writing the {flag} file "
            f"failed ({first_line(exc)[:200]}); pass another path, or read the table with "
            "`marketpulse sql`"
        ) from exc
    except Exception as exc:  # matplotlib's, pyarrow's or a re-read's: not a traceback
        detail = first_line(exc)
        if not isinstance(exc, MarketpulseError):  # its message names the cause and fix
            detail = f"{type(exc).__name__}: {detail[:200]}"
        raise MarketpulseError(
            f"the trend tables were written to {cfg.db} ({table}); only the {flag} file "
            f"failed ({detail}); rerun trends to write it once that is fixed, or read the "
            "table with `marketpulse sql`"
        ) from exc


def _export(con, table: str, cfg: TrendsConfig) -> dict[str, Path]:
    outputs: dict[str, Path] = {}
    if not (cfg.csv or cfg.parquet):
        return outputs
    arrow = con.sql(f"SELECT * FROM {quote_ident(table)}").to_arrow_table()
    if cfg.csv:
        import pyarrow.csv as pacsv

        pacsv.write_csv(arrow, str(cfg.csv))
        outputs["csv"] = Path(cfg.csv)
    if cfg.parquet:
        import pyarrow.parquet as pq

        pq.write_table(arrow, str(cfg.parquet))
        outputs["parquet"] = Path(cfg.parquet)
    return outputs
