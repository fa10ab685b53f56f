"""Property-based input checks (hypothesis): never a traceback, never a partial write.

Filters, texts, ids and table names are drawn at random. Each example either scores
every row exactly once or stops with a one-line MarketpulseError before anything is
written. Examples are few (the suite stays fast); hypothesis keeps the failing ones.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runtime_support import make_source, spread_bundle

from marketpulse.errors import MarketpulseError
from marketpulse.runtime import ScoreConfig, score
from marketpulse.runtime.runs import checked_run
from marketpulse.text import is_blank

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    db = tmp_path_factory.mktemp("props") / "market.duckdb"
    make_source(db, 200)
    return db


def tables(db) -> set[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    finally:
        con.close()


def config(db, bundle, **kw) -> ScoreConfig:
    base = dict(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path)
    base.update(device="cpu", threads=1, progress=False, commit_seconds=0)
    return ScoreConfig(**{**base, **kw})


def one_line(exc: MarketpulseError) -> None:
    assert str(exc) and "\n" not in str(exc), str(exc)


COLUMNS = st.sampled_from(["id", "text", "lang", "nope", '"lang"', "s.id", "rowid"])
LITERALS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=12).map(lambda t: "'" + t.replace("'", "''") + "'"),
    st.sampled_from(["NULL", "TRUE", "DATE '2024-01-01'", "1e308", "'x'::INT"]),
)
ATTACKS = st.sampled_from(
    [
        "1=1; DROP TABLE posts",
        "id IN (SELECT id FROM posts)",
        "lang = 'en' --",
        "read_csv('/etc/passwd') IS NOT NULL",
        "EXISTS (SELECT 1)",
        "id = (SELECT 1)",
        "getenv('HOME') = ''",
        "'a' || chr(0) = 'a'",
        "lang = 'en' UNION SELECT * FROM posts",
        "\x00",
        "(((((",
    ]
)


@st.composite
def filters(draw):
    parts = draw(
        st.lists(
            st.tuples(
                COLUMNS, st.sampled_from(["=", "<>", "<", ">=", "LIKE", "IS NOT", "+"]), LITERALS
            ),
            min_size=1,
            max_size=3,
        )
    )
    expr = f" {draw(st.sampled_from(['AND', 'OR']))} ".join(" ".join(p) for p in parts)
    return draw(st.one_of(st.just(expr), ATTACKS, st.text(max_size=30)))


@SETTINGS
@given(where=filters())
def test_any_where_is_checked_or_refused_in_one_line_and_writes_nothing(source, bundle, where):
    try:
        with checked_run(config(source, bundle, where=where)) as run:
            assert 0 <= run.matching <= 200
    except MarketpulseError as exc:
        one_line(exc)
    assert tables(source) == {"posts"}


TEXTS = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs"]), max_size=20),
    st.sampled_from(["مرحبا بالسوق", "שוק עולה", "📈🚀 to the moon 🌕", "a\u202eb", " \t\n "]),
    st.integers(1, 100_000).map(lambda n: "x" * n),
)


@settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(TEXTS, min_size=1, max_size=12))
def test_any_texts_are_each_scored_or_skipped_exactly_once(tmp_path_factory, bundle, texts):
    db = tmp_path_factory.mktemp("texts") / "t.duckdb"
    con = duckdb.connect(str(db))
    con.register("rows", pa.table({"id": range(len(texts)), "text": pa.array(texts, pa.string())}))
    con.execute("CREATE TABLE posts AS SELECT * FROM rows")
    con.close()
    stats = score(config(db, bundle))
    blank = sum(t is None or is_blank(t) for t in texts)
    assert (stats.rows_scored, stats.rows_skipped) == (len(texts) - blank, blank)
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT count(*), count(DISTINCT id), count(label) FROM scores").fetchone()
    con.close()
    assert rows == (len(texts), len(texts), len(texts) - blank)


ID_TYPES = st.sampled_from(["BIGINT", "INTEGER", "VARCHAR", "UUID", "DOUBLE", "DATE", "BLOB"])


@settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    id_type=ID_TYPES,
    ids=st.lists(st.one_of(st.none(), st.integers(0, 30)), min_size=1, max_size=12),
)
def test_any_ids_are_scored_once_or_refused_before_anything_is_written(
    tmp_path_factory, bundle, id_type, ids
):
    db = tmp_path_factory.mktemp("ids") / "i.duckdb"
    con = duckdb.connect(str(db))
    con.register("rows", pa.table({"k": pa.array(ids, pa.int64())}))
    cast = {
        "UUID": "CAST(printf('00000000-0000-0000-0000-%012d', k) AS UUID)",
        "DATE": "DATE '2024-01-01' + CAST(k AS INTEGER)",
        "BLOB": "CAST(CAST(k AS VARCHAR) AS BLOB)",
    }.get(id_type, f"CAST(k AS {id_type})")
    con.execute(
        f"CREATE TABLE posts AS SELECT {cast} AS id, 'shares rally ' || k AS text FROM rows"
    )
    con.close()
    try:
        stats = score(config(db, bundle))
    except MarketpulseError as exc:
        one_line(exc)
        assert tables(db) == {"posts"}
        return
    assert None not in ids and len(set(ids)) == len(ids) and id_type != "BLOB"
    assert stats.rows_scored == len(ids)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(DISTINCT id) FROM scores").fetchone()[0] == len(ids)
    con.close()


NAMES = st.one_of(
    st.sampled_from(
        ["scores", "main.scores", "a.b.c.d", "my scores", 'sc"ores', "runs", "posts", "", "x;y"]
    ),
    st.text(max_size=12),
)


@SETTINGS
@given(table=NAMES, results_table=NAMES)
def test_any_table_names_are_used_quoted_or_refused_in_one_line(
    source, bundle, table, results_table
):
    try:
        with checked_run(config(source, bundle, table=table, results_table=results_table)):
            assert table in ("posts", "main.posts")
    except MarketpulseError as exc:
        one_line(exc)
    assert tables(source) == {"posts"}


@pytest.mark.parametrize("kind", ["VIEW", "TABLE"])
@pytest.mark.parametrize("name", ["scores", "runs", "models"])
def test_a_results_name_taken_by_something_else_is_refused_before_any_query(
    tmp_path, bundle, kind, name
):
    from click.testing import CliRunner

    from marketpulse.cli import main

    db = tmp_path / "market.duckdb"
    make_source(db, 20)
    con = duckdb.connect(str(db))
    con.execute(f"CREATE {kind} {name} AS SELECT id, text FROM posts")
    con.close()
    args = ["score", "--db", str(db), "--table", "posts", "--id-col", "id", "--text-col", "text"]
    result = CliRunner().invoke(main, [*args, "--bundle", str(bundle.path), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    flag = "--results-table" if name == "scores" else "--results-db"
    assert repr(name) in result.output and flag in result.output
    assert tables(db) == {"posts", name}


@settings(max_examples=200, deadline=None, database=None)
@given(
    texts=st.lists(
        st.one_of(TEXTS, st.text(alphabet=" \t\x1c\x85\xa0\u200b\u2028\u3000x", max_size=6)),
        max_size=30,
    )
)
def test_any_texts_get_the_reasons_python_gives_and_repeats_share_a_token_row(texts):
    """Arrow finds NULL and blank texts as `t is None` / `is_blank(t)` would (the
    definition's own test is in test_blank_text.py), and the rows to score map onto
    their distinct texts."""
    from types import SimpleNamespace

    from marketpulse.runtime.windows import tokenize_window

    encoded = []
    fake = SimpleNamespace(encoder=SimpleNamespace(encode=lambda t: encoded.append(t) or t))
    window = tokenize_window(pa.array(range(len(texts))), pa.array(texts, pa.string()), fake)
    want = ["null_text" if t is None else "empty_text" if is_blank(t) else None for t in texts]
    assert [("null_text", "empty_text")[r - 1] if r else None for r in window.reasons] == want
    assert window.valid.tolist() == [i for i, r in enumerate(want) if r is None]
    distinct = encoded[0].to_pylist()
    assert len(distinct) == len(set(distinct))
    assert [distinct[d] for d in window.distinct] == [texts[i] for i in window.valid]
