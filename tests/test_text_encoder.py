"""TextEncoder gives the tokenizer's own ids on any text, however it splits the work.

The encoder takes two shortcuts (marketpulse/inference/batching.py): plain-ASCII rows
skip the BERT normalizer (lowercased by Arrow instead), and a window is cut into
slices encoded on several threads. Neither may change a single id: the reference here
is the bundled tokenizer.json run the plain way, one `encode_batch` over all rows.
"""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from marketpulse.inference import batching
from marketpulse.inference.batching import TextEncoder
from marketpulse.train.basemodel import default_base_model_dir
from marketpulse.urls import URL_NORMALIZER, URL_TOKEN, set_url_normalizer

MAX_LENGTH = 16  # short, so truncation is common
# User-added tokens, each with a space: one matched on the raw text (with a regex
# metacharacter), one matched on normalized text (add_tokens' default).
ADDED = "Big Deal+"
ADDED_NORMALIZED = "New York"

# ASCII printable and control characters, the special tokens as they are spelled, and
# characters the normalizer changes: accents, CJK, full-width, NBSP, U+FFFD, emoji.
PIECES = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=12),
    st.sampled_from(
        [
            "[CLS]",
            "[SEP]",
            "[MASK]",
            "[UNK]",
            "[PAD]",
            "[mask]",
            "[Cls",
            ADDED,
            ADDED_NORMALIZED,
            "new\tyork",
            "NEW YORK",
            # Links, as the URL normalizer (marketpulse/urls.py) sees them.
            "https://t.co/AbC1",
            "HTTP://X.co/a)",
            "http://",
            "hTTps://",
            "/x.",
            ")",
            "'",
            ",",
        ]
    ),
    st.text(alphabet="éÉñÑçÇ中文日本ＡＢ\u00a0\ufffd\u0301😀İß", max_size=4),
)
TEXTS = st.lists(st.lists(PIECES, max_size=5).map("".join), max_size=12)


def _tokenizer_json(tmp_path_factory, name: str, edit=None):
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(default_base_model_dir() / "tokenizer.json"))
    tok.add_tokens([AddedToken(ADDED, normalized=False), AddedToken(ADDED_NORMALIZED)])
    spec = json.loads(tok.to_str())
    if edit:
        edit(spec)
    path = tmp_path_factory.mktemp(name) / "tokenizer.json"
    path.write_text(json.dumps(spec))
    return path


def _cased(spec):
    spec["normalizer"]["lowercase"] = False
    spec["normalizer"]["strip_accents"] = False


def _not_bert(spec):
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}],
    }


def _urls(spec):
    spec["normalizer"] = {"type": "Sequence", "normalizers": [URL_NORMALIZER, spec["normalizer"]]}


def _other_replace(spec):
    other = {**URL_NORMALIZER, "pattern": {"Regex": r"https?://\S+"}}
    spec["normalizer"] = {"type": "Sequence", "normalizers": [other, spec["normalizer"]]}


EDITS = {
    "uncased": None,
    "cased": _cased,
    "urls": _urls,
    "other normalizer": _not_bert,
    "other replace": _other_replace,
}


@pytest.fixture(scope="module", params=list(EDITS))
def tokenizer_path(request, tmp_path_factory):
    edit = EDITS[request.param]
    return _tokenizer_json(tmp_path_factory, request.param.replace(" ", "_"), edit)


