"""What a user test (ut18) found in trends' output files and `marketpulse sql`:

1. `--plot out.txt` failed in matplotlib, as a traceback, after the trend tables were
   replaced and the --csv/--parquet files written; now refused before anything is written,
   and any other plotting failure after the commit is one line saying the tables were.
2. `--plot plotnoext` wrote plotnoext.png but reported `plotnoext`.
3. `--positive positive,Positive --negative negative,Negative` (two models spelling the
   labels two ways) was refused as "no one model has both a positive and a negative label".
4. `sql "CREATE VIEW ..."` was refused as read-only with no way to run it: `sql --write`.
   Review: --write committed each statement as it ended (DROP VIEW; CREATE VIEW with a
   typo left no view; BEGIN; ... exited 0 and wrote nothing): now one transaction, all or
   nothing, and SQL with its own BEGIN/COMMIT is refused; a permission failure named --db.
5. `sql --csv` wrote BLOBs as Python's repr and non-ASCII in structs as \\u escapes.

Every test runs on a real DuckDB file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime

import duckdb
import pytest
from click.testing import CliRunner
from trends_fixtures import COUNTS, build_db, insert_scores, register_model, trends_config

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.runtime import results


@pytest.fixture
def db(tmp_path):
    return build_db(tmp_path / "market.duckdb")


def _trends(db, *extra):
    args = ["trends", "--db", str(db), "--source", "posts", "--id-col", "id"]
    args += ["--time-col", "posted_at", "--by", "brand", "--grain", "day", "--window", "3"]
    return CliRunner().invoke(main, [*args, "--horizon", "0", *extra])


def _tables(db) -> set[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


# --- 1. --plot formats -------------------------------------------------------------------


def test_a_plot_format_matplotlib_cannot_write_is_refused_before_anything_is_written(db, tmp_path):
    csv, parquet = tmp_path / "half.csv", tmp_path / "half.parquet"
    result = _trends(
        db, "--csv", str(csv), "--parquet", str(parquet), "--plot", str(tmp_path / "out.txt")
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a one-line error, not a traceback
    assert (
        f"--plot {tmp_path / 'out.txt'}: matplotlib cannot draw a .txt file; pass a path "
        "ending in .png, .pdf, .svg, .svgz, .ps, .eps, .jpg, .jpeg, .tif, .tiff, .webp, .raw, "
        f".rgba (e.g. {tmp_path / 'out.png'})"
    ) in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not csv.exists() and not parquet.exists()
    assert "trend_posts_day" not in _tables(db)


def test_the_plot_formats_are_those_matplotlib_saves():
    """A static list (check_config does not import matplotlib): every one of them is
    matplotlib's, and what it leaves out is left out on purpose."""
    from matplotlib.figure import Figure

    from marketpulse.trends.checks import PLOT_FORMATS

    saves = set(Figure().canvas.get_supported_filetypes())
    assert set(PLOT_FORMATS) <= saves
    # pgf runs LaTeX; gif and avif: matplotlib 3.10+ only
    assert saves - set(PLOT_FORMATS) <= {"pgf", "gif", "avif"}


@pytest.mark.parametrize(("name", "magic"), [("out.PDF", b"%PDF"), ("out.svg", b"<?xml")])
def test_a_plot_is_drawn_in_the_format_its_extension_names(db, tmp_path, name, magic):
    result = _trends(db, "--plot", str(tmp_path / name))
    assert result.exit_code == 0, result.output
    assert (tmp_path / name).read_bytes().startswith(magic)
    assert f"wrote plot: {tmp_path / name}" in result.output


def test_a_plot_failing_after_the_commit_is_one_line_saying_the_tables_were_written(
    db, tmp_path, monkeypatch
):
    """What matplotlib raises after the tables were committed (pgf without LaTeX, say)."""
    from matplotlib.figure import Figure

    def fail(self, *args, **kwargs):
        raise RuntimeError("'xelatex' not found; install it\nsecond line")

    monkeypatch.setattr(Figure, "savefig", fail)
    csv = tmp_path / "t.csv"
    result = _trends(db, "--csv", str(csv), "--plot", str(tmp_path / "t.png"))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert (
        f"the trend tables were written to {db} (trend_posts_day); only the --plot file "
        "failed (RuntimeError: 'xelatex' not found; install it); rerun trends to write it "
        "once that is fixed, or read the table with `marketpulse sql`"
    ) in result.output
    assert "second line" not in result.output
    assert "trend_posts_day" in _tables(db) and csv.read_text().startswith('"brand"')


