"""Table names that need quotes (spaces, dashes, other scripts) work through --table, and
`marketpulse sql` with several statements shows every result set, on real DuckDB files."""

from __future__ import annotations

import json

import duckdb
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.sql import quote_ident, quote_table


@pytest.fixture
def db(tmp_path):
    """A file with tables whose names need quotes, and a plain one."""
    path = tmp_path / "market.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE TABLE \"Market Posts\" AS SELECT * FROM (VALUES (1, 'rallies'), "
            "(2, 'slumps')) AS v(id, text)"
        )
        con.execute("CREATE TABLE \"posts-2026\" AS SELECT 3 AS id, 'beats' AS text")
        con.execute("CREATE TABLE café AS SELECT 4 AS id, 'soars' AS text")
        con.execute('CREATE TABLE "say ""hi""" AS SELECT 5 AS id, \'holds\' AS text')
        con.execute("CREATE TABLE posts AS SELECT 6 AS id, 'files' AS text")
    return path


def one_line(message: str) -> str:
    assert message and "\n" not in message, message
    return message


# --- table names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("posts", ["posts"]),
        ("main.posts", ["main", "posts"]),
        ('"Market Posts"', ["Market Posts"]),
        ('main."Market Posts"', ["main", "Market Posts"]),
        ('"posts-2026"', ["posts-2026"]),
        ("café", ["café"]),
        ('"say ""hi"""', ['say "hi"']),
        ('"v1.2 posts"', ["v1.2 posts"]),  # a dot inside quotes is part of the name
        ('market.main."x;y"', ["market", "main", "x;y"]),
    ],
)
def test_a_table_name_splits_into_its_parts_and_is_quoted_part_by_part(name, parts):
    from marketpulse.sql import spell_table, split_table

    assert split_table(name) == parts
    assert quote_table(name) == ".".join(quote_ident(p) for p in parts)
    assert spell_table(parts) == name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Market Posts", "double quotes around a part"),  # the shell ate the quotes
        ("posts-2026", "double quotes around a part"),
        ("x;y", "double quotes around a part"),
        ('sc"ores', "double quotes around a part"),
        ("a.b.c.d", "double quotes around a part"),
        ("a..b", "double quotes around a part"),
        ("", "double quotes around a part"),
        ('""', "double quotes around a part"),
        ('"x y"z', "double quotes around a part"),
        ('"Market Posts', "a quote is not closed"),
        ('"a""', "a quote is not closed"),
        ('"posts"', "needs no quotes; write it as 'posts'"),
        ('"RUNS"', "needs no quotes; write it as 'RUNS'"),  # so results.py sees runs
        ('"café"', "needs no quotes; write it as 'café'"),  # one spelling a name
        ('"main"."x y"', """needs no quotes; write it as 'main."x y"'"""),
    ],
)
def test_a_name_that_does_not_parse_is_refused_in_one_line_saying_how_to_quote(name, says):
    with pytest.raises(MarketpulseError) as err:
        quote_table(name)
    assert says in one_line(str(err.value))
    assert repr(name) in str(err.value)


@settings(max_examples=60, deadline=None, database=None)
@given(name=st.text(min_size=1, max_size=12).filter(lambda n: "\x00" not in n))
def test_any_name_as_listed_reads_back_the_same_table(name):
    """What a "not found" message lists (spell_table) is a name --table takes, and it
    reaches exactly that table, whatever its characters."""
    from marketpulse.sql import split_table, table_names

    con = duckdb.connect()
    try:
        con.execute(f"CREATE TABLE {quote_ident(name)} AS SELECT 7 AS x")
        (listed,) = table_names(con)
        assert split_table(listed) == [name]
        assert con.execute(f"SELECT x FROM {quote_table(listed)}").fetchall() == [(7,)]
    finally:
        con.close()


