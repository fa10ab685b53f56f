"""The Makefile's job targets pass each job variable to the CLI as one argument, exactly
as given: a quoted table name, a column with a space, a quote inside a name. An empty
optional variable (INPUT, BY) still means its flag is not given."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAMP = ".venv/.installed"  # `-o` it: no target may run setup (pip) from a test

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

ODD = {
    "DB": "/tmp/my data/t.duckdb",
    "TABLE": 'ext."Market Posts"',
    "ID_COL": "post id",
    "TEXT_COL": "it's text",
    "LABEL_COL": "Sentiment Label",
    "TIME_COL": "a,b  c",  # a comma: make's argument separator; two spaces kept
    "BY": '"Brand Name"',
    "GRAIN": "week",
    "DEVICE": "cpu",
    "MODEL": "/tmp/my model",
    "BUNDLE": "/tmp/my bundle",
}


def make(*args: str, **variables: str) -> str:
    cmd = ["make", "-s", "--no-print-directory", "-o", STAMP, *args]
    cmd += [f"{k}={v}" for k, v in variables.items()]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def dry_run(target: str, **variables: str) -> list[str]:
    """The argv of the one command `make -n TARGET` prints, as a shell splits it."""
    printed = make("-n", target, **variables).replace("\\\n", "")  # the shell's line joins
    lines = printed.strip().splitlines()
    assert len(lines) == 1, printed
    return shlex.split(lines[0])


def expected(target: str, v: dict[str, str]) -> list[str]:
    mp = ".venv/bin/marketpulse"
    if target == "score":
        return [mp, "score", "--db", v["DB"], "--table", v["TABLE"], "--id-col", v["ID_COL"]] + [
            "--text-col", v["TEXT_COL"], "--bundle", v["BUNDLE"], "--device", v["DEVICE"]
        ]  # fmt: skip
    if target == "trends":
        by = ["--by", v["BY"]] if v.get("BY") else []
        return [mp, "trends", "--db", v["DB"], "--source", v["TABLE"], "--id-col", v["ID_COL"]] + [
            "--time-col", v["TIME_COL"], *by, "--grain", v["GRAIN"]
        ]  # fmt: skip
    if target == "train":
        source = (
            ["--input", v["INPUT"]] if v.get("INPUT") else ["--db", v["DB"], "--table", v["TABLE"]]
        )
        return [mp, "train", *source, "--text-col", v["TEXT_COL"]] + [
            "--label-col", v["LABEL_COL"], "--out", v["MODEL"]
        ]  # fmt: skip
    assert target == "export"
    return [mp, "export", "--model", v["MODEL"], "--out", v["BUNDLE"]]


@pytest.mark.parametrize("target", ["score", "trends", "train", "export"])
def test_dry_run_prints_each_value_as_one_argument(target):
    assert dry_run(target, **ODD) == expected(target, ODD)


def test_empty_optional_variables_leave_their_flags_out():
    assert "--by" not in dry_run("trends", **{**ODD, "BY": ""})
    assert dry_run("train", **{**ODD, "INPUT": ""}) == expected("train", ODD)  # --db/--table
    with_input = {**ODD, "INPUT": "/tmp/my posts.csv"}
    assert dry_run("train", **with_input) == expected("train", with_input)


def test_args_variables_are_still_split_as_shell_words():
    argv = dry_run("score", **ODD, SCORE_ARGS="--limit 5 --where \"lang = 'en'\"")
    assert argv[-4:] == ["--limit", "5", "--where", "lang = 'en'"]


def test_the_cli_receives_the_values_run_for_real_through_nightly(tmp_path):
    """What the shell hands the CLI, through nightly's recursive make (score, then trends)."""
    printer = tmp_path / "argv.py"
    printer.write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    out = make("nightly", **ODD, MP=f"{shlex.quote(sys.executable)} {shlex.quote(str(printer))}")
    score, trends = (json.loads(line) for line in out.splitlines())
    assert score == expected("score", ODD)[1:]
    assert trends == expected("trends", ODD)[1:]
