"""A bundle written in another format version, or with a damaged manifest, is refused
before anything is written, in one line."""

import json
import shutil
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from marketpulse.bundle import FORMAT_VERSION, MANIFEST, load_bundle
from marketpulse.cli import main
from marketpulse.errors import MarketpulseError


def _with_format(bundle_dir: Path, tmp_path: Path, version) -> Path:
    out = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["format_version"] = version
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, FORMAT_VERSION - 1, None])
def test_load_bundle_names_both_formats_and_the_fix(tiny_bundle, tmp_path, version):
    bundle = _with_format(tiny_bundle.path, tmp_path, version)
    with pytest.raises(MarketpulseError) as err:
        load_bundle(bundle)
    message = str(err.value)
    assert f"format {version!r}" in message and f"reads format {FORMAT_VERSION}" in message
    assert "re-export" in message and "\n" not in message


def test_score_refuses_it_and_writes_nothing(tiny_bundle, tmp_path):
    bundle = _with_format(tiny_bundle.path, tmp_path, FORMAT_VERSION + 1)
    db = tmp_path / "market.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE posts AS SELECT 1 AS id, 'stocks rally' AS text")
    args = ["score", "--db", db, "--table", "posts", "--id-col", "id", "--text-col", "text"]
    result = CliRunner().invoke(main, [*map(str, args), "--bundle", str(bundle)])
    assert result.exit_code == 1
    assert f"reads format {FORMAT_VERSION}" in result.output
    with duckdb.connect(str(db), read_only=True) as con:
        tables = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
    assert tables == {"posts"}


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("max_length", "abc", "'max_length' is not a positive integer"),
        ("max_length", None, "'max_length' is not a positive integer"),
        ("labels", "bearish", "'labels' is not a list of label names"),
        ("model_version", 7, "'model_version' is not a string"),
        ("files", ["model.onnx"], "'files' is not a map of file names to hashes"),
        ("variants", {"fp32": "model.onnx"}, "'variants' does not name each graph's file"),
        ("rescore_margin", -1, "'variants.int8.rescore_margin' is not a number in [0, 1)"),
        ("rescore_margin", "0.2", "'variants.int8.rescore_margin' is not a number in [0, 1)"),
        ("passed", "false", "'checks.gate.variants.int8.passed' is not true or false"),
    ],
)
def test_a_damaged_manifest_is_one_line_in_load_and_inspect(
    tiny_bundle, tmp_path, key, value, problem
):
    out = Path(shutil.copytree(tiny_bundle.path, tmp_path / "bundle"))
    manifest = json.loads((out / MANIFEST).read_text())
    if key == "rescore_margin":  # int8's: a damaged one silently turned rescoring off
        manifest["variants"]["int8"][key] = value
    elif key == "passed":  # a string read as a failed gate, while inspect showed none
        manifest["checks"]["gate"]["variants"]["int8"][key] = value
    elif value is None:
        del manifest[key]
    else:
        manifest[key] = value
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(MarketpulseError) as err:
        load_bundle(out)
    assert problem in str(err.value) and "re-export" in str(err.value)
    result = CliRunner().invoke(main, ["inspect", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert problem in result.output
