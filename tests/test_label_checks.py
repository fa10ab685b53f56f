"""Label checks that must fail fast and say the fix: labels that collide as probability
columns (train), labels the model lacks (evaluate, before inference), BOOLEAN labels,
and the counts that train and evaluate print about skipped rows and repeated texts."""

from __future__ import annotations

import csv
import shlex
import subprocess
from dataclasses import replace

import duckdb
import pytest
from click.testing import CliRunner
from conftest import train_args

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.results_schema import probability_columns
from marketpulse.train.data import DataSource, load_labeled
from marketpulse.train.dedup import Duplicates, drop_duplicates
from marketpulse.train.label_checks import require_trainable

WORDS = ["rallies", "slumps", "holds", "beats", "misses"]


def write_db(path, labels: list, sql_type: str = "VARCHAR") -> str:
    """posts(body VARCHAR, tag <sql_type>): one distinct text per label value."""
    con = duckdb.connect(str(path))
    con.execute(f"CREATE TABLE posts (body VARCHAR, tag {sql_type})")
    rows = [(f"$T{i} {WORDS[i % 5]} after quarter {i}", y) for i, y in enumerate(labels)]
    if rows:
        con.executemany("INSERT INTO posts VALUES (?, ?)", rows)
    con.close()
    return str(path)


def write_csv(path, rows: list[tuple]) -> str:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


# 1. labels that collide once sanitized into probability column names


def test_labels_differing_in_case_are_refused_naming_them_and_the_fix(tmp_path):
    labels = ["Positive", "positive", "negative"] * 4
    db = write_db(tmp_path / "posts.duckdb", labels)
    source = DataSource(db=db, table="posts", text_col="body", label_col="tag")
    with pytest.raises(MarketpulseError) as caught:
        probability_columns(sorted(set(labels)))  # the runtime's own refusal, same rule
    assert "collide once sanitized" in str(caught.value)
    with pytest.raises(MarketpulseError) as caught:
        require_trainable(drop_duplicates(load_labeled(source)), source, 3)
    message = str(caught.value)
    assert message == (
        "labels in column 'tag' collide once sanitized into probability column names "
        "('Positive' and 'positive' become p_positive), which `marketpulse score` refuses; "
        'map them to one spelling with --query, e.g. --query "SELECT body, lower(tag) AS tag '
        'FROM ...", or rename them'
    )
    # the fix the message gives works
    query = "SELECT body, lower(tag) AS tag FROM posts"
    fixed = DataSource(db=db, query=query, text_col="body", label_col="tag")
    rows = drop_duplicates(load_labeled(fixed))
    require_trainable(rows, fixed, 3)
    assert rows.label_names == ["negative", "positive"]


def test_punctuation_collisions_are_grouped_per_column(tmp_path):
    labels = ["Pos", "pos", "Neg.", "neg!", "neg?", "flat", "pos_x", "pos-y"] * 3
    source = DataSource(
        db=write_db(tmp_path / "posts.duckdb", labels),
        table="posts",
        text_col="body",
        label_col="tag",
    )
    with pytest.raises(MarketpulseError) as caught:
        require_trainable(load_labeled(source), source, 3)
    assert "('Neg.', 'neg!' and 'neg?' become p_neg_; 'Pos' and 'pos' become p_pos)" in str(
        caught.value
    )  # pos_x and pos-y stay apart: p_pos_x, p_pos_y


def test_colliding_label_names_for_integers_say_to_fix_label_names(tmp_path):
    db = write_db(tmp_path / "posts.duckdb", [0, 1, 2] * 4, "INTEGER")
    source = DataSource(
        db=db, table="posts", text_col="body", label_col="tag", label_names=("up", "Up", "flat")
    )
    with pytest.raises(MarketpulseError) as caught:
        require_trainable(load_labeled(source), source, 3)
    assert "('up' and 'Up' become p_up)" in str(caught.value)
    assert "pass --label-names whose names differ in a letter or digit" in str(caught.value)


def test_train_refuses_colliding_labels_before_training(tmp_path, tiny_checkpoint, monkeypatch):
    from marketpulse.train import trainer

    def no_training(*args, **kwargs):
        raise AssertionError("fine_tune ran")

    monkeypatch.setattr(trainer, "fine_tune", no_training)
    db = write_db(tmp_path / "posts.duckdb", ["Bullish", "bullish", "bearish"] * 5)
    out = tmp_path / "model"
    result = CliRunner().invoke(main, train_args(db, out, tiny_checkpoint))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1  # one line, no traceback
    assert lines[0].startswith("Error: labels in column 'tag' collide once sanitized")
    assert "'Bullish' and 'bullish' become p_bullish" in lines[0]
    assert "lower(tag)" in lines[0] and "or rename them" in lines[0]
    assert not out.exists()


