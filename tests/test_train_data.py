"""Loading labeled rows (train/data.py) and the stratified split (train/split.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections import Counter

import duckdb
import pytest

from marketpulse.errors import MarketpulseError
from marketpulse.sources import connect_read_only
from marketpulse.sql import quote_ident
from marketpulse.train.advice import query_flag, sql_name
from marketpulse.train.data import DataSource, load_labeled
from marketpulse.train.label_checks import require_trainable
from marketpulse.train.labels import parse_label_names
from marketpulse.train.split import parse_fractions, stratified_split


def make_db(path, rows, label_type="VARCHAR"):
    con = duckdb.connect(str(path))
    con.execute(f"CREATE TABLE posts (id INTEGER, body VARCHAR, tag {label_type})")
    con.executemany("INSERT INTO posts VALUES (?, ?, ?)", rows)
    con.close()
    return str(path)


def test_table_source_skips_and_counts_unusable_rows(tmp_path):
    db = make_db(
        tmp_path / "a.duckdb",
        [
            (1, "stocks up", "bullish"),
            (2, None, "bearish"),
            (3, "   ", "neutral"),
            (4, "flat day", None),
            (5, "crash", "bearish"),
            (6, "", "bullish"),
            (7, "meh", "  "),
        ],
    )
    rows = load_labeled(DataSource(db=db, table="posts", text_col="body", label_col="tag"))
    assert rows.rows_read == 7
    assert rows.skipped == {"null_text": 1, "empty_text": 2, "null_label": 2}
    assert sorted(zip(rows.texts, rows.labels, strict=True)) == [
        ("crash", "bearish"),
        ("stocks up", "bullish"),
    ]
    assert rows.label_names == ["bearish", "bullish"]


def test_integer_labels_named_by_label_names(tmp_path):
    db = make_db(tmp_path / "a.duckdb", [(1, "a", 0), (2, "b", 2), (3, "c", 1)], "INTEGER")
    names = parse_label_names("bearish, bullish,neutral")
    rows = load_labeled(
        DataSource(db=db, table="posts", text_col="body", label_col="tag", label_names=names)
    )
    assert dict(zip(rows.texts, rows.labels, strict=True)) == {
        "a": "bearish",
        "b": "neutral",
        "c": "bullish",
    }
    assert rows.label_names == ["bearish", "bullish", "neutral"]
    plain = load_labeled(DataSource(db=db, table="posts", text_col="body", label_col="tag"))
    assert (
        plain.label_names == ["0", "1", "2"]
        and dict(zip(plain.texts, plain.labels, strict=True))["b"] == "2"
    )


def test_digit_text_labels_are_named_by_label_names(tmp_path):
    db = make_db(tmp_path / "a.duckdb", [(1, "a", "0"), (2, "b", " 2"), (3, "c", "1")])
    names = parse_label_names("bearish,bullish,neutral")
    source = DataSource(db=db, table="posts", text_col="body", label_col="tag", label_names=names)
    rows = load_labeled(source)
    assert dict(zip(rows.texts, rows.labels, strict=True)) == {
        "a": "bearish",
        "b": "neutral",
        "c": "bullish",
    }
    bad = make_db(tmp_path / "b.duckdb", [(1, "a", "0"), (2, "b", "7")])
    with pytest.raises(MarketpulseError, match=r"label value 7 .* has no name"):
        load_labeled(
            DataSource(db=bad, table="posts", text_col="body", label_col="tag", label_names=names)
        )


def test_superscript_digits_are_a_label_not_a_position(tmp_path):
    """ "²" passes str.isdigit but not int(): it is an unknown label, not a crash."""
    db = make_db(tmp_path / "a.duckdb", [(1, "a", "0"), (2, "b", "\u00b2")])
    names = parse_label_names("bearish,bullish,neutral")
    source = DataSource(db=db, table="posts", text_col="body", label_col="tag", label_names=names)
    with pytest.raises(MarketpulseError, match="not among the label names"):
        load_labeled(source)
    plain = load_labeled(DataSource(db=db, table="posts", text_col="body", label_col="tag"))
    assert sorted(plain.label_names) == ["0", "\u00b2"]


def test_integer_label_without_a_name_is_an_error(tmp_path):
    db = make_db(tmp_path / "a.duckdb", [(1, "a", 0), (2, "b", 3)], "INTEGER")
    source = DataSource(
        db=db, table="posts", text_col="body", label_col="tag", label_names=("x", "y")
    )
    with pytest.raises(MarketpulseError, match=r"label value 3 .* has no name .*--label-names"):
        load_labeled(source)


def test_unknown_string_label_name_is_an_error(tmp_path):
    db = make_db(tmp_path / "a.duckdb", [(1, "a", "bullish"), (2, "b", "hold")])
    source = DataSource(
        db=db, table="posts", text_col="body", label_col="tag", label_names=("bullish", "bearish")
    )
    with pytest.raises(MarketpulseError, match=r"label 'hold' .* not among the label names"):
        load_labeled(source)


def test_repeated_label_names_are_an_error():
    with pytest.raises(MarketpulseError, match="empty or repeated"):
        parse_label_names("a,b,a")


def test_missing_table_and_column_errors_name_the_fix(tmp_path):
    db = make_db(tmp_path / "a.duckdb", [(1, "a", "x")])
    with pytest.raises(MarketpulseError, match=r"table 'news' not found .*posts.*--table"):
        load_labeled(DataSource(db=db, table="news", text_col="body", label_col="tag"))
    with pytest.raises(
        MarketpulseError, match=r"column 'text' not found .*id, body, tag.*--text-col"
    ):
        load_labeled(DataSource(db=db, table="posts", label_col="tag"))
    with pytest.raises(MarketpulseError, match=r"column 'label' not found .*--label-col"):
        load_labeled(DataSource(db=db, table="posts", text_col="body"))
    with pytest.raises(MarketpulseError, match=r"database .* not found; pass --db"):
        load_labeled(DataSource(db=str(tmp_path / "nope.duckdb"), table="posts"))


def hold_for_writing(db, seconds: float) -> subprocess.Popen:
    """Another process that opens `db` read-write (as a committing run does) for `seconds`."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, duckdb; con = duckdb.connect(sys.argv[1]); "
            "print('open', flush=True); time.sleep(float(sys.argv[2])); con.close()",
            str(db),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "open"
    return holder