# --- 2. --plot without an extension ------------------------------------------------------


def test_a_plot_without_an_extension_is_a_png_reported_by_its_real_name(db, tmp_path):
    result = _trends(db, "--plot", str(tmp_path / "plotnoext"))
    assert result.exit_code == 0, result.output
    png = tmp_path / "plotnoext.png"
    assert png.read_bytes().startswith(b"\x89PNG") and not (tmp_path / "plotnoext").exists()
    assert f"wrote plot: {png}\n" in result.output
    as_json = _trends(db, "--plot", str(tmp_path / "plotnoext"), "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["outputs"]["plot"] == str(png)


def test_a_plot_without_an_extension_whose_png_is_a_folder_is_refused_first(db, tmp_path):
    (tmp_path / "p.png").mkdir()
    result = _trends(db, "--plot", str(tmp_path / "p"))
    assert result.exit_code == 1
    assert f"--plot {tmp_path / 'p.png'} is a folder; pass a file path" in result.output
    assert "trend_posts_day" not in _tables(db)


# --- 3. two spellings of the index labels ------------------------------------------------

V2 = ["Negative", "neutral", "Positive"]


def _respell(db, brand: str | None = "A") -> None:
    """Model v2 (Negative/neutral/Positive) rescored `brand`'s rows (every row: None)."""
    where = "" if brand is None else f"WHERE brand = '{brand}'"
    with duckdb.connect(str(db)) as con:
        results.prepare(con, "scores", "INTEGER", V2)
        register_model(con, "v2", datetime(2024, 3, 1), labels=V2)
        rows = con.execute(
            "SELECT id, CASE WHEN text LIKE 'positive%' THEN 'Positive' WHEN text LIKE "
            f"'negative%' THEN 'Negative' ELSE 'neutral' END FROM posts {where}"
        ).fetchall()
        insert_scores(con, "v2", rows, labels=V2)


def test_both_spellings_on_each_side_are_refused_for_what_is_wrong(db):
    from marketpulse.trends import run

    _respell(db)
    with pytest.raises(MarketpulseError) as err:
        run(
            trends_config(db, horizon=0, positive="positive,Positive", negative="negative,Negative")
        )
    message = str(err.value)
    assert "no one model has both" not in message  # each of them has both
    assert message == (
        "--positive 'positive,Positive' and --negative 'negative,Negative' spell a label two "
        "ways, as two models do ('positive' and 'Positive' would share trend column "
        "n_positive; 'negative' and 'Negative' would share trend column n_negative), and "
        "trends takes both sides from one model's labels (v2 (Negative, neutral, Positive); "
        "v1 (negative, neutral, positive)); score the whole table with one model (the newest, "
        "v2, without --limit or --where), then pass --positive/--negative with that model's "
        "labels only (or leave them out: the defaults pick its 'Positive' and 'Negative')"
    )
    assert "trend_posts_day" not in _tables(db)


def test_the_fix_the_two_spellings_message_names_works(db):
    """Rescoring every row with v2: the defaults and v2's labels both run."""
    from marketpulse.trends import run

    _respell(db, brand=None)
    result = run(trends_config(db, horizon=0))
    assert (result.positive, result.negative) == ("Positive", "Negative")
    again = run(trends_config(db, horizon=0, positive="Positive", negative="Negative"))
    assert again.n_rows == result.n_rows > 0


def test_two_flags_each_of_another_model_name_the_flags(db):
    from marketpulse.trends import run

    _respell(db)
    with pytest.raises(MarketpulseError, match="no one model has both the --positive and the "):
        run(trends_config(db, horizon=0, positive="positive", negative="Negative"))


# --- 4. sql --write ----------------------------------------------------------------------


def _sql(db, *args):
    return CliRunner().invoke(main, ["sql", *args, "--db", str(db)])


def test_a_write_refused_as_read_only_names_write_and_write_runs_it(db):
    view = (
        "CREATE VIEW posts_v AS SELECT * REPLACE (CAST(posted_at AS DATE) AS posted_at) FROM posts"
    )
    refused = _sql(db, view)
    assert refused.exit_code == 1
    assert (
        "the database is opened read-only, so only queries that read work; pass --write to run "
        "it on the file opened read-write"
    ) in refused.output
    done = _sql(db, view, "--write")
    assert done.exit_code == 0, done.output
    read = _sql(db, "SELECT count(*) AS n FROM posts_v", "--csv")
    assert read.exit_code == 0, read.output
    assert read.output.splitlines() == ["n", str(sum(sum(c) for c in COUNTS.values()))]


def _view(db, name):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(f"SELECT * FROM {name}").fetchall()


def _tables(db):
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    return {r[0] for r in rows}


_UNCHANGED = "; nothing was changed (--write commits all the statements or none); "


def test_write_is_all_or_nothing_so_a_failed_replace_keeps_the_old_view(db):
    """Each statement used to commit as it ended: DROP VIEW; CREATE VIEW (typo) left none."""
    assert _sql(db, "CREATE VIEW v AS SELECT 1 AS x", "--write").exit_code == 0
    result = _sql(db, "DROP VIEW v; CREATE VIEW v AS SELECT nope FROM posts", "--write")
    assert result.exit_code == 1
    assert result.output.startswith("Error: statement 2 of 2 failed (Binder Error: ")
    assert result.output.rstrip().endswith(_UNCHANGED + "check the SQL")
    assert _view(db, "v") == [(1,)]  # the DROP was rolled back with the failed CREATE
    before = _tables(db)
    result = _sql(
        db, "CREATE TABLE a (x INT); INSERT INTO a VALUES (1); SELECT * FROM nope", "--write"
    )
    assert result.exit_code == 1 and _UNCHANGED in result.output
    assert "committed" not in result.output
    assert _tables(db) == before


def test_write_commits_all_the_statements_together(db):
    sql = (
        "CREATE TABLE a AS SELECT 1 AS x; INSERT INTO a VALUES (2); "
        "CREATE VIEW s AS SELECT sum(x) AS total FROM a; SELECT total FROM s"
    )
    result = _sql(db, sql, "--write", "--csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["total", "3"]
    assert _view(db, "s") == [(3,)]


@pytest.mark.parametrize(
    "sql, which",
    [
        ("BEGIN; CREATE VIEW w AS SELECT 1 AS x;", "statement 1 of 2"),
        ("CREATE VIEW w AS SELECT 1 AS x; COMMIT", "statement 2 of 2"),
        ("CREATE VIEW w AS SELECT 1 AS x; ROLLBACK", "statement 2 of 2"),
    ],
)
def test_write_refuses_sql_with_its_own_transaction_before_anything_runs(db, sql, which):
    """BEGIN; CREATE VIEW ... exited 0 and close() rolled it back: success, nothing written."""
    result = _sql(db, sql, "--write")
    assert result.exit_code == 1
    assert result.output == (
        "Error: --write runs all the statements in one transaction; leave out BEGIN, "
        f"COMMIT and ROLLBACK ({which} is one)\n"
    )
    assert "w" not in _tables(db)


def test_a_read_only_query_may_still_hold_its_own_transaction(db):
    result = _sql(db, "BEGIN; SELECT count(*) AS n FROM posts; COMMIT", "--csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["n", str(sum(sum(c) for c in COUNTS.values()))]


def test_write_says_the_file_and_its_folder_must_be_writable(db, monkeypatch):
    """A --write open refused by the system said "pass --db with a DuckDB file"."""
    from marketpulse import query

    for why in ("Permission denied", "Read-only file system"):
        error = f'IO Error: Cannot open file "{db}": {why}'

        def refused(*args, error=error, **kwargs):
            raise duckdb.IOException(error)

        monkeypatch.setattr(query, "connect", refused)
        result = _sql(db, "CREATE VIEW v AS SELECT 1 AS x", "--write")
        assert result.exit_code == 1
        assert result.output == (
            f"Error: cannot open {db} read-write ({error}); --write needs write permission "
            f"on {db} and on its folder {db.parent} (DuckDB writes market.duckdb.wal there "
            "as it commits)\n"
        )
    junk = db.parent / "junk.duckdb"
    junk.write_text("not a database")
    monkeypatch.undo()
    result = _sql(junk, "CREATE VIEW v AS SELECT 1 AS x", "--write")
    assert result.exit_code == 1
    assert f"cannot open {junk} as a DuckDB database (" in result.output
    assert "pass --db with a DuckDB file" in result.output


class _WalRefused:
    """A real connection whose commit fails as DuckDB's does when the folder is read-only
    (the open succeeds; the WAL cannot be created)."""

    def __init__(self, con, db):
        self._con, self._db = con, db

    def __getattr__(self, name):
        return getattr(self._con, name)

    def commit(self):
        raise duckdb.TransactionException(
            f'TransactionContext Error: Failed to commit: Cannot open file "{self._db}.wal": '
            "Permission denied"
        )


def test_write_a_commit_refused_for_the_wal_says_the_folder_must_be_writable(db, monkeypatch):
    from marketpulse import query

    real = query.connect
    monkeypatch.setattr(query, "connect", lambda *a, **k: _WalRefused(real(*a, **k), db))
    result = _sql(db, "CREATE VIEW v AS SELECT 1 AS x", "--write")
    assert result.exit_code == 1
    assert result.output == (
        f'Error: commit failed (TransactionContext Error: Failed to commit: Cannot open file "'
        f'{db}.wal": Permission denied){_UNCHANGED}--write needs write permission on {db} '
        f"and on its folder {db.parent} (DuckDB writes market.duckdb.wal there as it "
        "commits)\n"
    )
    assert "v" not in _tables(db)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission")
@pytest.mark.parametrize("what", ["file", "folder"])
def test_write_to_a_read_only_file_or_folder_names_the_permission(tmp_path, what):
    folder = tmp_path / "d"
    folder.mkdir()
    db = build_db(folder / "market.duckdb")
    (db if what == "file" else folder).chmod(0o444 if what == "file" else 0o555)
    try:
        result = _sql(db, "CREATE VIEW v AS SELECT 1 AS x", "--write")
    finally:
        folder.chmod(0o755)
        db.chmod(0o644)
    assert result.exit_code == 1
    assert f"--write needs write permission on {db} and on its folder {folder}" in result.output
    assert "v" not in _tables(db)


_READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("SELECT count(*) FROM posts").fetchone()[0], flush=True)
time.sleep(2)
print(con.execute("SELECT count(*) FROM posts").fetchone()[0], flush=True)
con.close()
"""


def test_write_waits_for_a_concurrent_reader_and_leaves_it_whole(db):
    """Another process reading the file keeps reading; --write waits for it to close."""
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        first = reader.stdout.readline()  # the reader holds the file from here
        start = time.monotonic()
        result = _sql(db, "CREATE VIEW v AS SELECT 1 AS x", "--write", "--lock-timeout", "60")
        waited = time.monotonic() - start
        out, _ = reader.communicate(timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0
    assert result.exit_code == 0, result.output
    assert waited > 1  # it waited for the reader instead of failing or breaking it
    assert out.strip() == first.strip() and int(first) > 0
    assert "waiting for another process to close the file" in result.output
    assert _sql(db, "SELECT x FROM v", "--csv").output.splitlines() == ["x", "1"]


def test_write_refuses_a_missing_file_instead_of_creating_one(tmp_path):
    result = _sql(tmp_path / "none.duckdb", "CREATE TABLE t (x INT)", "--write")
    assert result.exit_code == 1 and "not found" in result.output
    assert not (tmp_path / "none.duckdb").exists()


# --- 5. sql --csv renders values as --json does ------------------------------------------


def test_csv_writes_blobs_as_hex_and_non_ascii_as_it_is(tmp_path):
    db = tmp_path / "m.duckdb"
    duckdb.connect(str(db)).close()
    sql = "SELECT '\\xAB\\x01'::BLOB AS b, {'n': 'é', 'b': '\\xff'::BLOB} AS s, ['索尼'] AS l"
    result = _sql(db, sql, "--csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "b,s,l",
        'ab01,"{""n"": ""é"", ""b"": ""ff""}","[""索尼""]"',
    ]
    as_json = json.loads(_sql(db, sql, "--json").output)
    assert as_json == [{"b": "ab01", "s": {"n": "é", "b": "ff"}, "l": ["索尼"]}]
