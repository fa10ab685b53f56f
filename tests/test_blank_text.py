"""One meaning of a blank text (marketpulse.text): Python, Arrow and DuckDB agree with
`str.strip`, and every stage that skips blank texts skips the same rows as `score`."""

from __future__ import annotations

import re
import unicodedata
from types import SimpleNamespace

import duckdb
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from marketpulse.errors import MarketpulseError
from marketpulse.export.checks import CheckSource, read_check_sample
from marketpulse.export.outliers import Calibration
from marketpulse.runtime.windows import tokenize_window
from marketpulse.text import (
    INVISIBLE,
    INVISIBLE_UNICODE,
    WHITESPACE,
    blank_mask,
    blank_sql,
    is_blank,
)
from marketpulse.train.adapt import MIN_TEXTS, load_texts
from marketpulse.train.data import DataSource, load_labeled

# ASCII letters, ASCII whitespace, the Unicode whitespace DuckDB's trim and RE2's \s
# miss, format and control characters (U+200B, U+FEFF, a soft hyphen, a tag character,
# NUL) and U+FFFD, which hold no visible character though Python does not strip them.
ALPHABET = (
    "ab \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x2010)))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff\xad\U000e0041\x00\x7f\ufffd\u2060"
)
# Blank, but not to DuckDB's trim (removes ' ' only) or RE2's \S (ASCII only).
TRICKY_BLANKS = ["\t\n", "\xa0", "\u3000\u2028", "\x1c\x85", " \u2009\r ", "\u200b\ufeff"]


def invisible(text: str) -> bool:
    """The definition (marketpulse/text.py): no character that is not whitespace, a
    control or format character, or U+FFFD."""
    return all(
        c.isspace() or c == "\ufffd" or unicodedata.category(c) in ("Cc", "Cf") for c in text
    )


@pytest.fixture(scope="module")
def con():
    con = duckdb.connect()
    yield con
    con.close()


def test_whitespace_is_every_character_python_strips():
    assert WHITESPACE == "".join(c for c in map(chr, range(0x110000)) if c.isspace())
    assert all(not (c * 2).strip() for c in WHITESPACE)


def test_invisible_is_the_unicode_tables_it_names():
    """The ranges are written out (computing them costs 0.6 s per import) for one Unicode
    version; under a newer one, every character in them is still invisible."""
    chars = "".join(chr(c) for a, b in INVISIBLE for c in range(a, b + 1))
    if unicodedata.unidata_version == INVISIBLE_UNICODE:
        assert chars == "".join(c for c in map(chr, range(0x110000)) if invisible(c))
    else:
        assert invisible(chars)


@settings(max_examples=400, deadline=None, database=None)
@given(text=st.text(alphabet=ALPHABET, max_size=8))
@example(text="")
@example(text=" a\n")  # RE2's `$` must not skip a trailing newline as Python's does
@example(text="\u200b")
@example(text="\x1c\x1d\x1e\x1f\x85")
def test_python_arrow_and_duckdb_agree_with_the_definition(con, text):
    want = invisible(text)
    assert is_blank(text) is want
    assert blank_mask(pa.array([text], pa.string())).to_pylist() == [want]
    assert con.execute(f"SELECT {blank_sql('?')}", [text]).fetchone() == (want,)


def test_null_is_null_in_arrow_and_duckdb(con):
    assert blank_mask(pa.array([None, " "], pa.string())).to_pylist() == [None, True]
    assert con.execute(f"SELECT {blank_sql('NULL::VARCHAR')}").fetchone() == (None,)
    # so `WHERE NOT blank` drops NULL texts as well as blank ones
    kept = con.execute(
        f"SELECT count(*) FROM (SELECT unnest([NULL, '', 'x']) AS t) WHERE NOT {blank_sql('t')}"
    ).fetchone()
    assert kept == (1,)


@pytest.fixture(scope="module")
def mixed_db(tmp_path_factory):
    """posts(id, body, tag): MIN_TEXTS usable texts (one of them a letter after U+200B, which is not
    whitespace), a NULL text, an empty one and the TRICKY_BLANKS."""
    usable = [f"$T{i} shares move {i}" for i in range(MIN_TEXTS - 1)] + ["\u200bx"]
    bodies = usable + [None, ""] + TRICKY_BLANKS
    path = tmp_path_factory.mktemp("blank") / "m.duckdb"
    db = duckdb.connect(str(path))
    db.execute("CREATE TABLE posts (id INTEGER, body VARCHAR, tag VARCHAR)")
    db.executemany(
        "INSERT INTO posts VALUES (?, ?, ?)",
        [(i, b, ("bullish", "bearish")[i % 2]) for i, b in enumerate(bodies)],
    )
    db.close()
    return path, bodies, usable


def test_every_stage_skips_the_texts_score_skips(mixed_db):
    path, bodies, usable = mixed_db
    blanks = 1 + len(TRICKY_BLANKS)
    # score: the runtime's window sets the rows aside as 'empty_text'
    fake = SimpleNamespace(encoder=SimpleNamespace(encode=lambda texts: texts))
    window = tokenize_window(pa.array(range(len(bodies))), pa.array(bodies, pa.string()), fake)
    assert window.skipped_reasons() == {"null_text": 1, "empty_text": blanks}
    assert sorted(bodies[i] for i in window.valid) == sorted(usable)
    # train
    source = DataSource(db=str(path), table="posts", text_col="body", label_col="tag")
    rows = load_labeled(source)
    assert rows.skipped == {"null_text": 1, "empty_text": blanks, "null_label": 0}
    assert sorted(rows.texts) == sorted(usable)
    # adapt
    texts = load_texts(source, max_rows=None, seed=0)
    assert texts.skipped == {"null_text": 1, "empty_text": blanks, "duplicate": 0}
    assert sorted(texts.texts) == sorted(usable)
    # export: the check texts and the int8 calibration texts
    sample = read_check_sample(CheckSource(db=path, table="posts", text_col="body"))
    assert sample.skipped == {"null_text": 1, "empty_text": blanks}
    assert sorted(sample.texts) == sorted(usable)
    calibration = Calibration(tokenizer=path, max_length=16, texts=bodies)
    assert sorted(calibration.used()) == sorted(usable)


@pytest.mark.parametrize("sql_type", ["BLOB", "VARCHAR[]", "INTEGER"])
def test_every_stage_refuses_a_text_column_that_is_not_text(tmp_path, sql_type):
    """score refuses it; train, adapt and export's check texts cast it to text and read
    `\\xE2\\x80...` escapes or `[a, b]` as market text."""
    path = tmp_path / "odd.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(f"CREATE TABLE posts (body {sql_type}, tag VARCHAR)")
        con.execute("INSERT INTO posts VALUES (NULL, 'bullish')")
    source = DataSource(db=str(path), table="posts", text_col="body", label_col="tag")
    fix = rf"has type {re.escape(sql_type)}, not VARCHAR; pass --text-col with a text column"
    with pytest.raises(MarketpulseError, match=fix):
        load_labeled(source)
    with pytest.raises(MarketpulseError, match=fix):
        load_texts(source, max_rows=None, seed=0)
    with pytest.raises(MarketpulseError, match="not VARCHAR; pass --check-text-col"):
        read_check_sample(CheckSource(db=path, table="posts", text_col="body"))
