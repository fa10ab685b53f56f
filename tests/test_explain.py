"""`marketpulse explain`: occlusion weights on the tiny bundle, faithfulness, the table."""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner
from test_runtime_support import spread_bundle

from marketpulse.cli import main
from marketpulse.export.checks import MARKET_SENTENCES
from marketpulse.inference.explain import explain, faithfulness, split_words
from marketpulse.inference.predictor import Predictor


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(bundle):
    return Predictor(bundle, variant="fp32", device="cpu")


def test_each_weight_is_the_probability_lost_without_that_word(predictor):
    text = "Apple shares jump 5% after earnings beat estimates"
    (e,) = explain(predictor, [text])
    assert [w.text for w in e.words] == text.split()
    assert [w.position for w in e.words] == list(range(len(e.words)))
    probs = predictor.predict_proba([text, "Apple shares 5% after earnings beat estimates"])
    label = predictor.labels.index(e.label)
    assert e.label == predictor.labels[int(probs[0].argmax())]
    assert e.words[2].weight == pytest.approx(probs[0, label] - probs[1, label], abs=1e-5)


def test_deleting_top_words_moves_the_label_more_than_random_words(predictor):
    texts = MARKET_SENTENCES * 4  # the random draw differs per copy
    f = faithfulness(predictor, explain(predictor, texts), k=2, seed=0)
    print(f.summary())
    assert f.rows == len(texts)
    assert f.gap > 0, f


def test_split_words_keeps_offsets():
    assert split_words("  a bb\tccc ") == [(2, 3), (4, 6), (7, 10)]


def test_explain_text_prints_label_and_masked_top_words(bundle):
    pytest.importorskip("presidio_analyzer")
    result = CliRunner().invoke(
        main,
        ["explain", "--bundle", str(bundle.path), "--text", "Ask dana@example.com why $TSLA fell"],
    )
    assert result.exit_code == 0, result.output
    assert "top words:" in result.output
    assert "<EMAIL>" in result.output and "dana@example.com" not in result.output


def test_explain_text_skips_a_blank_text_as_score_does(bundle):
    result = CliRunner().invoke(
        main, ["explain", "--bundle", str(bundle.path), "--text", "   ", "--text", "oil jumps"]
    )
    assert result.exit_code == 0, result.output
    assert "'   ': blank text, skipped" in result.output
    assert result.output.count("top words:") == 1  # the other text only


def test_explain_rows_writes_one_row_per_word_with_personal_data_masked(bundle, tmp_path):
    pytest.importorskip("presidio_analyzer")
    db = tmp_path / "m.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE posts (id BIGINT, text VARCHAR, src VARCHAR)")
    con.execute(
        "INSERT INTO posts VALUES (1, 'Oil slides on weak demand', 'a'), "
        "(2, 'Call +1 415 555 0132 for the Nvidia note', 'a'), (3, NULL, 'a'), "
        "(4, 'Gold steady near record', 'b')"
    )
    # blank as `score` judges it (Python's str.strip), though DuckDB's trim keeps them
    con.executemany("INSERT INTO posts VALUES (?, ?, 'a')", [(5, "\t\n"), (6, "\u3000\xa0")])
    con.close()
    args = ["explain", "--bundle", str(bundle.path), "--db", str(db), "--table", "posts"]
    args += ["--id-col", "id", "--text-col", "text", "--where", "src = 'a'"]
    for _ in range(2):  # a rerun replaces, never duplicates
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert "explained 2 rows" in result.output
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT id, word, position, model_version FROM explanations ORDER BY id, position"
    ).fetchall()
    con.close()
    assert [(r[0], r[1]) for r in rows if r[0] == "1"] == [  # ids as text (any id type)
        ("1", "Oil"),
        ("1", "slides"),
        ("1", "on"),
        ("1", "weak"),
        ("1", "demand"),
    ]
    assert [r[1] for r in rows if r[0] == "2"] == [
        "Call",
        "<PHONE>",
        "<PHONE>",
        "<PHONE>",
        "<PHONE>",
        "for",
        "the",
        "Nvidia",
        "note",
    ]
    assert {r[3] for r in rows} == {bundle.version}
    assert "555" not in result.output


@pytest.mark.parametrize(
    "extra",
    [[], ["--text", "x", "--db", "m.duckdb"], ["--db", "m.duckdb", "--table", "t"]],
)
def test_bad_flag_combinations_are_usage_errors(bundle, extra):
    result = CliRunner().invoke(main, ["explain", "--bundle", str(bundle.path), *extra])
    assert result.exit_code == 2, result.output


