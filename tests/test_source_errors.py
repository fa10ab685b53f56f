"""Bad input is one line that keeps DuckDB's cause and says the fix the command can take.

On real files: CSVs that are not UTF-8 (Latin-1, Windows-1252, UTF-8 with stray bytes),
a file that is not a DuckDB database given as --results-db, and DuckDB tables whose text
column is JSON or BLOB. Where a message shows SQL, the test runs that SQL and checks
that the command then reads the text.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.export.checks import CheckSource, read_check_sample
from marketpulse.runtime.database import Database
from marketpulse.runtime.source import check_source
from marketpulse.sql import DEFAULT_STORAGE_VERSION
from marketpulse.train.data import DataSource, load_labeled
from marketpulse.train.eval_domains import DOMAIN_FLAGS

ROWS = [("Apple shares jump after earnings", "bullish"), ("Oil slides", "bearish")] * 10


def _csv(path: Path, bad_row: int, bad: bytes, rows=ROWS) -> Path:
    """A CSV whose row `bad_row` (0-based) ends in the bytes `bad`; the rest is ASCII."""
    with open(path, "wb") as f:
        f.write(b"text,label\n")
        for i, (text, label) in enumerate(rows):
            f.write(b'"' + text.encode() + (bad if i == bad_row else b"") + b'",')
            f.write(label.encode() + b"\n")
    return path


def _error(call) -> str:
    with pytest.raises(MarketpulseError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --- a CSV that is not UTF-8 --------------------------------------------------------


def test_a_latin1_csv_keeps_the_cause_and_says_both_fixes(tmp_path):
    csv = _csv(tmp_path / "posts.csv", 4, b" caf\xe9 cr\xe8me")
    message = _error(lambda: load_labeled(DataSource(input=str(csv))))
    assert message.startswith(f"cannot read {csv}: it is not UTF-8 (")
    # DuckDB's cause: the line (header + 5th row), and that the file is not UTF-8
    assert "CSV Error on Line: 6" in message and "not utf-8 encoded" in message
    new = tmp_path / "posts.utf8.csv"
    assert f"iconv -f latin1 -t utf-8 {csv} > {new}) and pass {new} with --input" in message
    query = f"SELECT * FROM read_csv('{csv}', encoding='latin-1')"
    assert message.endswith(f'or read it as Latin-1 with --query "{query}"')
    # the query it suggests reads the file, accents and all
    rows = load_labeled(DataSource(query=query))
    assert "Apple shares jump after earnings café crème" in rows.texts and rows.rows_read == len(
        ROWS
    )


def test_a_bad_byte_past_duckdbs_sniff_is_the_same_one_line(tmp_path):
    """DuckDB sniffs the first 20480 rows; a bad byte after them fails the read later,
    inside the caller's SELECT, which used to pass DuckDB's error on as it was."""
    rows = [(f"headline {i}", "neutral") for i in range(25_000)]
    csv = _csv(tmp_path / "big.csv", 24_000, b" \xe9t\xe9", rows)
    message = _error(lambda: load_labeled(DataSource(input=str(csv))))
    assert message.startswith(f"cannot read {csv}: it is not UTF-8 (")
    assert "CSV Error on Line: 24002" in message and "iconv -f latin1 -t utf-8" in message


def test_windows_1252_and_stray_bytes_get_the_re_encoding_that_fits(tmp_path):
    # 0x93/0x94: Windows quotes, which DuckDB's latin-1 refuses: no read_csv advice
    cp1252 = _csv(tmp_path / "quotes.csv", 3, b" \x93up\x94")
    message = _error(lambda: load_labeled(DataSource(input=str(cp1252))))
    assert "re-encode it from Windows-1252 to UTF-8 (iconv -f cp1252 -t utf-8" in message
    assert "encoding=" not in message
    # a UTF-8 file (it has UTF-8 accents) with a Latin-1 byte and a lone surrogate
    mixed = _csv(tmp_path / "mixed.csv", 2, " café".encode() + b" \xe9 \xed\xa0\x80")
    message = _error(lambda: load_labeled(DataSource(input=str(mixed))))
    fix = f"drop the bytes that are not UTF-8 (iconv -f utf-8 -t utf-8 -c {mixed} > "
    assert fix in message and "latin" not in message.lower()


@pytest.mark.skipif(shutil.which("iconv") is None, reason="needs iconv (glibc's libc-bin)")
def test_the_iconv_command_works_on_a_path_with_spaces(tmp_path):
    """The suggested command is quoted for a shell: run as printed, it writes the file
    the message then says to pass, and that file reads."""
    folder = tmp_path / "My Exports"
    folder.mkdir()
    csv = _csv(folder / "posts (1).csv", 4, b" caf\xe9")
    message = _error(lambda: load_labeled(DataSource(input=str(csv))))
    command = re.search(r"\((iconv .+?)\) and pass (.+?) with --input", message)
    assert command, message
    subprocess.run(["bash", "-c", command.group(1)], check=True)
    (new,) = shlex.split(command.group(2))
    assert new == str(folder / "posts (1).utf8.csv")
    rows = load_labeled(DataSource(input=new))
    assert "Apple shares jump after earnings café" in rows.texts


def test_export_check_input_suggests_no_query(tmp_path):
    """export takes no --query: its message re-encodes the file and stops there."""
    csv = _csv(tmp_path / "check.csv", 1, b" \xe9")
    message = _error(lambda: read_check_sample(CheckSource(input=csv)))
    assert message.startswith(f"cannot read {csv}: it is not UTF-8 (")
    assert "not utf-8 encoded" in message and "with --check-input" in message
    assert "--query" not in message and "read_csv" not in message


def test_a_query_reading_a_latin1_csv_says_which_file(tmp_path):
    csv = _csv(tmp_path / "posts.csv", 0, b" \xe9")
    message = _error(lambda: load_labeled(DataSource(query=f"SELECT * FROM read_csv('{csv}')")))
    assert message.startswith(f"--query failed: {csv} is not UTF-8 (")
    assert "add encoding='latin-1' to its read_csv" in message


def test_evaluate_domain_query_advice_takes_name_equals_source(tmp_path):
    csv = _csv(tmp_path / "posts.csv", 0, b" \xe9")
    message = _error(lambda: load_labeled(DataSource(input=str(csv)), DOMAIN_FLAGS))
    assert 'with --domain, or read it as Latin-1 with --domain "NAME=SELECT * FROM' in message


def test_train_cli_prints_the_cause_on_one_line(tmp_path):
    csv = _csv(tmp_path / "posts.csv", 4, b" \xe9")
    args = ["train", "--input", str(csv), "--label-names", "bearish,bullish"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "model")])
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert "not utf-8 encoded" in line and "iconv -f latin1" in line and "--query" in line


# --- a --results-db that is not a DuckDB database -----------------------------------


def _source_db(path: Path) -> Path:
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE posts (id INTEGER, text VARCHAR)")
        con.execute("INSERT INTO posts VALUES (1, 'Oil slides')")
    return path


def test_a_results_db_that_is_not_a_database_names_results_db(tmp_path):
    source = _source_db(tmp_path / "source.duckdb")
    notes = tmp_path / "notes.duckdb"
    notes.write_text("not a db\n")
    db = Database(source, notes, "128MB", 1.0, DEFAULT_STORAGE_VERSION)
    db.prepare()
    for session in (db.read, db.write):  # writing it is refused alike, not a "full disk"
        message = _error(lambda session=session: session().__enter__())
        assert message.startswith(f"cannot open {notes} as a DuckDB database (")
        assert "not a valid DuckDB database" in message
        assert message.endswith("; pass --results-db with a DuckDB file")
    assert notes.read_text() == "not a db\n"
    # a --db that is not a database still names --db, with or without --results-db
    for results in (None, tmp_path / "new.duckdb"):
        db = Database(notes, results, "128MB", 1.0, DEFAULT_STORAGE_VERSION)
        message = _error(lambda db=db: db.read().__enter__())
        assert message.endswith("; pass --db with a DuckDB file")
    assert not (tmp_path / "new.duckdb").exists()


# --- a text column that is JSON (or BLOB, or a number) ------------------------------


def _json_db(path: Path) -> Path:
    with duckdb.connect(str(path)) as con:
        con.execute('CREATE SCHEMA "Raw Feed"')
        con.execute(
            'CREATE TABLE "Raw Feed"."Labeled Posts" '
            '("Post ID" INTEGER, payload JSON, raw BLOB, n INTEGER, tag VARCHAR)'
        )
        for i, (text, tag) in enumerate(ROWS):
            payload = f'{{"msg": {{"body": "{text}", "lang": "en"}}, "lbl": {i % 3}}}'
            con.execute(
                'INSERT INTO "Raw Feed"."Labeled Posts" VALUES (?, ?, encode(?), ?, ?)',
                [i, payload, text, i, tag],
            )
    return path


TABLE = '"Raw Feed"."Labeled Posts"'
VIEW = (
    "CREATE VIEW text_view AS SELECT * REPLACE (payload->>'$.msg.body' AS payload) "
    'FROM "Raw Feed"."Labeled Posts"'
)


def _run_sql(db: Path, sql: str) -> None:
    with duckdb.connect(str(db)) as con:
        con.execute(sql)


def test_score_json_text_column_gets_a_view_that_reads_the_text(tmp_path):
    db = _json_db(tmp_path / "feed.duckdb")
    with duckdb.connect(str(db), read_only=True) as con:
        message = _error(lambda: check_source(con, TABLE, "Post ID", "payload", None, False))
    assert message.startswith(
        "text column 'payload' has type JSON, not VARCHAR; pass --text-col with a text column, "
        "or make a view that reads the text out of the JSON ('$.msg.body' holds its longest "
        "strings) and pass it as --table: "
    )
    assert message.endswith(VIEW) and "--query" not in message
    _run_sql(db, VIEW)  # what it says to do works
    with duckdb.connect(str(db), read_only=True) as con:
        source = check_source(con, "text_view", "Post ID", "payload", None, False)
        texts = con.execute(f"SELECT payload FROM {source.table_sql}").fetchall()
    assert {t for (t,) in texts} == {text for text, _ in ROWS}


def test_export_json_check_column_suggests_a_check_table_not_a_query(tmp_path):
    db = _json_db(tmp_path / "feed.duckdb")
    message = _error(lambda: read_check_sample(CheckSource(db=db, table=TABLE, text_col="payload")))
    assert message.startswith(
        f"column 'payload' of table {TABLE!r} has type JSON, not VARCHAR; pass "
        "--check-text-col with a text column, or make a view "
    )
    assert "and pass it as --check-table: " + VIEW in message
    assert "query" not in message
    _run_sql(db, VIEW)
    sample = read_check_sample(CheckSource(db=db, table="text_view", text_col="payload"))
    assert set(sample.texts) == {text for text, _ in ROWS}


def test_train_json_text_column_suggests_the_query_that_reads_it(tmp_path):
    db = str(_json_db(tmp_path / "feed.duckdb"))
    source = DataSource(db=db, table=TABLE, text_col="payload", label_col="tag")
    message = _error(lambda: load_labeled(source))
    select = f"SELECT * REPLACE (payload->>'$.msg.body' AS payload) FROM {TABLE}"
    assert f"pass --text-col with a text column, or pass --query with {select}, which" in message
    rows = load_labeled(DataSource(db=db, query=select, text_col="payload", label_col="tag"))
    assert sorted(set(rows.texts)) == sorted({text for text, _ in ROWS})
    # the user's own query: what to select in it
    query = DataSource(db=db, query=f"SELECT * FROM {TABLE}", text_col="payload", label_col="tag")
    message = _error(lambda: load_labeled(query))
    assert "or select payload->>'$.msg.body' AS payload in --query, which reads" in message


def test_other_types_get_their_own_advice_or_none(tmp_path):
    db = _json_db(tmp_path / "feed.duckdb")
    with duckdb.connect(str(db), read_only=True) as con:
        blob = _error(lambda: check_source(con, TABLE, "Post ID", "raw", None, False))
        number = _error(lambda: check_source(con, TABLE, "Post ID", "n", None, False))
    assert "SELECT * REPLACE (decode(raw) AS raw)" in blob
    # a number is no text to classify: no SQL that would make it one
    assert number == (
        "text column 'n' has type INTEGER, not VARCHAR; pass --text-col with a text column"
    )
    # JSON without a string in it: the key is the user's to name
    _run_sql(db, "CREATE TABLE nums AS SELECT 1 AS id, '{\"a\": 1}'::JSON AS payload")
    with duckdb.connect(str(db), read_only=True) as con:
        message = _error(lambda: check_source(con, "nums", "id", "payload", None, False))
    assert "(at the key '$.text': use the one that holds it)" in message
    assert re.search(r"REPLACE \(payload->>'\$\.text' AS payload\) FROM nums$", message)