# 2. evaluate checks the table's labels against the model's before inference


@pytest.fixture
def no_inference(monkeypatch):
    from marketpulse.train import predict

    loads = []
    real = predict.load_model
    monkeypatch.setattr(predict, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    return loads


def test_a_named_label_the_model_lacks_fails_before_the_model_loads(
    tiny_checkpoint, tmp_path, no_inference
):
    # the tiny model knows bearish, bullish, neutral; value 3 is named "mixed"
    data = write_csv(tmp_path / "valid.csv", [(f"post {i}", i % 4) for i in range(8)])
    args = ["evaluate", "--model", str(tiny_checkpoint), "--input", data, "--device", "cpu"]
    names = ["--label-names", "bearish,bullish,neutral,mixed"]
    result = CliRunner().invoke(main, [*args, *names])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: label mixed in column 'label' is not among the model's labels "
        "(bearish, bullish, neutral); map them onto the model's with --label-map mixed=LABEL, "
        'or leave those rows out with a filtering --query, e.g. --query "SELECT ... WHERE '
        'label <> 3"'
    ]
    assert no_inference == []  # no row was scored

    # both fixes the message names work
    mapped = CliRunner().invoke(main, [*args, *names, "--label-map", "mixed=neutral", "--json"])
    assert mapped.exit_code == 0, mapped.output
    filtered = CliRunner().invoke(
        main,
        [*args[:3], "--query", f"SELECT * FROM read_csv('{data}') WHERE label <> 3", *args[5:]]
        + [*names, "--json"],
    )
    assert filtered.exit_code == 0, filtered.output
    assert no_inference == [1, 1]


def test_several_missing_labels_are_named_with_one_filter(tiny_checkpoint, tmp_path, no_inference):
    data = write_csv(tmp_path / "valid.csv", [(f"post {i}", i % 5) for i in range(10)])
    names = "--label-names", "bearish,bullish,neutral,mixed,other"
    known = f"known=SELECT * FROM read_csv('{data}') WHERE label < 3"  # read after `valid`
    result = CliRunner().invoke(
        main,
        ["evaluate", "--model", str(tiny_checkpoint), "--input", data, *names, "--domain", known],
    )
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        "Error: domain 'valid': labels mixed, other in column 'label' are not among"
    )
    assert 'WHERE label NOT IN (3, 4)"' in result.output
    assert no_inference == []


# 3. evaluate's note on skipped rows reads as words


def test_evaluate_names_skipped_rows_in_words_and_omits_a_zero_note(tiny_checkpoint, tmp_path):
    rows = [(f"post {i}", i % 3) for i in range(6)]
    clean = write_csv(tmp_path / "clean.csv", rows)
    gaps = write_csv(tmp_path / "gaps.csv", [*rows, ("   ", 1), ("post 9", "")])
    args = ["evaluate", "--model", str(tiny_checkpoint), "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--input", gaps])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first == f"6 rows from file {gaps} (2 skipped: 1 empty text, 1 null label)"
    result = CliRunner().invoke(main, [*args, "--input", clean])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"6 rows from file {clean}"
    result = CliRunner().invoke(main, [*args, "--input", clean, "--domain", f"gaps={gaps}"])
    assert result.exit_code == 0, result.output
    assert "{" not in result.output
    assert f"== clean: 6 rows from file {clean}, " in result.output
    assert f"== gaps: 6 rows from file {gaps} (2 skipped: 1 empty text, 1 null label), " in (
        result.output
    )


# 4. BOOLEAN labels are the integers 0 and 1