def test_words_past_the_tokenizer_cut_are_not_scored_and_weigh_zero(predictor, monkeypatch):
    # 45 one-token words fill [CLS] + 45 of the bundle's 48 tokens; "zxqvbrt" (5 word
    # pieces) then straddles the cut, and the 20 words after it are cut off entirely.
    fill = ["shares", "rise", "after", "strong", "earnings", "oil", "falls", "on", "weak"]
    words = (fill * 5) + ["zxqvbrt"] + (fill * 3)[:20]
    text = " ".join(words)
    max_length = predictor.bundle.max_length
    assert max_length == 48

    # Word j reaches the model when the words before it leave room for one of its tokens.
    def seen(j):
        return predictor.encoder.encode([" ".join(words[:j])]).lengths[0] < max_length

    cut = sum(seen(j) for j in range(len(words)))
    assert cut == 46  # the straddling word is seen, the 20 after it are not
    scored = []
    real = predictor.predict_proba

    def counting(texts, *args, **kwargs):
        scored.extend(texts)
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(predictor, "predict_proba", counting)
    (e,) = explain(predictor, [text])
    occluded = [" ".join(words[:j] + words[j + 1 :]) for j in range(cut)]
    assert scored == [text, *occluded]  # every seen word, the straddling one too, once
    assert len(scored) < 1 + len(words)
    assert e.occluded == cut
    assert [w.weight for w in e.words[cut:]] == [0.0] * (len(words) - cut)
    assert any(w.weight != 0.0 for w in e.words[:cut])
    assert [(w.start, w.end) for w in e.words] == split_words(text)


def test_a_predictor_without_an_encoder_counts_every_word_as_seen():
    class Fake:  # "long" in proportion to the length: 0.8 for the full text
        labels = ["long", "short"]
        rows = 0

        def predict_proba(self, texts):
            Fake.rows += len(texts)
            p = np.array([min(len(t) / 10, 1.0) for t in texts], np.float32)
            return np.stack([p, 1 - p], axis=1)

    (e,) = explain(Fake(), ["a bb ccc"], max_words=2)
    assert Fake.rows == 1 + 2
    assert e.occluded == 2
    assert [w.weight for w in e.words] == pytest.approx([0.2, 0.3, 0.0])


def _explain_rows(bundle, db, table, **kw):
    from marketpulse.runtime.explanations import ExplainConfig, explain_table

    cfg = ExplainConfig(db=db, table=table, id_col="id", text_col="text", bundle=bundle.path, **kw)
    return explain_table(cfg)


def _rows(db, sql):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_tables_with_the_same_ids_or_other_id_types_keep_their_own_explanations(bundle, tmp_path):
    """A rerun replaces (source, id, model version): explaining `UPPER` leaves `o`'s rows
    for the same ids alone, and a UUID-id table explained after a BIGINT one fits."""
    pytest.importorskip("presidio_analyzer")
    db = tmp_path / "m.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE o AS SELECT range AS id, 'oil slides ' || range AS text FROM range(3)")  # fmt: skip
        con.execute("CREATE TABLE UPPER AS SELECT range AS id, 'gold jumps on demand' AS text FROM range(3)")  # fmt: skip
        con.execute("CREATE TABLE u AS SELECT uuid() AS id, 'rates rise' AS text FROM range(2)")
    assert _explain_rows(bundle, db, "o").rows == 3
    assert _explain_rows(bundle, db, "UPPER").rows == 3
    assert _explain_rows(bundle, db, "main.upper").rows == 3  # the same table: replaced
    assert _explain_rows(bundle, db, "u").rows == 2
    counts = _rows(db, "SELECT source, count(DISTINCT id), count(*) FROM explanations GROUP BY ALL ORDER BY 1")  # fmt: skip
    assert counts == [("main.upper", 3, 12), ("o", 3, 9), ("u", 2, 4)]
    words = _rows(db, "SELECT word FROM explanations WHERE source = 'o' AND id = '1' ORDER BY position")  # fmt: skip
    assert words == [("oil",), ("slides",), ("1",)]
    # joined back to its table by the documented cast
    joined = _rows(db, "SELECT count(*) FROM explanations e JOIN u ON e.source = 'u' AND e.id = CAST(u.id AS VARCHAR)")  # fmt: skip
    assert joined == [(4,)]


