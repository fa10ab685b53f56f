"""marketpulse.privacy: typed placeholders, and precision/recall on the committed set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("presidio_analyzer", reason="the privacy extra is not installed")

from marketpulse import privacy  # noqa: E402

PII_SET = Path(__file__).parent / "data" / "pii_set.jsonl"


def test_precision_and_recall_on_the_labeled_set_are_at_least_095():
    rows = [json.loads(line) for line in PII_SET.read_text().splitlines()]
    assert len(rows) >= 150
    tp = fp = fn = 0
    per_kind = {k: [0, 0] for k in privacy.KINDS}  # found, expected
    for row in rows:
        expected = {tuple(s) for s in row["spans"]}
        found = {(s.start, s.end, s.kind) for s in privacy.find(row["text"])}
        tp += len(expected & found)
        fp += len(found - expected)
        fn += len(expected - found)
        for _, _, kind in expected:
            per_kind[kind][1] += 1
        for _, _, kind in expected & found:
            per_kind[kind][0] += 1
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"pii_set: precision {precision:.3f} recall {recall:.3f} ({tp} tp, {fp} fp, {fn} fn)")
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert all(expected >= 20 for _, expected in per_kind.values()), per_kind  # every kind tested


def test_mask_replaces_each_kind_with_its_placeholder():
    text = (
        "Mail dana@example.com, call +44 20 7946 0958, see https://example.com/x. "
        "@TraderAnna paid with 4111 1111 1111 1111 from DE89 3704 0044 0532 0130 00"
    )
    assert privacy.mask(text) == (
        "Mail <EMAIL>, call <PHONE>, see <URL>. <HANDLE> paid with <CARD> from <IBAN>"
    )


@pytest.mark.parametrize(
    "text",
    [
        "$AAPL closed at $189.84, up 1.3%, on volume of 52,164,300 shares",
        "10-Q filed 2024-08-07; ISIN US0378331005, CUSIP 037833100",
        "S&P 500 futures at 5,431.25 while EUR/USD trades 1.0842",
    ],
)
def test_market_numbers_are_left_alone(text):
    assert privacy.mask(text) == text


def test_mask_passes_empty_and_none_through():
    assert privacy.mask("") == ""
    assert privacy.mask(None) is None
