"""Masking personal data in text the product prints or writes: `mask(text) -> str`.

Six kinds, each replaced by a typed placeholder:

    EMAIL  <EMAIL>    PHONE  <PHONE>    URL   <URL>
    HANDLE <HANDLE>   CARD   <CARD>     IBAN  <IBAN>

Detection is Microsoft Presidio's pattern recognizers (`presidio-analyzer`, the
`privacy` extra): e-mail, URL, credit card (Luhn-checked), IBAN (mod-97 checked) and
phone numbers (Google's `phonenumbers`). Only the recognizers are used, never Presidio's
`AnalyzerEngine`, so no spaCy model is downloaded or loaded. Written here, because
Presidio has no such recognizer or rule:
- @handles (`@` + 1-15 letters, digits or underscores, not inside an e-mail address);
- the e-mail recognizer checks top-level domains against tldextract's bundled list and
  never fetches the public suffix list from the network;
- a URL's trailing sentence punctuation (`,` `.` `:` `)`) is not part of the URL;
- a phone number must hold a separator, `+` or `(`: a bare run of digits in market text
  is an amount, an id or a CUSIP far more often than a phone number;
- overlapping findings (an e-mail's domain also matches as a URL; an IBAN's digits as a
  phone number) resolve to the longest span.

Measured on tests/data/pii_set.jsonl (180 market sentences, 160 pieces of synthetic
personal data; tests/test_privacy.py): see README "Privacy".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from marketpulse.errors import MarketpulseError

KINDS = ("EMAIL", "PHONE", "URL", "HANDLE", "CARD", "IBAN")
_PRESIDIO = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "URL": "URL",
    "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN",
}
_HANDLE = re.compile(r"(?<![\w@.])@[A-Za-z0-9_]{1,15}(?![\w@])")
_URL_TRAILING = ".,;:!?'\")]}"
_PHONE_MARK = re.compile(r"[+(\s.\-]")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str  # one of KINDS

    @property
    def placeholder(self) -> str:
        return f"<{self.kind}>"


@lru_cache(maxsize=1)
def _recognizers() -> list:
    try:
        import tldextract
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            PhoneRecognizer,
            UrlRecognizer,
        )
    except ImportError as exc:
        raise MarketpulseError(
            f"masking personal data needs presidio-analyzer ({exc}); install it with "
            "`pip install 'marketpulse[privacy]'` (make setup does)"
        ) from exc
    offline = tldextract.TLDExtract(suffix_list_urls=())  # the bundled suffix list only

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str):
            return bool(offline(pattern_text).fqdn)

    return [
        OfflineEmailRecognizer(),
        UrlRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        PhoneRecognizer(),
    ]


def _trim_url(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1] in _URL_TRAILING:
        if text[end - 1] == ")" and "(" in text[start : end - 1]:
            break
        end -= 1
    return end


def find(text: str) -> list[Span]:
    """The personal data in `text`, as non-overlapping spans in text order."""
    found: list[Span] = []
    for rec in _recognizers():
        for r in rec.analyze(text, rec.supported_entities, None):
            kind = _PRESIDIO.get(r.entity_type)
            if kind is None:
                continue
            start, end = r.start, r.end
            if kind == "URL":
                end = _trim_url(text, start, end)
            if kind == "PHONE" and not _PHONE_MARK.search(text[start:end]):
                continue
            if end > start:
                found.append(Span(start, end, kind))
    found += [Span(m.start(), m.end(), "HANDLE") for m in _HANDLE.finditer(text)]
    # Longest first; a span overlapping one already kept is dropped.
    kept: list[Span] = []
    for span in sorted(found, key=lambda s: (-(s.end - s.start), s.start)):
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def mask(text: str) -> str:
    """`text` with each piece of personal data replaced by its placeholder, e.g. <EMAIL>.

    None comes back as None, so a column of texts with NULLs can be masked as it is.
    """
    if not text:
        return text
    spans = find(text)
    if not spans:
        return text
    out, last = [], 0
    for span in spans:
        out += [text[last : span.start], span.placeholder]
        last = span.end
    out.append(text[last:])
    return "".join(out)


def masked_span(spans: list[Span], start: int, end: int) -> Span | None:
    """The span overlapping characters [start, end), if any (for masking single words)."""
    for span in spans:
        if span.start < end and start < span.end:
            return span
    return None