def test_an_explanations_table_from_before_is_migrated_not_refused(bundle, tmp_path):
    pytest.importorskip("presidio_analyzer")
    db = tmp_path / "m.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE posts AS SELECT range AS id, 'oil slides' AS text FROM range(2)")
        con.execute("CREATE TABLE explanations (id BIGINT NOT NULL, model_version VARCHAR NOT NULL, label VARCHAR, word VARCHAR, position INTEGER, weight DOUBLE, explained_at TIMESTAMP)")  # fmt: skip
        con.execute("INSERT INTO explanations VALUES (0, 'old', 'neutral', 'oil', 0, 0.5, now())")
    stats = _explain_rows(bundle, db, "posts")
    assert (stats.rows, stats.words) == (2, 4)
    rows = _rows(db, "SELECT id, model_version, source, word FROM explanations ORDER BY model_version = 'old' DESC, id, position")  # fmt: skip
    assert rows == [
        ("0", "old", None, "oil"),  # kept, its source unknown
        ("0", bundle.version, "posts", "oil"),
        ("0", bundle.version, "posts", "slides"),
        ("1", bundle.version, "posts", "oil"),
        ("1", bundle.version, "posts", "slides"),
    ]


def test_only_the_words_weighed_are_stored(bundle, tmp_path):
    """A text far longer than the model sees: only its occluded words get rows."""
    pytest.importorskip("presidio_analyzer")
    db = tmp_path / "m.duckdb"
    long_text = " ".join(["shares", "rise", "after", "earnings"] * 500)  # 2,000 words
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE posts (id INTEGER, text VARCHAR)")
        con.execute("INSERT INTO posts VALUES (1, ?), (2, 'oil slides')", [long_text])
    stats = _explain_rows(bundle, db, "posts")
    (e,) = explain(Predictor(bundle, device="cpu"), [long_text])
    assert e.occluded < 48  # the bundle's max length cuts it
    assert stats.words == e.occluded + 2
    assert _rows(
        db, "SELECT id, count(*), max(position) FROM explanations GROUP BY ALL ORDER BY 1"
    ) == [  # fmt: skip
        ("1", e.occluded, e.occluded - 1),
        ("2", 2, 1),
    ]
    assert "(2 rows" not in stats.summary("m.duckdb")
    assert f"explained 2 rows ({e.occluded + 2:,} words weighed" in stats.summary("m.duckdb")


def test_a_view_that_fails_when_read_is_one_line_and_nothing_is_written(bundle, tmp_path):
    from marketpulse.errors import MarketpulseError

    pytest.importorskip("presidio_analyzer")
    db = tmp_path / "m.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE posts AS SELECT range AS id, CASE WHEN range = 3 THEN 'abc' ELSE range::VARCHAR END AS text FROM range(10)")  # fmt: skip
        con.execute("CREATE VIEW badv AS SELECT id, CAST(CAST(text AS INTEGER) AS VARCHAR) AS text FROM posts")  # fmt: skip
    with pytest.raises(MarketpulseError) as err:
        _explain_rows(bundle, db, "badv")
    assert str(err.value).startswith("reading the rows of 'badv' failed (Conversion Error: ")
    assert "fix the table or view" in str(err.value) and "\n" not in str(err.value)
    assert _rows(db, "SELECT table_name FROM information_schema.tables ORDER BY 1") == [
        ("badv",),
        ("posts",),
    ]


def test_a_missing_results_db_is_refused_not_ignored(bundle, tmp_path):
    """It was skipped silently, and every row explained by the device's default graph."""
    from marketpulse.errors import MarketpulseError

    db = tmp_path / "m.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE posts AS SELECT 1 AS id, 'shares rally' AS text")
    with pytest.raises(MarketpulseError, match=r"--results-db .*nope.duckdb not found; pass"):
        _explain_rows(bundle, db, "posts", results_db=tmp_path / "nope.duckdb")
    assert _rows(db, "SELECT table_name FROM information_schema.tables") == [("posts",)]


def test_with_results_db_the_explanations_go_beside_the_scores(bundle, tmp_path):
    """The source file is only read: explanations land in --results-db, as scores do."""
    from marketpulse.runtime import ScoreConfig, score

    pytest.importorskip("presidio_analyzer")
    db, results = tmp_path / "src.duckdb", tmp_path / "results.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE SCHEMA feed")
        con.execute("CREATE TABLE feed.posts (id INTEGER, text VARCHAR)")
        con.executemany("INSERT INTO feed.posts VALUES (?, ?)", list(enumerate(MARKET_SENTENCES)))
    cfg = ScoreConfig(db=db, table="feed.posts", id_col="id", text_col="text", bundle=bundle.path, results_db=results, variant="int8", progress=False)  # fmt: skip
    score(cfg)
    stats = _explain_rows(bundle, db, "feed.posts", limit=5, results_db=results)
    assert stats.rows == 5 and stats.variants == {"int8": 5}  # found the scores' graph
    assert stats.unscored == 0 and "not scored" not in stats.summary("r")
    # a results table that does not hold them: the default graph, and the line says so
    wrong = _explain_rows(bundle, db, "feed.posts", limit=5, results_db=results, results_table="nope")  # fmt: skip
    assert wrong.unscored == 5
    assert wrong.summary("r").endswith(
        "; 5 not scored by this model in nope, so explained by the default graph "
        "(pass --results-table, or --variant)"
    )
    assert _rows(db, "SELECT table_name FROM information_schema.tables") == [("posts",)]
    assert _rows(results, "SELECT count(DISTINCT id), min(source) FROM explanations") == [
        (5, "feed.posts")
    ]


