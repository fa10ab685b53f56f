"""How `marketpulse evaluate` names integer labels: by --label-names, by --label-map, or,
given neither, by the model's label order, which it says on stderr and records."""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil

import duckdb
import pytest
from click.testing import CliRunner
from conftest import TINY_LABELS

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.train.data import DataSource, load_labeled

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


def _no_position(value: str, label_map: str) -> str:
    """evaluate's error for an integer label no position of the model's labels names."""
    return (
        f"Error: label value {value} in column 'label' has no name: with no --label-names, "
        f"integer labels are read as positions in the model's label order ({ORDER}); name "
        f"every value with --label-map {label_map}"
    )


def test_an_integer_past_the_model_labels_says_the_names_were_the_models(
    tiny_checkpoint, labeled_db
):
    args = ["--model", str(tiny_checkpoint), "--db", labeled_db, "--query", _case(1)]
    result = _run(*args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        _no_position("3", "1=LABEL,2=LABEL,3=LABEL")
    ]  # not --label-names: 0..3 takes four names, the model has three labels
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


# A model whose labels mix digits and words (star ratings with a catch-all), so a table's
# digits can match its labels as text.
MIXED_LABELS = ["1", "2", "unsure"]


@pytest.fixture(scope="module")
def mixed_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with its labels renamed to MIXED_LABELS."""
    out = tmp_path_factory.mktemp("mixed") / "model"
    shutil.copytree(tiny_checkpoint, out)
    config = json.loads((out / "config.json").read_text())
    config["id2label"] = dict(enumerate(MIXED_LABELS))
    config["label2id"] = {label: i for i, label in enumerate(MIXED_LABELS)}
    (out / "config.json").write_text(json.dumps(config))
    return out


def _digits(cast: str, top: str = "2") -> str:
    """neutral as 1, the rest as `top`, in a column of type `cast`."""
    return (
        f"SELECT text, CAST(CASE label WHEN 'neutral' THEN 1 ELSE {top} END AS {cast}) "
        "AS label FROM labeled"
    )


@pytest.mark.parametrize("cast", ["VARCHAR", "INTEGER"])
def test_digits_the_model_has_as_labels_are_matched_by_value(mixed_checkpoint, labeled_db, cast):
    args = ["--model", str(mixed_checkpoint), "--db", labeled_db, "--query", _digits(cast)]
    result = _run(*args, "--json")
    assert result.exit_code == 0, result.output
    assert "evaluate:" not in result.stderr  # "1" is the model's "1", not its position 1
    saved = json.loads(result.stdout)
    assert saved["integer_labels"] is None
    assert _supports(saved) == {"1": 5, "2": 5, "unsure": 0}

    # a value the model lacks is the plain unknown-label error, not a position
    result = _run(
        "--model", str(mixed_checkpoint), "--db", labeled_db, "--query", _digits(cast, "3")
    )
    assert result.exit_code == 1, result.output
    literal = "'3'" if cast == "VARCHAR" else "3"
    assert result.output.strip().splitlines() == [
        "Error: label 3 in column 'label' is not among the model's labels (1, 2, unsure); "
        "map them onto the model's with --label-map 3=LABEL, or leave those rows out with a "
        f'filtering --query, e.g. --query "SELECT ... WHERE label <> {literal}"'
    ]


def test_label_names_matched_as_text_record_no_positions(mixed_checkpoint, labeled_db):
    args = ["--model", str(mixed_checkpoint), "--db", labeled_db, "--query", _digits("VARCHAR")]
    result = _run(*args, "--label-names", ",".join(MIXED_LABELS), "--json")
    assert result.exit_code == 0, result.output
    assert "evaluate:" not in result.stderr
    saved = json.loads(result.stdout)
    assert saved["integer_labels"] is None  # "1" matched the name "1", not position 1
    assert _supports(saved) == {"1": 5, "2": 5, "unsure": 0}


def test_negative_integers_name_the_fix_that_works(tiny_checkpoint, labeled_db):
    args = ["--model", str(tiny_checkpoint), "--db", labeled_db, "--query", _case(-1)]
    result = _run(*args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [_no_position("-1", "-1=LABEL,0=LABEL,1=LABEL")]
    result = _run(*args, "--label-names", "neutral,bullish,bearish")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: label value -1 in column 'label' has no name: --label-names names the values "
        "0..2 by position (0=neutral, 1=bullish, 2=bearish); drop --label-names and name "
        "every value with --label-map -1=LABEL,0=LABEL,1=LABEL"
    ]
    # the fix named works
    result = _run(*args, "--label-map", "-1=neutral,0=bullish,1=bearish", "--json")
    assert result.exit_code == 0, result.output
    assert _supports(json.loads(result.stdout)) == {k: TRUTH.count(k) for k in TINY_LABELS}


def test_too_few_label_names_name_both_fixes_when_the_model_has_enough_labels(
    tiny_checkpoint, labeled_db
):
    args = ["--model", str(tiny_checkpoint), "--db", labeled_db, "--query", _case(0)]
    result = _run(*args, "--label-names", "neutral,bullish")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: label value 2 in column 'label' has no name: --label-names names the values "
        "0..1 by position (0=neutral, 1=bullish); pass one name per value 0..2 with "
        "--label-names, or drop --label-names and name every value with --label-map "
        "0=LABEL,1=LABEL,2=LABEL"
    ]
    # too many values for the model's labels: only --label-map can name them all
    result = _run(
        "--model",
        str(tiny_checkpoint),
        "--db",
        labeled_db,
        "--query",
        _case(1),
        "--label-names",
        "neutral,bullish,bearish",
    )
    assert result.exit_code == 1, result.output
    assert result.output.strip().endswith(
        "(0=neutral, 1=bullish, 2=bearish); drop --label-names and name every value with "
        "--label-map 1=LABEL,2=LABEL,3=LABEL"
    )


def test_train_loader_names_a_fix_for_negative_integers(labeled_db):
    """`train` shares the loader: --label-names cannot name a negative value, a shift can."""
    source = DataSource(db=labeled_db, query=_case(-1), label_names=("a", "b", "c"))
    with pytest.raises(MarketpulseError) as caught:
        load_labeled(source)
    assert str(caught.value) == (
        "label value -1 in column 'label' has no name: --label-names names the values 0..2 "
        "by position, so a negative value has none; shift the values to start at 0 in a "
        '--query, e.g. --query "SELECT text, label + 1 AS label FROM ...", or drop '
        "--label-names to name each class by its value"
    )
    shifted = DataSource(
        db=labeled_db,
        query=f"SELECT text, label + 1 AS label FROM ({_case(-1)})",
        label_names=("neutral", "bullish", "bearish"),
    )
    rows = load_labeled(shifted)
    assert sorted(rows.labels) == sorted(TRUTH)


@pytest.fixture(scope="module")
def spaced_db(tmp_path_factory) -> str:
    """ "Eval Set"("Tweet Body", "Sentiment Label"): the labeled rows under names that SQL
    must quote, labels 0..4 (3 and 4 names the tiny model lacks)."""
    path = tmp_path_factory.mktemp("spaced") / "src.duckdb"
    con = duckdb.connect(str(path))
    con.execute('CREATE TABLE "Eval Set" ("Tweet Body" VARCHAR, "Sentiment Label" INTEGER)')
    con.executemany(
        'INSERT INTO "Eval Set" VALUES (?, ?)', [(f"market post {i}", i % 5) for i in range(10)]
    )
    con.close()
    return str(path)


def _suggested_query(message: str) -> str:
    """The SQL of the first `--query SQL` in `message`, as a shell passes it on."""
    lexer = shlex.shlex(message.split("--query ", 1)[1], posix=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    return lexer.get_token().removesuffix(",")


def test_filter_fix_for_labels_the_model_lacks_quotes_the_column(tiny_checkpoint, spaced_db):
    cols = ["--text-col", "Tweet Body", "--label-col", "Sentiment Label"]
    args = ["--model", str(tiny_checkpoint), "--db", spaced_db, "--table", '"Eval Set"', *cols]
    names = ["--label-names", "bearish,bullish,neutral,mixed,other"]
    result = _run(*args, *names)
    assert result.exit_code == 1, result.output
    assert result.output.strip().endswith(
        """e.g. --query 'SELECT ... WHERE "Sentiment Label" NOT IN (3, 4)'"""
    )
    query = _suggested_query(result.output).replace("SELECT ...", 'SELECT * FROM "Eval Set"')
    args[args.index("--table") : args.index("--table") + 2] = ["--query", query]
    result = _run(*args, *names, "--json")
    assert result.exit_code == 0, result.output
    assert _supports(json.loads(result.stdout)) == {"bearish": 2, "bullish": 2, "neutral": 2}


def test_shift_fix_for_negative_integers_quotes_the_columns(labeled_db):
    spaced = f'SELECT text AS "Tweet Body", label AS "Sentiment Label" FROM ({_case(-1)}) AS t'
    source = DataSource(
        db=labeled_db,
        query=spaced,
        text_col="Tweet Body",
        label_col="Sentiment Label",
        label_names=("neutral", "bullish", "bearish"),
    )
    with pytest.raises(MarketpulseError) as caught:
        load_labeled(source)
    assert (
        """--query 'SELECT "Tweet Body", "Sentiment Label" + 1 AS "Sentiment Label" FROM ...'"""
    ) in str(caught.value)
    query = _suggested_query(str(caught.value)).replace("FROM ...", f"FROM ({spaced})")
    rows = load_labeled(dataclasses.replace(source, query=query))
    assert sorted(rows.labels) == sorted(TRUTH)


def test_label_names_and_a_label_map_that_contradict_each_other_are_refused(
    tiny_checkpoint, labeled_db
):
    args = ["--model", str(tiny_checkpoint), "--db", labeled_db, "--query", _case(0)]
    names = ["--label-names", "neutral,bullish,bearish"]
    result = _run(*args, *names, "--label-map", "0=bullish,1=neutral,2=bearish")
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        "Error: --label-names names label value 0 'neutral' but --label-map 0=bullish maps it "
        "to 'bullish'; pass only one of them"
    )
    agreeing = _run(*args, *names, "--label-map", "0=neutral", "--json")  # no contradiction
    assert agreeing.exit_code == 0, agreeing.output