def test_boolean_labels_are_zero_and_one(tmp_path):
    db = write_db(tmp_path / "posts.duckdb", [False, True, True] * 3 + [None], "BOOLEAN")
    source = DataSource(db=db, table="posts", text_col="body", label_col="tag")
    plain = load_labeled(source)
    assert plain.label_names == ["0", "1"] and plain.integer_labels
    assert plain.skipped["null_label"] == 1
    named = load_labeled(replace(source, label_names=("neg", "pos")))
    assert named.label_names == ["neg", "pos"]
    assert named.counts == {"neg": 3, "pos": 6}
    with duckdb.connect(db, read_only=True) as con:
        truth = con.execute("SELECT body, tag FROM posts").fetchall()
    by_text = dict(zip(named.texts, named.labels, strict=True))
    assert all(by_text[t] == ("pos" if y else "neg") for t, y in truth if y is not None)
    # the filter train suggests for a thin class is valid SQL on a BOOLEAN column
    one_false = (
        "SELECT * FROM posts WHERE tag UNION ALL (SELECT * FROM posts WHERE NOT tag LIMIT 1)"
    )
    thin = replace(source, table=None, query=one_false, label_names=("neg", "pos"))
    with pytest.raises(MarketpulseError, match="WHERE tag <> false") as caught:
        require_trainable(load_labeled(thin), thin, 3)
    where = str(caught.value).split('--query "')[1].rstrip('"').split(" WHERE ")[1]
    with duckdb.connect(db, read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM posts WHERE {where}").fetchone() == (6,)


def test_train_names_boolean_labels_with_label_names(tmp_path, tiny_checkpoint):
    from marketpulse.train.trainer import TrainConfig, prepare

    db = write_db(tmp_path / "posts.duckdb", [False, True] * 6, "BOOLEAN")
    source = DataSource(
        db=db, table="posts", text_col="body", label_col="tag", label_names=("neg", "pos")
    )
    cfg = TrainConfig(
        source=source, out=tmp_path / "m", base_model=str(tiny_checkpoint), device="cpu"
    )
    prepared = prepare(cfg)
    assert prepared.fit.labels == ["neg", "pos"]


# 5. the duplicate log line counts texts and rows apart


def test_a_majority_text_says_one_text_and_its_rows():
    rows = [("Oil slides", "bearish")] * 2 + [("Oil slides", "neutral"), ("Gold up", "bullish")]
    read = load_labeled(DataSource(query=f"SELECT * FROM (VALUES {_values(rows)}) t(text, label)"))
    done = drop_duplicates(read)
    assert done.skipped["conflicting_label"] == 2
    assert done.duplicates.log_line() == (
        "1 text had conflicting labels (kept with its majority label; 2 rows skipped)"
    )


def _values(rows) -> str:
    return ", ".join(f"('{t}', '{y}')" for t, y in rows)


@pytest.mark.parametrize(
    ("duplicates", "line"),
    [
        (Duplicates(), None),
        (
            Duplicates(repeated=1, repeated_rows=1),
            "1 duplicate text kept once (1 row skipped); no text had conflicting labels",
        ),
        (
            Duplicates(repeated=12, repeated_rows=15),
            "12 duplicate texts kept once (15 rows skipped); no text had conflicting labels",
        ),
        (
            Duplicates(conflicting=1, conflicting_rows=2),
            "1 text had conflicting labels (dropped: no majority label; 2 rows skipped)",
        ),
        (
            Duplicates(conflicting=2, majority_kept=2, conflicting_rows=5),
            "2 texts had conflicting labels (kept with their majority label; 5 rows skipped)",
        ),
        (
            Duplicates(
                repeated=1, conflicting=3, majority_kept=1, repeated_rows=2, conflicting_rows=8
            ),
            "1 duplicate text kept once (2 rows skipped); 3 texts had conflicting labels "
            "(1 kept with its majority label, 2 dropped; 8 rows skipped)",
        ),
    ],
)
def test_duplicate_log_line_counts_texts_and_rows(duplicates, line):
    assert duplicates.log_line() == line


@pytest.mark.parametrize("names", [None, ("bearish", "bullish")])
def test_a_source_without_usable_rows_is_one_line_for_train_and_evaluate(
    tmp_path, names, tiny_bundle
):
    """With label names and no rows, naming the labels recursed until RecursionError."""
    db = write_db(tmp_path / "posts.duckdb", [])
    source = DataSource(db=db, table="posts", text_col="body", label_col="tag", label_names=names)
    with pytest.raises(MarketpulseError, match="no usable rows in table posts"):
        require_trainable(drop_duplicates(load_labeled(source)), source, 3)
    args = ["evaluate", "--model", str(tiny_bundle.path), "--db", db, "--table", "posts"]
    result = CliRunner().invoke(main, [*args, "--text-col", "body", "--label-col", "tag"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: no usable rows in table posts")
    assert len(result.output.strip().splitlines()) == 1


# 6. the --query a fix suggests runs as given, whatever the column names


def suggested_query(message: str) -> str:
    """The SQL of the first `--query SQL` that `message` suggests, as a shell passes it on
    (the prose after it may end the word with a comma)."""
    lexer = shlex.shlex(message.split("--query ", 1)[1], posix=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    return lexer.get_token().removesuffix(",")


def spaced_db(path, labels: list, sql_type: str = "VARCHAR") -> str:
    """ext."Train Set"("Tweet Body" VARCHAR, "Sentiment Label" <sql_type>)."""
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA ext")
    con.execute(
        f'CREATE TABLE ext."Train Set" ("Tweet Body" VARCHAR, "Sentiment Label" {sql_type})'
    )
    rows = [(f"$T{i} {WORDS[i % 5]} after quarter {i}", y) for i, y in enumerate(labels)]
    con.executemany('INSERT INTO ext."Train Set" VALUES (?, ?)', rows)
    con.close()
    return str(path)


SPACED = [
    "--table",
    'ext."Train Set"',
    "--text-col",
    "Tweet Body",
    "--label-col",
    "Sentiment Label",
]


def test_collision_fix_quotes_columns_and_runs_as_given(tmp_path, tiny_checkpoint, monkeypatch):
    from marketpulse.train import trainer

    class Trained(Exception):
        """fine_tune was reached: the rows passed every label check."""

    def no_training(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(trainer, "fine_tune", no_training)
    db = spaced_db(tmp_path / "posts.duckdb", ["Bullish", "bullish", " BEARISH ", "bearish"] * 4)
    args = train_args(db, tmp_path / "model", tiny_checkpoint)
    args[args.index("--table") : args.index("--out")] = SPACED
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    message = result.output.strip()
    assert "collide once sanitized" in message
    assert (
        """--query 'SELECT "Tweet Body", lower("Sentiment Label") AS "Sentiment Label" FROM """
        """...', or rename them"""
    ) in message
    query = suggested_query(message).replace("FROM ...", 'FROM ext."Train Set"')
    assert query == (
        'SELECT "Tweet Body", lower("Sentiment Label") AS "Sentiment Label" FROM ext."Train Set"'
    )
    # as given (the table filled in), through the CLI: past the label checks to training
    args[args.index("--table") : args.index("--text-col")] = ["--query", query]
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, Trained), result.output


def test_filter_fix_quotes_columns_and_escapes_for_the_shell(tmp_path):
    labels = ["big"] * 10 + ["it's $5 `rare`"]
    db = spaced_db(tmp_path / "posts.duckdb", labels)
    source = DataSource(
        db=db, table='ext."Train Set"', text_col="Tweet Body", label_col="Sentiment Label"
    )
    with pytest.raises(MarketpulseError) as caught:
        require_trainable(load_labeled(source), source, 3)
    message = str(caught.value)
    assert (
        """--query "SELECT ... WHERE \\"Sentiment Label\\" <> 'it''s \\$5 \\`rare\\`'\""""
    ) in message
    word = message.split("e.g. ", 1)[1]  # what a shell makes of it, not shlex's approximation
    argv = subprocess.run(
        ["sh", "-c", f'printf "%s\\n" {word}'], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert argv == ["--query", """SELECT ... WHERE "Sentiment Label" <> 'it''s $5 `rare`'"""]
    query = argv[1].replace("SELECT ...", 'SELECT * FROM ext."Train Set"')
    filtered = load_labeled(replace(source, table=None, query=query))
    assert filtered.label_names == ["big"] and len(filtered.texts) == 10


# 7. labels that all start with LABEL_: a checkpoint reads them as no names


def test_placeholder_labels_are_refused_before_training(tmp_path, tiny_checkpoint, monkeypatch):
    from marketpulse.train import trainer

    class Trained(Exception):
        """fine_tune was reached: the rows passed every label check."""

    def no_training(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(trainer, "fine_tune", no_training)
    db = write_db(tmp_path / "posts.duckdb", ["LABEL_0", "LABEL_1", "LABEL_2"] * 4)
    out = tmp_path / "model"
    result = CliRunner().invoke(main, train_args(db, out, tiny_checkpoint))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines == [
        "Error: labels in column 'tag' all start with LABEL_ ('LABEL_0', 'LABEL_1' and "
        "'LABEL_2'), which a checkpoint reads as transformers' placeholder names (no names), "
        "so the trained model could not be saved; name the classes with --query, e.g. "
        "--query \"SELECT body, CASE tag WHEN 'LABEL_0' THEN 'class_0' WHEN 'LABEL_1' THEN "
        "'class_1' WHEN 'LABEL_2' THEN 'class_2' END AS tag FROM ...\", with your names for them"
    ]
    assert not out.exists()
    # the query as given (the table filled in) passes every label check
    query = suggested_query(lines[0]).replace("FROM ...", "FROM posts")
    args = train_args(db, out, tiny_checkpoint)
    args[args.index("--table") : args.index("--text-col")] = ["--query", query]
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, Trained), result.output


def test_placeholder_label_names_for_integers_say_to_fix_label_names(tmp_path):
    db = write_db(tmp_path / "posts.duckdb", [0, 1] * 4, "INTEGER")
    source = DataSource(
        db=db, table="posts", text_col="body", label_col="tag", label_names=("LABEL_0", "LABEL_1")
    )
    with pytest.raises(MarketpulseError) as caught:
        require_trainable(load_labeled(source), source, 3)
    assert str(caught.value).endswith(
        "pass --label-names with the classes' names, e.g. --label-names class_0,class_1"
    )


@pytest.mark.parametrize(
    ("labels", "refused"),
    [
        (["LABEL_0", "LABEL_1"], True),
        (["LABEL_buy", "LABEL_sell"], True),
        (["LABEL_0", "neutral"], False),  # one real name: the checkpoint keeps them all
        (["label_0", "label_1"], False),  # the placeholders are upper-case
        (["bearish", "bullish"], False),
    ],
)
def test_train_refuses_placeholder_labels_exactly_when_a_checkpoint_would(
    tmp_path, labels, refused
):
    from marketpulse.checkpoint import _read_labels

    config = {"id2label": {str(i): name for i, name in enumerate(labels)}}  # as config.json
    if refused:
        with pytest.raises(MarketpulseError, match="has no label names"):
            _read_labels(config, tmp_path / "config.json")
    else:
        assert _read_labels(config, tmp_path / "config.json") == tuple(labels)
    source = DataSource(
        db=write_db(tmp_path / "posts.duckdb", labels * 3),
        table="posts",
        text_col="body",
        label_col="tag",
    )
    if refused:
        with pytest.raises(MarketpulseError, match="all start with LABEL_"):
            require_trainable(load_labeled(source), source, 3)
    else:
        require_trainable(load_labeled(source), source, 3)


# 8. labels that differ in more than case: column names keep only a-z, 0-9 and _


def test_non_latin_labels_are_told_to_take_ascii_names_and_the_query_works(tmp_path):
    db = write_db(tmp_path / "posts.duckdb", ["看跌", "看涨", "中性"] * 4)
    source = DataSource(db=db, table="posts", text_col="body", label_col="tag")
    with pytest.raises(MarketpulseError) as caught:
        require_trainable(drop_duplicates(load_labeled(source)), source, 3)
    message = str(caught.value)
    assert message == (
        "labels in column 'tag' collide once sanitized into probability column names "
        "('中性', '看涨' and '看跌' become p___), which `marketpulse score` refuses; column "
        "names keep only a-z, 0-9 and _, so give them ASCII names with --query, e.g. "
        "--query \"SELECT body, CASE tag WHEN '中性' THEN 'class_0' WHEN '看涨' THEN 'class_1' "
        "WHEN '看跌' THEN 'class_2' END AS tag FROM ...\", or rename them"
    )
    fixed = DataSource(
        db=db,
        query=suggested_query(message).replace("FROM ...", "FROM posts"),
        text_col="body",
        label_col="tag",
    )
    rows = drop_duplicates(load_labeled(fixed))
    require_trainable(rows, fixed, 3)
    assert rows.counts == {"class_0": 4, "class_1": 4, "class_2": 4}


def test_non_latin_label_names_for_integers_say_to_pass_ascii_names(tmp_path):
    db = write_db(tmp_path / "posts.duckdb", [0, 1, 2] * 4, "INTEGER")
    source = DataSource(
        db=db, table="posts", text_col="body", label_col="tag", label_names=("看跌", "看涨", "中性")
    )
    with pytest.raises(MarketpulseError) as caught:
        require_trainable(load_labeled(source), source, 3)
    assert str(caught.value).endswith(
        "column names keep only a-z, 0-9 and _, so pass --label-names with ASCII names, "
        "e.g. --label-names class_0,class_1,class_2"
    )


def test_one_query_fixes_punctuation_and_case_collisions_together(tmp_path):
    labels = ["Pos", "pos", "Neg.", "neg!", "flat"] * 3
    db = write_db(tmp_path / "posts.duckdb", labels)
    source = DataSource(db=db, table="posts", text_col="body", label_col="tag")
    with pytest.raises(MarketpulseError) as caught:
        require_trainable(load_labeled(source), source, 3)
    query = suggested_query(str(caught.value))
    assert query == (
        "SELECT body, CASE tag WHEN 'Neg.' THEN 'class_0' WHEN 'neg!' THEN 'class_1' "
        "ELSE lower(tag) END AS tag FROM ..."
    )
    fixed = DataSource(
        db=db, query=query.replace("FROM ...", "FROM posts"), text_col="body", label_col="tag"
    )
    rows = load_labeled(fixed)
    require_trainable(rows, fixed, 3)
    assert rows.counts == {"class_0": 3, "class_1": 3, "flat": 3, "pos": 6}