def test_reading_waits_while_another_process_writes_the_database(tmp_path):
    db = make_db(tmp_path / "a.duckdb", [(1, "stocks up", "bullish"), (2, "crash", "bearish")])
    holder = hold_for_writing(db, 1.5)
    started = time.monotonic()
    try:
        rows = load_labeled(DataSource(db=db, table="posts", text_col="body", label_col="tag"))
    finally:
        holder.wait(timeout=30)
    assert time.monotonic() - started >= 1.0  # it waited for the writer instead of failing
    assert rows.texts == ["crash", "stocks up"] and rows.labels == ["bearish", "bullish"]

    holder = hold_for_writing(db, 10)
    try:
        with pytest.raises(MarketpulseError) as err:
            connect_read_only(db, "--check-db", timeout=0.3)
    finally:
        holder.kill()
        holder.wait()
    message = str(err.value)
    assert "stayed locked by a writer" in message and "pass a copy with --check-db" in message
    assert len(message.splitlines()) == 1


def test_a_file_that_is_not_a_database_names_the_flag(tmp_path):
    bogus = tmp_path / "notes.duckdb"
    bogus.write_text("not a database\n" * 100)
    with pytest.raises(MarketpulseError, match=r"cannot open .* as a DuckDB database .*--check-db"):
        connect_read_only(str(bogus), "--check-db")