def test_two_source_files_keep_their_explanations_in_one_results_db(bundle, tmp_path):
    """posts of a.duckdb and posts of b.duckdb, same ids, one --results-db: explaining b
    must not replace a's rows (a rerun of a still replaces a's own)."""
    from marketpulse.runtime import ScoreConfig, score

    pytest.importorskip("presidio_analyzer")
    results = tmp_path / "results.duckdb"
    for name in ("a", "b"):
        db = tmp_path / f"{name}.duckdb"
        with duckdb.connect(str(db)) as con:
            con.execute("CREATE TABLE posts (id INTEGER, text VARCHAR)")
            con.executemany(
                "INSERT INTO posts VALUES (?, ?)", list(enumerate(MARKET_SENTENCES[:4]))
            )
        score(ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path, results_db=results, results_table=f"scores_{name}", progress=False))  # fmt: skip
    for name in ("a", "b", "a"):
        db = tmp_path / f"{name}.duckdb"
        _explain_rows(bundle, db, "posts", limit=4, results_db=results, results_table=f"scores_{name}")  # fmt: skip
    kept = _rows(results, "SELECT source_db, count(DISTINCT id), count(DISTINCT explained_at) FROM explanations GROUP BY ALL ORDER BY 1")  # fmt: skip
    assert kept == [(str((tmp_path / f"{n}.duckdb").resolve()), 4, 1) for n in ("a", "b")]


def test_a_row_is_explained_by_the_graph_that_scored_it(bundle, tmp_path):
    """Scored by int8 (forced), explained by int8 with the label it has; rows without a
    score by the CPU preference; --variant names one graph for all."""
    from marketpulse.inference.predictor import choose_placement
    from marketpulse.runtime import ScoreConfig, score

    pytest.importorskip("presidio_analyzer")
    db = tmp_path / "m.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE posts (id INTEGER, text VARCHAR)")
        con.executemany("INSERT INTO posts VALUES (?, ?)", list(enumerate(MARKET_SENTENCES)))
    n = len(MARKET_SENTENCES)
    scored = n - 2
    cfg = ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path, device="cpu", variant="int8", limit=None, where=f"id < {scored}", progress=False)  # fmt: skip
    assert score(cfg).rows_scored == scored
    preference = choose_placement(bundle, "cpu").variant
    stats = _explain_rows(bundle, db, "posts", limit=n)
    assert stats.variants == {"int8": scored} | (
        {preference: 2} if preference != "int8" else {"int8": n}
    )
    graphs = dict(_rows(db, "SELECT DISTINCT CAST(id AS INTEGER), variant FROM explanations"))
    assert graphs == {i: "int8" if i < scored else preference for i in range(n)}
    mismatched = _rows(db, "SELECT count(*) FROM explanations e JOIN scores s ON e.id = CAST(s.id AS VARCHAR) WHERE e.label <> s.label")  # fmt: skip
    assert mismatched == [(0,)]
    # another table, ids of another type: nothing of it in `scores`, the preference
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE u AS SELECT uuid() AS id, 'rates rise' AS text FROM range(2)")
    assert _explain_rows(bundle, db, "u").variants == {preference: 2}
    forced = _explain_rows(bundle, db, "posts", limit=n, variant="fp32")
    assert forced.variants == {"fp32": n}
    assert _rows(db, "SELECT DISTINCT variant FROM explanations WHERE source = 'posts'") == [
        ("fp32",)
    ]


def test_explain_prints_only_the_weighed_words_of_a_long_text(bundle):
    words = [f"w{i}" for i in range(5000)]  # far past the bundle's token limit
    result = CliRunner().invoke(
        main, ["explain", "--bundle", str(bundle.path), "--text", "oil " + " ".join(words)]
    )
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert "w4999" not in result.output and len(first) < 2000
    shown = first.split("  ", 1)[1].split(" ... (+")[0].split()
    assert first.endswith(f"(+{5001 - len(shown)} words not weighed)")
    assert shown[0] == "oil" and shown[-1] == words[len(shown) - 2]


