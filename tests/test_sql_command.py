"""`marketpulse sql` errors, and creating a results file: one line that names the cause."""

import duckdb
import pytest
from click.testing import CliRunner

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.sql import create_database


def test_sql_names_read_only_only_when_that_is_the_cause(tmp_path):
    db = tmp_path / "m.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    typo = CliRunner().invoke(main, ["sql", "SELEC 1", "--db", str(db)])
    assert typo.exit_code == 1 and "check the SQL" in typo.output
    assert "read-only" not in typo.output
    write = CliRunner().invoke(main, ["sql", "DELETE FROM t", "--db", str(db)])
    assert write.exit_code == 1 and "only queries that read work" in write.output
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT x FROM t").fetchall() == [(1,)]  # nothing deleted


def test_a_new_results_file_in_a_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(MarketpulseError, match="folder .*nodir does not exist; create it"):
        create_database(tmp_path / "nodir" / "r.duckdb")


@pytest.mark.parametrize("sql", ["", "   ", ";", "/* only a comment */"])
def test_a_query_without_a_statement_is_one_line(tmp_path, sql):
    db = tmp_path / "m.duckdb"
    duckdb.connect(str(db)).close()
    result = CliRunner().invoke(main, ["sql", sql, "--db", str(db)])
    assert result.exit_code == 1, result.output
    assert "holds no SQL statement" in result.output and "Traceback" not in result.output


def test_json_output_is_strict_json_with_nested_values(tmp_path):
    import json

    db = tmp_path / "m.duckdb"
    duckdb.connect(str(db)).close()
    sql = (
        "SELECT 'nan'::DOUBLE AS n, 'inf'::DOUBLE AS i, 1.5::DOUBLE AS f, [1, 2] AS l, "
        "{'a': 1, 'b': [true]} AS s, '\\x01\\xff'::BLOB AS b, DATE '2026-01-05' AS d, "
        "TIMESTAMP '2026-01-05 12:30:00' AS t, 12.30::DECIMAL(5, 2) AS m, NULL AS z"
    )
    result = CliRunner().invoke(main, ["sql", sql, "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert row == {
        "n": None,
        "i": None,
        "f": 1.5,
        "l": [1, 2],
        "s": {"a": 1, "b": [True]},
        "b": "01ff",
        "d": "2026-01-05",
        "t": "2026-01-05T12:30:00",
        "m": "12.30",
        "z": None,
    }


def test_json_refuses_two_columns_of_one_name_and_csv_writes_what_duckdb_would(tmp_path):
    """A JSON object keeps one value per key: `t.bucket, f.bucket` lost the first."""
    db = tmp_path / "m.duckdb"
    duckdb.connect(str(db)).close()
    same = CliRunner().invoke(main, ["sql", "SELECT 1 AS a, 2 AS a", "--db", str(db), "--json"])
    assert same.exit_code == 1
    assert "two columns ('a'); give them distinct names with AS" in same.output
    sql = "SELECT true AS b, [1, 2] AS l, {'a': 'q'} AS s, 'x' AS t"
    csv = CliRunner().invoke(main, ["sql", sql, "--db", str(db), "--csv"])
    assert csv.exit_code == 0, csv.output
    assert csv.output.splitlines() == ["b,l,s,t", 'true,"[1, 2]","{""a"": ""q""}",x']


def test_ctrl_c_exits_130_as_score_does(tmp_path, monkeypatch):
    """Click's default was `Aborted!` and exit code 1, which a scheduler reads as a failure."""
    from marketpulse import query

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(query, "run_queries", interrupted)
    db = tmp_path / "m.duckdb"
    duckdb.connect(str(db)).close()
    result = CliRunner().invoke(main, ["sql", "SELECT 1", "--db", str(db)])
    assert result.exit_code == 130
    assert "interrupted" in result.output and "Aborted" not in result.output
