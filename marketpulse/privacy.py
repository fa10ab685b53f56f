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
- a URL runs to the next whitespace, less trailing sentence punctuation (`,` `.` `:`, a
  `)` that closes no `(` of its own): Presidio's pattern stops at `(` or a quote and so
  left `(company)` or `(b)&token=...` visible. A match that ends inside a word (not
  before a possessive `'s`) without a scheme, `www.` or a path is dropped: its top-level
  domain was made up from the next word (`fell.Analysts` is no address `fell.an`);
- a host name without a scheme is only looked for where one can start (not inside a run
  of letters, digits, dots and hyphens): Presidio's pattern, retried at every character,
  took seconds on a long run of dots;
- a phone number must hold a separator, `+` or `(`: a bare run of digits in market text
  is an amount, an id or a CUSIP far more often than a phone number. Nor is a number a
  phone number when it holds a price (`3107.50-3108`), is a whole number with thousands
  separators (`1 234 567 890`, `4.155.501.234`) or a CUSIP with dashes (`037833-10-0`);
- overlapping findings (an e-mail's domain also matches as a URL; an IBAN's digits as a
  phone number) resolve to the longest span.

Measured on tests/data/pii_set.jsonl (188 market sentences, 160 pieces of synthetic
personal data; tests/test_privacy.py): see README "Personal data".
"""

from __future__ import annotations

import bisect
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
_WORD_REST = re.compile(r"\S*")
_PHONE_MARK = re.compile(r"[+(\s.\-]")
_PRICE = re.compile(r"\d\.\d{2}[^\d.]")  # 3107.50-3108; a phone's dots go on: 01.70.36.39
_NOT_PHONE = re.compile(
    r"[1-9]\d{0,2}([ .,])\d{3}(?:\1\d{3})*"  # thousands: 1 234 567 890, 4.155.501.234
    r"|\d{6}[- ]\d{2}[- ]\d"  # a CUSIP: 037833-10-0
)


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
        from presidio_analyzer import Pattern
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
    host = UrlRecognizer.BASE_URL_REGEX  # host name, known top-level domain, path
    # Presidio's patterns, less the quoted ones (they find no more, but take the opening
    # quote along); a host name is tried only where one can start: retried at every
    # character of a run like "a.a.a...", Presidio's pattern took seconds.
    url_patterns = [
        Pattern("Standard Url", "(?i)https?://" + host, 0.6),
        Pattern("Non schema URL", r"(?i)(?<![a-z0-9.\-])" + host, 0.5),
    ]

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str):
            return bool(offline(pattern_text).fqdn)

    return [
        OfflineEmailRecognizer(),
        UrlRecognizer(patterns=url_patterns),
        CreditCardRecognizer(),
        IbanRecognizer(),
        PhoneRecognizer(),
    ]


def _trim_url(text: str, start: int, end: int) -> int:
    opened, closed = text.count("(", start, end), text.count(")", start, end)
    while end > start and text[end - 1] in _URL_TRAILING:
        if text[end - 1] == ")":
            if opened >= closed:  # it closes the URL's own "(": Apple_(company)
                break
            closed -= 1
        end -= 1
    return end


def _url_end(text: str, start: int, end: int) -> int | None:
    """Where the URL Presidio found at [start, end) ends; None: it is not a URL."""
    word_end = _trim_url(text, start, _WORD_REST.match(text, end).end())
    url = text[start:end]
    if word_end <= end or "/" in url or url.lower().startswith("www."):
        return word_end
    if text[end:word_end] in ("'s", "\u2019s"):  # Salesforce.com's
        return end
    return None  # a top-level domain made up from the start of the next word


def _is_phone(number: str) -> bool:
    return bool(
        _PHONE_MARK.search(number)
        and not _PRICE.search(number)
        and not _NOT_PHONE.fullmatch(number)
    )


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
                end = _url_end(text, start, end)
            if kind == "PHONE" and not _is_phone(text[start:end]):
                continue
            if end is not None and end > start:
                found.append(Span(start, end, kind))
    found += [Span(m.start(), m.end(), "HANDLE") for m in _HANDLE.finditer(text)]
    # Longest first; a span overlapping one already kept (its neighbours in text order)
    # is dropped.
    kept: list[Span] = []
    for span in sorted(found, key=lambda s: (-(s.end - s.start), s.start)):
        i = bisect.bisect_left(kept, span.start, key=lambda k: k.start)
        if (i == 0 or kept[i - 1].end <= span.start) and (
            i == len(kept) or span.end <= kept[i].start
        ):
            kept.insert(i, span)
    return kept


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