@pytest.mark.parametrize(
    ("table", "ids"),
    [
        ('"Market Posts"', [1, 2]),
        ('main."Market Posts"', [1, 2]),
        ('"posts-2026"', [3]),
        ("café", [4]),
        ('"say ""hi"""', [5]),
    ],
)
def test_train_input_reads_a_table_whose_name_needs_quotes(db, table, ids):
    """open_source is what train, adapt and export's check texts read --table through."""
    from marketpulse.sources import open_source

    with open_source(db=db, table=table, require={"--text-col": "text"}) as rel:
        rows = rel.con.execute(f"SELECT id, text FROM {rel.name} ORDER BY id").fetchall()
        assert rel.where == f"table {table!r}"
    assert [r[0] for r in rows] == ids


def test_a_missing_table_lists_names_as_they_are_passed(db):
    from marketpulse.sources import open_source

    with pytest.raises(MarketpulseError) as err:
        with open_source(db=db, table='"Market Post"'):
            pass
    message = one_line(str(err.value))
    assert message.startswith("table '\"Market Post\"' not found in ")
    assert '(tables: "Market Posts", café, posts, "posts-2026", "say ""hi""")' in message
    assert message.endswith("pass --table with an existing table")


def test_score_input_checks_a_table_whose_name_needs_quotes(db):
    from marketpulse.runtime.source import check_source, count_rows

    con = duckdb.connect(str(db), read_only=True)
    try:
        source = check_source(con, 'main."Market Posts"', "id", "text", "id > 1", False)
        assert source.table_sql == '"main"."Market Posts"'
        assert count_rows(con, source, "scores", "v1") == (1, 0)  # no scores table yet
    finally:
        con.close()


# --- several statements ----------------------------------------------------------------


def test_every_statement_that_returns_rows_gives_its_result_in_order(db):
    from marketpulse.query import run_queries

    sql = "SELECT count(*) AS n FROM \"Market Posts\"; SELECT 'a;b' AS s; SELECT 1 AS one;"
    assert run_queries(db, sql) == [(["n"], [(2,)]), (["s"], [("a;b",)]), (["one"], [(1,)])]


def test_statements_without_rows_run_but_show_nothing(db, tmp_path):
    from marketpulse.query import run_queries

    out = tmp_path / "copy.csv"
    sql = (
        "SET threads = 1; CREATE TEMP TABLE t AS SELECT 41 AS x; "
        f"COPY (SELECT 1) TO '{out}'; SELECT x + 1 AS y FROM t; "
        "PIVOT (SELECT 1 AS a, 'k' AS b) ON b USING sum(a)"
    )
    assert run_queries(db, sql) == [(["y"], [(42,)]), (["k"], [(1,)])]
    assert out.is_file()  # the COPY ran
    # with no statement that returns rows, the last one's status is the result, as before
    assert run_queries(db, "SET threads = 1; SET threads = 2") == [(["Success"], [])]


def test_one_result_refuses_several_before_any_statement_runs(db, tmp_path):
    from marketpulse.query import run_queries

    out = tmp_path / "copy.csv"
    with pytest.raises(MarketpulseError) as err:
        run_queries(db, f"COPY (SELECT 1) TO '{out}'; SELECT 1; SELECT 2", one_result="--json")
    assert one_line(str(err.value)) == (
        "--json prints one result set, but the SQL holds 2 statements that return rows; "
        "run them one at a time"
    )
    assert not out.exists()
    sql = "CREATE TEMP TABLE t AS SELECT 1 AS x; SELECT x FROM t"
    assert run_queries(db, sql, one_result="--json") == [(["x"], [(1,)])]


def test_one_result_refuses_several_result_sets_instead_of_dropping_all_but_the_last(db):
    from marketpulse.query import run_queries

    with pytest.raises(MarketpulseError, match="holds 2 statements that return rows"):
        run_queries(db, "SELECT 1 AS first; SELECT 2 AS second", one_result="--csv")
    sql = "SET threads = 1; SELECT 2 AS second"
    assert run_queries(db, sql, one_result="--csv") == [(["second"], [(2,)])]


def test_a_failing_statement_is_named_by_its_place(db):
    from marketpulse.query import run_queries

    with pytest.raises(MarketpulseError) as err:
        run_queries(db, "SELECT 1; SELECT * FROM nope; SELECT 3")
    message = one_line(str(err.value))
    assert message.startswith("statement 2 of 3 failed (Catalog Error: ")
    assert message.endswith("; check the SQL")
    with pytest.raises(MarketpulseError, match="statement 2 of 2 failed .*only queries that read"):
        run_queries(db, "SELECT 1; DELETE FROM posts")
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM posts").fetchone() == (1,)