def _reference(path, texts: list[str], clip: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(MAX_LENGTH)
    encodings = tok.encode_batch([t[:clip] for t in texts], add_special_tokens=True)
    return [e.ids for e in encodings], [
        bool(e.overflowing) or len(t) > clip for e, t in zip(encodings, texts, strict=True)
    ]


def _check(path, texts: list[str], threads: int) -> None:
    encoder = TextEncoder(path, MAX_LENGTH, threads=threads)
    want_ids, want_truncated = _reference(path, texts, encoder._clip)
    for encoded in (encoder.encode(texts), encoder.encode(pa.array(texts))):
        assert [row.tolist() for row in encoded.ids] == want_ids
        assert encoded.truncated.tolist() == want_truncated
        assert encoded.lengths.tolist() == [len(i) for i in want_ids]


def test_the_plain_path_is_taken_only_where_the_normalizer_is_berts(tokenizer_path):
    encoder = TextEncoder(tokenizer_path, MAX_LENGTH)
    assert (encoder._plain is None) == ("other" in tokenizer_path.parent.name)
    assert encoder._urls == (tokenizer_path.parent.name.startswith("urls"))


def test_links_become_one_token_on_both_paths(tmp_path_factory):
    path = _tokenizer_json(tmp_path_factory, "links", _urls)
    encoder = TextEncoder(path, 64)
    assert encoder._urls
    texts = ["Stocks up https://t.co/AbC1.", "Stocks up http.", "Stocks up https://t.co/é1."]
    ids = encoder.encode(texts).ids
    assert ids[0].tolist() == ids[1].tolist() == ids[2].tolist()
    assert encoder._plain.token_to_id(URL_TOKEN) in ids[0].tolist()


def test_the_url_normalizer_goes_in_once_and_comes_out_whole():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(default_base_model_dir() / "tokenizer.json"))
    before = tok.to_str()
    assert set_url_normalizer(tok, False) is False
    assert set_url_normalizer(tok, True) is True
    once = tok.to_str()
    assert set_url_normalizer(tok, True) is False
    assert tok.to_str() == once
    assert tok.normalizer.normalize_str("See HTTPS://T.co/x, now") == "see http, now"
    assert set_url_normalizer(tok, False) is True
    assert json.loads(tok.to_str()) == json.loads(before)


@settings(max_examples=100, deadline=None, database=None)
@given(texts=TEXTS, threads=st.sampled_from([1, 3]))
@example(texts=["Tab\tNew\nline\rCR", "A\x0bB", "NUL\x00here", "DEL\x7fX"], threads=1)
@example(texts=["Buy [MASK] now", "[CLS] [cls]", "UPPER lower", "a Big Deal+ b"], threads=1)
@example(texts=["FooCorp in New York", "new\tyork rally", "new york", "NEW\nYORK"], threads=1)
@example(texts=["Café Ünïcode", "中文 AAPL", "x" * 400, ""], threads=3)
@example(texts=["see https://t.co/AbC1.", "(HTTP://x.co/a)", "http://", "é https://x"], threads=1)
def test_any_text_gets_the_tokenizers_own_ids(tokenizer_path, texts, threads):
    with mock.patch.object(batching, "_MIN_SLICE_ROWS", 1):  # slice even tiny windows
        _check(tokenizer_path, texts, threads)


def test_a_long_window_in_slices_matches_one_call(tokenizer_path):
    rng = np.random.default_rng(0)
    words = ["Stock", "rallies", "[SEP]", "déjà", "vu", "AAPL", "中", "\t", "!!", "up", "DOWN"]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 30))) for _ in range(3000)]
    _check(tokenizer_path, texts, threads=4)


@pytest.mark.parametrize(
    "arrow_type",
    ["large_string", "string_view", "dictionary"],
)
def test_other_arrow_string_types_encode_like_a_list(arrow_type):
    path = default_base_model_dir() / "tokenizer.json"
    texts = ["Stocks RALLY", "Café Ünïcode", "x" * 400, "", "Buy [MASK]"] * 120
    array = {
        "large_string": lambda: pa.array(texts, pa.large_string()),
        "string_view": lambda: pa.array(texts, pa.string_view()),
        "dictionary": lambda: pa.array(texts).dictionary_encode(),
    }[arrow_type]()
    encoder = TextEncoder(path, MAX_LENGTH, threads=2)
    want, got = encoder.encode(texts), encoder.encode(array)
    for name in ("flat", "lengths", "truncated"):
        assert getattr(got, name).tolist() == getattr(want, name).tolist()
