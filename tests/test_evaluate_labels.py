"""How `marketpulse evaluate` names integer labels: by --label-names, by --label-map, or,
given neither, by the model's label order, which it says on stderr and records."""

from __future__ import annotations

import json

import duckdb
import pytest
from click.testing import CliRunner
from conftest import TINY_LABELS

from marketpulse.cli import main

pytest.importorskip("torch")

ORDER = "0=bearish, 1=bullish, 2=neutral"  # the tiny model's label order
NOTE = f"evaluate: integer labels read as the model's label order {ORDER}; "
TRUTH = ["neutral"] * 5 + ["bullish"] * 3 + ["bearish"] * 2  # the labeled table's truth


@pytest.fixture(scope="module")
def labeled_db(tmp_path_factory) -> str:
    """labeled(text, label) with the label names the README's CASE turns into integers."""
    path = tmp_path_factory.mktemp("labels") / "src.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE labeled (text VARCHAR, label VARCHAR)")
    con.executemany(
        "INSERT INTO labeled VALUES (?, ?)",
        [(f"market post number {i}", y) for i, y in enumerate(TRUTH)],
    )
    con.close()
    return str(path)


def _case(first: int) -> str:
    """neutral, bullish, else bearish as `first`, `first` + 1, `first` + 2: not the model's
    order (bearish, bullish, neutral)."""
    return (
        f"SELECT text, CASE label WHEN 'neutral' THEN {first} WHEN 'bullish' THEN {first + 1} "
        f"ELSE {first + 2} END AS label FROM labeled"
    )


def _run(*args):
    return CliRunner().invoke(main, ["evaluate", "--device", "cpu", *args])


def _supports(result: dict) -> dict[str, int]:
    return {k: v["support"] for k, v in result["metrics"]["per_class"].items()}


def test_integers_read_by_the_model_order_say_so_and_are_recorded(
    tiny_checkpoint, labeled_db, tmp_path
):
    out = tmp_path / "eval.json"
    args = ["--model", str(tiny_checkpoint), "--db", labeled_db, "--query", _case(0)]
    result = _run(*args, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines().count(NOTE + "pass --label-names to name them") == 1
    saved = json.loads(out.read_text())
    assert saved == json.loads(result.stdout)  # the note stays off stdout
    assert saved["integer_labels"] == {
        "named_by": "the model's label order",
        "names": {"0": "bearish", "1": "bullish", "2": "neutral"},
    }
    # 0 (neutral in the table) is read as bearish: the note is the only warning
    assert _supports(saved) == {"bearish": 5, "bullish": 3, "neutral": 2}

    # both fixes name the integers as the table meant them, with no note
    fixes = [
        ["--label-names", "neutral,bullish,bearish"],
        ["--label-map", "0=neutral,1=bullish,2=bearish"],
    ]
    named = []
    for fix in fixes:
        result = _run(*args, *fix, "--json")
        assert result.exit_code == 0, result.output
        assert "evaluate:" not in result.stderr
        named.append(json.loads(result.stdout))
        assert _supports(named[-1]) == {k: TRUTH.count(k) for k in TINY_LABELS}
    assert named[0]["integer_labels"] == {
        "named_by": "--label-names",
        "names": {"0": "neutral", "1": "bullish", "2": "bearish"},
    }
    assert named[1]["integer_labels"] is None  # --label-map named them by value
    assert named[0]["metrics"] == named[1]["metrics"]
    assert named[0]["data"]["fingerprint"] == named[1]["data"]["fingerprint"]


def test_the_implicit_order_matches_the_same_names_given(tiny_checkpoint, labeled_db):
    args = ["--model", str(tiny_checkpoint), "--db", labeled_db, "--query", _case(0), "--json"]
    implicit = json.loads(_run(*args).stdout)
    explicit = json.loads(_run(*args, "--label-names", ",".join(TINY_LABELS)).stdout)
    assert implicit["metrics"] == explicit["metrics"]
    assert implicit["data"]["fingerprint"] == explicit["data"]["fingerprint"]
    assert implicit["integer_labels"]["names"] == explicit["integer_labels"]["names"]


def test_string_labels_print_no_note(tiny_checkpoint, labeled_db):
    query = "SELECT text, label FROM labeled"
    result = _run("--model", str(tiny_checkpoint), "--db", labeled_db, "--query", query, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("evaluate:") == 0
    assert json.loads(result.stdout)["integer_labels"] is None


def test_an_integer_past_the_model_labels_says_the_names_were_the_models(
    tiny_checkpoint, labeled_db
):
    args = ["--model", str(tiny_checkpoint), "--db", labeled_db, "--query", _case(1)]
    result = _run(*args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: label value 3 in column 'label' has no name: no --label-names was given, so "
        f"integer labels are read as the model's label order ({ORDER}); map the values onto "
        "the model's labels with --label-map 1=LABEL,2=LABEL,3=LABEL, or pass --label-names "
        "with one name per value 0..3"
    ]
    assert "names given" not in result.output  # the user gave none
    result = _run(*args, "--label-map", "1=neutral,2=bullish,3=bearish", "--json")
    assert result.exit_code == 0, result.output
    assert _supports(json.loads(result.stdout)) == {k: TRUTH.count(k) for k in TINY_LABELS}


def test_each_domain_says_how_its_integers_were_read(tiny_checkpoint, labeled_db):
    base = ["--model", str(tiny_checkpoint), "--db", labeled_db]
    strings = "SELECT text, label FROM labeled"
    args = [*base, "--query", strings, "--name", "words", "--domain", f"codes={_case(0)}"]
    result = _run(*args, "--json")
    assert result.exit_code == 0, result.output
    note = (
        f"evaluate: domain 'codes': integer labels read as the model's label order {ORDER}; "
        "pass --label-map codes:0=LABEL,... to name them"
    )
    assert [x for x in result.stderr.splitlines() if x.startswith("evaluate:")] == [note]
    words, codes = json.loads(result.stdout)["domains"]
    assert words["integer_labels"] is None
    assert codes["integer_labels"]["named_by"] == "the model's label order"

    # a map for the domain names its integers; a map naming none of them leaves the note
    mapped = _run(*args, "--label-map", "codes:0=neutral,1=bullish,2=bearish", "--json")
    assert mapped.exit_code == 0, mapped.output
    assert "evaluate:" not in mapped.stderr
    codes = json.loads(mapped.stdout)["domains"][1]
    assert _supports(codes) == {k: TRUTH.count(k) for k in TINY_LABELS}
    shared = _run(*args, "--label-map", "up=bullish", "--json")
    assert shared.exit_code == 0, shared.output
    assert note in shared.stderr.splitlines()

    # a --domain takes no --label-names, so its error names only --label-map
    result = _run(*base, "--query", strings, "--domain", f"codes={_case(1)}")
    assert result.exit_code == 1, result.output
    message = result.output.strip()
    assert message.startswith("Error: domain 'codes': label value 3 in column 'label' has no name")
    assert message.endswith("--label-map codes:1=LABEL,2=LABEL,3=LABEL")


def test_a_primary_source_among_domains_is_named_in_its_note(tiny_checkpoint, labeled_db):
    args = ["--model", str(tiny_checkpoint), "--db", labeled_db, "--query", _case(0)]
    result = _run(*args, "--name", "codes", "--domain", "words=SELECT text, label FROM labeled")
    assert result.exit_code == 0, result.output
    assert (
        f"evaluate: domain 'codes': integer labels read as the model's label order {ORDER}; "
        "pass --label-names to name them"
    ) in result.stderr.splitlines()
