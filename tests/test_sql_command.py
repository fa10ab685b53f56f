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