def test_query_csv_and_parquet_sources_agree(tmp_path):
    csv = tmp_path / "rows.csv"
    csv.write_text('text,label\n"up, up",1\ndown,0\n,1\nsideways,2\n')
    from_csv = load_labeled(DataSource(input=str(csv)))
    assert from_csv.skipped["null_text"] == 1
    parquet = tmp_path / "rows.parquet"
    duckdb.sql(f"COPY (SELECT * FROM read_csv('{csv}')) TO '{parquet}' (FORMAT parquet)")
    from_parquet = load_labeled(DataSource(input=str(parquet)))
    from_query = load_labeled(DataSource(query=f"SELECT * FROM read_csv('{csv}') WHERE label < 3"))
    assert (
        from_csv.texts == from_parquet.texts == from_query.texts == ["down", "sideways", "up, up"]
    )
    assert from_csv.fingerprint() == from_parquet.fingerprint() == from_query.fingerprint()
    with pytest.raises(MarketpulseError, match="--query failed: .*fix the SQL"):
        load_labeled(DataSource(query="SELEC 1"))
    with pytest.raises(MarketpulseError, match=r"\.csv, \.tsv or \.parquet"):
        (tmp_path / "rows.xlsx").write_text("x")
        load_labeled(DataSource(input=str(tmp_path / "rows.xlsx")))


@pytest.mark.parametrize(
    ("query", "got"),
    [
        ("DELETE FROM posts", "not a statement of type DELETE"),
        ("SELECT text, label FROM posts; COPY posts TO '{out}'", "not 2 statements"),
        ("PIVOT posts ON label", "wrap it: SELECT"),
    ],
)
def test_a_query_that_is_not_one_select_is_refused_before_it_runs(tmp_path, query, got):
    db, out = tmp_path / "labeled.duckdb", tmp_path / "leak.csv"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE posts AS SELECT 'up' AS text, 'bullish' AS label")
    with pytest.raises(MarketpulseError, match=f"--query must be one SELECT statement .*{got}"):
        load_labeled(DataSource(db=str(db), query=query.format(out=out)))
    assert not out.exists()  # a read-only connection allows COPY TO; it must not have run


def test_fingerprint_ignores_scan_order_but_not_content(tmp_path):
    rows = [(i, f"text {i}", "ab"[i % 2]) for i in range(20)]
    a = load_labeled(
        DataSource(
            db=make_db(tmp_path / "a.duckdb", rows), table="posts", text_col="body", label_col="tag"
        )
    )
    b = load_labeled(
        DataSource(
            db=make_db(tmp_path / "b.duckdb", rows[::-1]),
            table="posts",
            text_col="body",
            label_col="tag",
        )
    )
    changed = rows[:-1] + [(19, "text 19", "a")]
    c = load_labeled(
        DataSource(
            db=make_db(tmp_path / "c.duckdb", changed),
            table="posts",
            text_col="body",
            label_col="tag",
        )
    )
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_trainability_checks(tmp_path):
    one_class = load_labeled(
        DataSource(
            db=make_db(tmp_path / "a.duckdb", [(1, "a", "x"), (2, "b", "x")]),
            table="posts",
            text_col="body",
            label_col="tag",
        )
    )
    with pytest.raises(MarketpulseError, match="1 distinct label.*at least two classes"):
        require_trainable(one_class, DataSource(label_col="tag"), 3)
    rows = [(i, f"t{i}", "big") for i in range(10)] + [(20, "s1", "small"), (21, "s2", "small")]
    tiny_class = load_labeled(
        DataSource(
            db=make_db(tmp_path / "b.duckdb", rows), table="posts", text_col="body", label_col="tag"
        )
    )
    with pytest.raises(MarketpulseError, match="label 'small' has only 2 usable rows.*at least 3"):
        require_trainable(tiny_class, DataSource(label_col="tag"), 3)


def test_too_few_rows_advice_is_a_fix_that_works(tmp_path):
    rows = [(i, f"t{i}", "big") for i in range(10)] + [(20, "s1", "it's rare")]
    db = make_db(tmp_path / "a.duckdb", rows)
    source = DataSource(db=db, table="posts", text_col="body", label_col="tag")
    with pytest.raises(MarketpulseError) as err:
        require_trainable(load_labeled(source), source, 3)
    message = str(err.value)
    assert "--label-names" not in message  # leaving it out there fails: not among the names
    assert """--query "SELECT ... WHERE tag <> 'it''s rare'\"""" in message
    # the filter it suggests leaves those rows out
    query = "SELECT * FROM posts WHERE tag <> 'it''s rare'"
    filtered = load_labeled(DataSource(db=db, query=query, text_col="body", label_col="tag"))
    assert filtered.label_names == ["big"]

    ints_rows = [(i, f"t{i}", 0) for i in range(10)] + [(20, "s1", 1)]
    ints = make_db(tmp_path / "c.duckdb", ints_rows, "INTEGER")
    source = DataSource(db=ints, table="posts", text_col="body", label_col="tag")
    with pytest.raises(MarketpulseError, match=r'--query "SELECT \.\.\. WHERE tag <> 1"'):
        require_trainable(load_labeled(source), source, 3)

    # a --label-names name without rows: leaving it out of --label-names is the fix
    named = dataclasses.replace(
        DataSource(db=db, table="posts", text_col="body", label_col="tag"),
        label_names=("big", "it's rare", "empty"),
    )
    with pytest.raises(MarketpulseError) as err:
        require_trainable(load_labeled(named), named, 1)
    assert "label 'empty' has only 0 usable rows" in str(err.value)
    assert "leave it out of --label-names" in str(err.value)