def test_explain_clips_a_word_too_long_to_print(bundle):
    result = CliRunner().invoke(
        main, ["explain", "--bundle", str(bundle.path), "--text", "x" * 20000]
    )
    assert result.exit_code == 0, result.output
    assert len(result.output) < 400 and "x" * 39 + "\u2026" in result.output


def test_blank_rows_passed_over_are_counted_and_reported_as_score_does(bundle, tmp_path):
    """Rows with NULL or blank text are skipped (as `score` skips them) and counted per
    reason in the stats and the summary line: those before the last row explained, in
    id order; blank rows that --limit never reached are not counted."""
    pytest.importorskip("presidio_analyzer")
    db = tmp_path / "m.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE posts (id INTEGER, text VARCHAR, src VARCHAR)")
        con.executemany(
            "INSERT INTO posts VALUES (?, ?, ?)",
            [
                (1, "Oil slides on weak demand", "a"),
                (2, None, "a"),
                (3, "\t\n", "a"),  # blank as score judges it, though DuckDB's trim keeps it
                (4, "Gold steady near record", "a"),
                (5, "\u3000", "a"),
                (6, "", "b"),
                (7, "Shares rally", "a"),
            ],
        )
    everything = _explain_rows(bundle, db, "posts")
    assert (everything.rows, everything.skipped) == (3, 4)
    assert everything.skipped_reasons == {"null_text": 1, "empty_text": 3}
    assert ", skipped 4 blank (3 empty_text, 1 null_text) -> explanations in m.duckdb" in (
        everything.summary("m.duckdb")
    )
    first_two = _explain_rows(bundle, db, "posts", limit=2)  # rows 1 and 4: 2 and 3 passed over
    assert (first_two.rows, first_two.skipped_reasons) == (2, {"null_text": 1, "empty_text": 1})
    filtered = _explain_rows(bundle, db, "posts", where="src = 'b' OR id >= 5")
    assert (filtered.rows, filtered.skipped_reasons) == (1, {"null_text": 0, "empty_text": 2})
    none_blank = _explain_rows(bundle, db, "posts", limit=1)
    assert none_blank.skipped == 0
    assert re.search(r"\(5 words weighed; 1 by \w+\), skipped 0 blank -> ", none_blank.summary("m"))

    args = ["explain", "--bundle", str(bundle.path), "--db", str(db), "--table", "posts"]
    result = CliRunner().invoke(main, [*args, "--id-col", "id", "--text-col", "text"])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("explained ")]
    assert line.startswith("explained 3 rows (")
    assert ", skipped 4 blank (3 empty_text, 1 null_text) -> explanations in " in line

    # a table named like the count's own subquery is still the table
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE picked AS SELECT * FROM posts")
    assert _explain_rows(bundle, db, "picked").skipped_reasons == everything.skipped_reasons


def test_rows_scored_by_fp16_are_explained_by_fp32_wherever_the_cpu_runs(bundle):
    """fp16 runs on CUDA only: on the CPU (--device cpu, or auto without a CUDA provider)
    a row it scored is explained by fp32, the graph fp16 approximates."""
    from marketpulse.inference.predictor import cuda_provider_available
    from marketpulse.runtime.explanations import _graph_for

    assert _graph_for("fp16", "cpu", bundle) == "fp32"
    if not cuda_provider_available():
        assert _graph_for("fp16", "auto", bundle) == "fp32"
    assert _graph_for("int8", "auto", bundle) == "int8"
    assert _graph_for("nonsense", "auto", bundle) is None


def test_rerunning_explain_on_a_quoted_table_replaces_its_rows(bundle, tmp_path):
    """`"Market Posts"`: the rerun must find the rows the first run recorded under that
    spelling and replace them, not add a second set (review)."""
    pytest.importorskip("presidio_analyzer")
    db = tmp_path / "m.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute('CREATE TABLE "Market Posts" (id INTEGER, text VARCHAR)')
        con.executemany(
            'INSERT INTO "Market Posts" VALUES (?, ?)', list(enumerate(MARKET_SENTENCES[:3]))
        )
    first = _explain_rows(bundle, db, '"Market Posts"', limit=3)
    _explain_rows(bundle, db, '"Market Posts"', limit=3)
    assert _rows(db, "SELECT count(*) FROM explanations") == [(first.words,)]
