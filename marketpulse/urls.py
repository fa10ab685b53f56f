"""Web addresses become one token, in the tokenizer itself.

Market text from social sources is full of links: half the tweets in
`../shared/data/twitter_financial_news` end in a `https://t.co/...` short link,
which BERT's WordPiece cuts into a dozen meaningless pieces (27.9 tokens per tweet on
average, 20.3 with links replaced). A link says nothing about sentiment, and every
token of it costs compute in training and in scoring.

`train` and `adapt` put a `Replace` normalizer in front of the base tokenizer's own
normalizer, which turns every address matched by `URL_PATTERN` into `URL_TOKEN`
(`--keep-urls` leaves addresses as written, and takes the replacement out of a base
model that has it). Because it lives in the saved tokenizer.json, every later consumer
(evaluate, export, the ONNX runtime, the bench's pipelines) sees the same text without
knowing about it. The pattern stops short of trailing punctuation, so "see
https://x.co/a." keeps its full stop. It is written for both regex engines that run it,
Oniguruma (the tokenizers library) and RE2 (Arrow, for the runtime's plain-ASCII fast
path), and behaves the same in both on printable ASCII; tests/test_text_encoder.py
checks the ids.
"""

from __future__ import annotations

import json

from marketpulse.errors import MarketpulseError

URL_PATTERN = r"[Hh][Tt][Tt][Pp][Ss]?://\S*[^\s.,;:!?)\]}'\"]"
URL_TOKEN = "http"
# The normalizer as tokenizer.json spells it.
URL_NORMALIZER = {"type": "Replace", "pattern": {"Regex": URL_PATTERN}, "content": URL_TOKEN}
# What `train` and `adapt` log when they put it in.
URL_LOG_LINE = f"web addresses read as the token '{URL_TOKEN}' (--keep-urls keeps them)"


def normalizes_urls(normalizer: dict | None) -> bool:
    """True when a tokenizer.json `normalizer` starts with the URL replacement."""
    normalizer = normalizer or {}
    steps = normalizer.get("normalizers") or []
    return normalizer.get("type") == "Sequence" and steps[:1] == [URL_NORMALIZER]


def set_url_normalizer(tokenizer, on: bool) -> bool:
    """Put the URL replacement in front of a tokenizer's normalizer (`on`), or take it out.

    `tokenizer` is a `tokenizers.Tokenizer` or a transformers fast tokenizer, changed in
    place. Adding it twice, or taking out one that is not there, does nothing. Returns
    whether anything changed.
    """
    from tokenizers import Regex, normalizers

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "normalizer"):
        if not on:
            return False
        raise MarketpulseError(
            f"{type(tokenizer).__name__} is not a fast tokenizer (no tokenizer.json), so web "
            "addresses cannot be replaced in it; pass --keep-urls"
        )
    current = backend.normalizer
    present = current is not None and normalizes_urls(json.loads(current.__getstate__()))
    if present == on:
        return False
    if on:
        replace = normalizers.Replace(Regex(URL_PATTERN), URL_TOKEN)
        rest = [] if backend.normalizer is None else [backend.normalizer]
        backend.normalizer = normalizers.Sequence([replace, *rest])
    else:
        rest = [backend.normalizer[i] for i in range(1, len(backend.normalizer))]
        backend.normalizer = (
            rest[0] if len(rest) == 1 else normalizers.Sequence(rest) if rest else None
        )
    return True
