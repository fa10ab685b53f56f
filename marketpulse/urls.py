"""Web addresses become one token, in the tokenizer itself.

Market text from social sources is full of links: half the tweets in
`../shared/data/twitter_financial_news` end in a `https://t.co/...` short link,
which BERT's WordPiece cuts into a dozen meaningless pieces (27.9 tokens per tweet on
average, 20.3 with links replaced). A link says nothing about sentiment, and every
token of it costs compute in training and in scoring.

`train` (unless `--keep-urls`) puts a `Replace` normalizer in front of the base
tokenizer's own normalizer, which turns every address matched by `URL_PATTERN` into
`URL_TOKEN`. Because it lives in the saved tokenizer.json, every later consumer
(evaluate, export, the ONNX runtime, the bench's pipelines) sees the same text without
knowing about it. The pattern stops short of trailing punctuation, so "see
https://x.co/a." keeps its full stop. It is written for both regex engines that run it,
Oniguruma (the tokenizers library) and RE2 (Arrow, for the runtime's plain-ASCII fast
path), and behaves the same in both on printable ASCII; tests/test_text_encoder.py
checks the ids.
"""

from __future__ import annotations

import json

URL_PATTERN = r"[Hh][Tt][Tt][Pp][Ss]?://\S*[^\s.,;:!?)\]}'\"]"
URL_TOKEN = "http"
# The normalizer as tokenizer.json spells it.
URL_NORMALIZER = {"type": "Replace", "pattern": {"Regex": URL_PATTERN}, "content": URL_TOKEN}


def normalizes_urls(normalizer: dict | None) -> bool:
    """True when a tokenizer.json `normalizer` starts with the URL replacement."""
    steps = (normalizer or {}).get("normalizers") or []
    return (
        (normalizer or {}).get("type") == "Sequence" and bool(steps) and steps[0] == URL_NORMALIZER
    )


def add_url_normalizer(tokenizer) -> bool:
    """Put the URL replacement in front of a `tokenizers.Tokenizer`'s normalizer.

    Does nothing when it is already there (a base model trained with it); returns
    whether it added it.
    """
    from tokenizers import Regex, normalizers

    spec = json.loads(tokenizer.to_str()).get("normalizer")
    if normalizes_urls(spec):
        return False
    replace = normalizers.Replace(Regex(URL_PATTERN), URL_TOKEN)
    steps = [replace] if tokenizer.normalizer is None else [replace, tokenizer.normalizer]
    tokenizer.normalizer = normalizers.Sequence(steps)
    return True