def test_stratified_split_is_reproducible_and_covers_every_class():
    labels = ["neutral"] * 600 + ["bullish"] * 190 + ["bearish"] * 140 + ["rare"] * 3
    split = stratified_split(labels, (0.8, 0.1, 0.1), seed=1)
    all_idx = split.train + split.validation + split.test
    assert sorted(all_idx) == list(range(len(labels)))  # disjoint and complete
    for part, frac in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        counts = Counter(labels[i] for i in getattr(split, part))
        assert set(counts) == {"neutral", "bullish", "bearish", "rare"}
        assert counts["neutral"] == pytest.approx(600 * frac, abs=1)
        assert counts["bearish"] == pytest.approx(140 * frac, abs=1)
    assert stratified_split(labels, (0.8, 0.1, 0.1), seed=1) == split
    assert stratified_split(labels, (0.8, 0.1, 0.1), seed=2).test != split.test


def test_parse_fractions():
    assert parse_fractions("80,10,10") == pytest.approx((0.8, 0.1, 0.1))
    for bad in ("0.8,0.2", "0.9,0.1,0", "a,b,c"):
        with pytest.raises(MarketpulseError, match="--split"):
            parse_fractions(bad)


@pytest.mark.parametrize("bad", ["nan,0.1,0.1", "inf,1,1", "0.8,0.1,-inf", "1e308,1e308,1"])
def test_parse_fractions_refuses_non_finite_numbers(bad):
    with pytest.raises(MarketpulseError) as err:
        parse_fractions(bad)
    message = str(err.value)
    assert "positive finite numbers" in message and "such as 0.8,0.1,0.1" in message
    assert len(message.splitlines()) == 1


def test_a_split_that_does_not_sum_to_one_is_rescaled_visibly():
    from marketpulse.train.split import rescale_note

    assert rescale_note("0.8,0.1,0.1") is None and rescale_note("0.7,0.2,0.1") is None
    assert rescale_note("80,10,10") == (
        "--split 80,10,10 sums to 100, not 1: using 0.8,0.1,0.1 (train, validation, test)"
    )
    assert parse_fractions("1,1,2") == pytest.approx((0.25, 0.25, 0.5))
    assert rescale_note("1,1,2") == (
        "--split 1,1,2 sums to 4, not 1: using 0.25,0.25,0.5 (train, validation, test)"
    )


def write_parquet(path, rows, label_type):
    """A Parquet file with a `label_type` label column, as pandas and others write them."""
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t (text VARCHAR, label {label_type})")
    con.executemany("INSERT INTO t VALUES (?, ?)", rows)
    con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    con.close()
    return str(path)


def test_nan_labels_are_skipped_and_whole_floats_are_integers(tmp_path):
    # pandas writes an integer column with a gap as DOUBLE, the gap as NaN
    rows = [(f"t{i}", float(i % 3)) for i in range(9)] + [("gap", float("nan")), ("none", None)]
    path = write_parquet(tmp_path / "gaps.parquet", rows, "DOUBLE")
    plain = load_labeled(DataSource(input=path))
    assert plain.label_names == ["0", "1", "2"] and set(plain.labels) == {"0", "1", "2"}
    assert plain.skipped == {"null_text": 0, "empty_text": 0, "null_label": 2}
    assert plain.rows_read == 11 and len(plain.texts) == 9
    named = load_labeled(DataSource(input=path, label_names=("bearish", "bullish", "neutral")))
    assert dict(zip(named.texts, named.labels, strict=True))["t4"] == "bullish"
    assert named.skipped["null_label"] == 2