def test_results_print_as_tables_one_after_another_and_json_takes_one(db):
    from marketpulse.query import format_results, run_queries

    results = run_queries(db, "SELECT 1 AS a; SELECT 'x' AS b UNION ALL SELECT 'y'")
    assert format_results(results, "table") == "a\n-\n1\n(1 row)\n\nb\n-\nx\ny\n(2 rows)"
    for style in ("json", "csv"):
        with pytest.raises(MarketpulseError, match=f"--{style} prints one result set, not 2"):
            format_results(results, style)
    assert json.loads(format_results(results[:1], "json")) == [{"a": 1}]


def test_the_sql_command_prints_every_result_set_and_json_refuses_two(db):
    sql = "SELECT 1 AS first_col; SELECT 2 AS second_col"
    result = CliRunner().invoke(main, ["sql", sql, "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert result.output.index("first_col") < result.output.index("second_col")
    result = CliRunner().invoke(main, ["sql", sql, "--db", str(db), "--json"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "2 statements that return rows" in one_line(result.output.strip())


def test_names_derived_from_a_quoted_table_read_its_parts_not_its_quotes(tmp_path):
    import duckdb

    from marketpulse.runtime.results import table_kind
    from marketpulse.trends.queries import latest_view_name, table_name

    assert table_name("trend", '"my posts"', "day") == "trend_my_posts_day"
    assert table_name("trend", 'main."v1.2 posts"', "week") == "trend_v1_2_posts_week"
    assert latest_view_name('"Scores 2026"') == "latest_scores_2026"
    con = duckdb.connect(str(tmp_path / "k.duckdb"))
    con.execute('CREATE VIEW "v1.2 posts" AS SELECT 1 AS x')
    assert table_kind(con, '"v1.2 posts"') == "VIEW"
    assert table_kind(con, 'main."v1.2 posts"') == "VIEW"
    # any letter case for A-Z, as DuckDB's binder; other letters as they are
    con.execute('CREATE TABLE "Überschrift" AS SELECT 1 AS x')
    assert table_kind(con, 'MAIN."V1.2 POSTS"') == "VIEW"
    assert table_kind(con, "ÜBERSCHRIFT") == "BASE TABLE"
    assert table_kind(con, "überschrift") is None


def test_columns_match_letter_case_as_duckdb_does_a_to_z_only(tmp_path):
    import duckdb

    from marketpulse.sql import table_columns

    con = duckdb.connect(str(tmp_path / "c.duckdb"))
    con.execute('CREATE TABLE t ("Überschrift" VARCHAR, "HEAD" VARCHAR, "ß" INTEGER)')
    cols = table_columns(con, "t")
    for name in ("head", "ÜBERSCHRIFT", "Überschrift", "ß"):
        assert name in cols
        con.execute(f'SELECT "{name}" FROM t')  # DuckDB agrees
    for name in ("überschrift", "SS"):
        assert name not in cols
        with pytest.raises(duckdb.BinderException):
            con.execute(f'SELECT "{name}" FROM t')


def test_a_column_flag_given_in_sql_quotes_names_the_plain_spelling():
    """`--by '"Brand Name"'` (quoted as SQL writes it): the flag takes the plain name; the
    error says so (user test)."""
    import duckdb

    from marketpulse.sql import require_columns

    con = duckdb.connect()
    con.execute('CREATE TABLE posts (id INTEGER, "Brand Name" VARCHAR)')
    with pytest.raises(
        MarketpulseError, match=r"--by takes the name without SQL's quotes: Brand Name\)$"
    ):
        require_columns(con, "posts", {"--by": '"Brand Name"'})
    with pytest.raises(MarketpulseError, match=r"pass --by with one of them$"):
        require_columns(con, "posts", {"--by": "brand"})
    assert "Brand Name" in require_columns(con, "posts", {"--by": "Brand Name"})