@pytest.mark.parametrize("label_type", ["DOUBLE", "DECIMAL(4,1)"])
def test_a_label_that_is_not_a_whole_number_is_an_error(tmp_path, label_type):
    rows = [("a", 1.0), ("b", 2.5)]
    path = write_parquet(tmp_path / "scores.parquet", rows, label_type)
    with pytest.raises(MarketpulseError) as err:
        load_labeled(DataSource(input=path))
    message = str(err.value)
    assert "label 2.5 in column 'label' is not a whole number" in message
    assert "--query" in message and len(message.splitlines()) == 1


def test_count_phrase_reads_as_words_not_a_dict():
    from marketpulse.train.advice import count_phrase

    assert count_phrase({"null_text": 2, "empty_text": 0, "null_label": 1}) == (
        "2 null text, 1 null label"
    )
    assert count_phrase({"train": 7635, "validation": 954, "test": 954}) == (
        "7,635 train, 954 validation, 954 test"
    )
    assert count_phrase({"null_text": 0}) == "none"


@pytest.mark.parametrize(
    ("name", "spelled"),
    [
        ("tag", "tag"),
        ("Tag", "Tag"),  # DuckDB finds a column in any letter case
        ("Sentiment Label", '"Sentiment Label"'),
        ("order", '"order"'),  # a keyword
        ("Left", '"Left"'),
        ('say "hi"', '"say ""hi"""'),
        ("2nd", '"2nd"'),
    ],
)
def test_sql_name_quotes_a_column_only_where_sql_needs_it(name, spelled):
    assert sql_name(name) == spelled
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t ({quote_ident(name)} VARCHAR)")
    con.execute("INSERT INTO t VALUES ('A')")
    sql = f"SELECT lower({spelled}) AS {spelled} FROM t WHERE {spelled} NOT IN ('b', 'c')"
    cursor = con.execute(sql)
    assert [d[0] for d in cursor.description] == [name]
    assert cursor.fetchall() == [("a",)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ... WHERE tag <> 1",
        'SELECT "Tweet Body", lower("Sentiment Label") AS "Sentiment Label" FROM ...',
        """SELECT ... WHERE "a b" <> 'it''s $HOME `x` \\n \\\\'""",
    ],
)
def test_query_flag_reaches_the_cli_as_one_argument(sql):
    argv = subprocess.run(
        ["sh", "-c", f'printf "%s\\n" {query_flag(sql)}'], capture_output=True, text=True
    ).stdout.splitlines()
    assert argv == ["--query", sql]


def test_fractional_label_fix_quotes_the_column_and_works(tmp_path):
    con = duckdb.connect(str(tmp_path / "a.duckdb"))
    con.execute('CREATE TABLE posts ("Tweet Body" VARCHAR, "Score Value" DOUBLE)')
    con.executemany(
        "INSERT INTO posts VALUES (?, ?)", [(f"post {i}", i / 2 - 2.25) for i in range(10)]
    )
    con.close()
    source = DataSource(
        db=str(tmp_path / "a.duckdb"), table="posts", text_col="Tweet Body", label_col="Score Value"
    )
    with pytest.raises(MarketpulseError, match="not a whole number") as caught:
        load_labeled(source)
    message = str(caught.value)
    assert message.endswith(
        r"""e.g. --query "SELECT ..., CASE WHEN \"Score Value\" > 0 THEN 'up' ELSE 'down' END """
        r'''AS \"Score Value\" FROM ..."'''
    )
    word = message.split("e.g. ", 1)[1]
    argv = subprocess.run(
        ["sh", "-c", f'printf "%s\\n" {word}'], capture_output=True, text=True
    ).stdout.splitlines()
    assert argv[0] == "--query"
    query = argv[1].replace("SELECT ...", 'SELECT "Tweet Body"').replace("FROM ...", "FROM posts")
    rows = load_labeled(dataclasses.replace(source, table=None, query=query))
    assert rows.counts == {"down": 5, "up": 5}
