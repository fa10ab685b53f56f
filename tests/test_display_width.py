"""Terminal tables pad by display width: a CJK character takes two columns."""

from __future__ import annotations

import unicodedata
from datetime import date
from types import SimpleNamespace

import pytest

from marketpulse import display
from marketpulse.metrics import format_metrics
from marketpulse.query import format_rows

CJK = "株式会社"


def _columns(line: str) -> int:
    """Display columns of `line`, counted independently of marketpulse.display."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in line
    )


def _starts(line: str, marker: str) -> int:
    """The display column at which `marker` starts in `line`."""
    return _columns(line[: line.index(marker)])


@pytest.mark.parametrize(
    ("text", "cols"),
    [
        ("Acme", 4),
        (CJK, 8),
        ("Ünïcode", 7),
        ("e\u0301", 1),  # e + combining acute
        ("a\u200bb", 2),  # zero-width space
        ("ｱｲ", 2),  # halfwidth katakana
        ("ＡＢ", 4),  # fullwidth latin
        ("😀", 2),
        ("", 0),
    ],
)
def test_width_counts_terminal_columns(text, cols):
    assert display.width(text) == cols


def test_ljust_rjust_and_clip_by_display_width():
    assert display.ljust(CJK, 10) == CJK + "  "
    assert display.rjust(CJK, 9) == " " + CJK
    assert display.ljust(CJK, 3) == CJK  # never cut
    assert display.clip(CJK * 3, 11) == "株式会社..."  # 8 + 3 columns
    assert display.clip(CJK, 8) == CJK
    assert display.clip("abcdefgh", 6) == "abc..."


def test_sql_table_columns_line_up_with_wide_characters():
    out = format_rows(["Brand", "n"], [("Acme", 511), (CJK, 500), ("Ünïcode Brand", 500)], "table")
    lines = out.splitlines()[:-1]  # the "(3 rows)" line aside
    # the second column starts 2 columns after the widest brand (13) on every line
    assert {_columns(line[: line.rstrip().rfind(" ") + 1]) for line in lines} == {15}, out


def test_trends_report_tables_line_up_with_wide_characters():
    from marketpulse.trends.report import format_report

    def row(brand, z, shift=False):
        return {
            "brand": brand, "bucket": date(2026, 7, 6), "volume": 42, "net_index": 0.3,
            "index_rolling": 0.31, "index_change": 0.01, "z_score": z, "trailing_mean": 0.2,
            "forecast_next": None, "is_shift": shift,
        }  # fmt: skip

    latest = [row("Acme", -0.4), row(CJK, 3.2, True), row("Ünïcode Brand", 0.1)]
    result = SimpleNamespace(
        by=("brand",), latest=latest, flagged=[latest[1]], alpha=0.01, drivers_table=None,
        trend_table="trend_posts_week", positive="positive", negative="negative",
        grain="week", n_rows=125, n_buckets=10, null_time_rows=0, skipped_rows=0,
        sparse_note="", models_note="", labels_note="", source_rows=125, unscored_rows=0,
        forecast_table=None, backtest_table=None, skill=None, window=3, latest_view="v",
        db="x.duckdb", results_db=None, outputs={}, horizon=0, drivers=[],
    )  # fmt: skip
    out = format_report(result)
    latest_part, flagged_part = out.split("Flagged shifts")
    # "bucket" in the head, the rule's second dashes and every date start in one column:
    # 2 past the widest brand (Ünïcode Brand: 13; 株式会社 alone when flagged: 8)
    for part, col in ((latest_part, 15), (flagged_part, 10)):
        lines = part.splitlines()
        head = lines.index(next(line for line in lines if line.startswith("brand")))
        table = lines[head : head + (5 if part is latest_part else 3)]
        starts = [_starts(table[0], "bucket"), _starts(table[1], " -") + 1]
        starts += [_starts(line, "2026-07-06") for line in table[2:]]
        assert set(starts) == {col}, out


def test_metrics_and_domain_tables_line_up_with_wide_labels():
    from marketpulse.metrics import classification_metrics

    labels = ["強気", "弱気", "neutral"]
    metrics = classification_metrics(
        ["強気", "弱気", "neutral", "強気"], ["強気", "neutral", "neutral", "弱気"], labels
    )
    lines = format_metrics(metrics).splitlines()
    table = lines[:5]  # the head, a row per label, macro avg: fixed-width numbers after the label
    assert len({_columns(line) for line in table}) == 1, "\n".join(table)
    matrix = lines[lines.index("confusion matrix (rows = true, columns = predicted)") + 1 :]
    assert len(matrix) == 4
    assert len({_columns(line) for line in matrix}) == 1, "\n".join(matrix)


def test_domain_summary_lines_up_with_wide_domain_names():
    from marketpulse.train.eval_report import format_summary

    def domain(name):
        return {
            "domain": name, "rows": 10, "accuracy": 0.5, "macro_f1": 0.4,
            "baseline_accuracy": 0.3, "baseline_macro_f1": 0.2, "gap_accuracy": -0.1,
            "gap_macro_f1": -0.2,
        }  # fmt: skip

    result = {
        "reference": {"kind": "named", "name": "news"},
        "summary": [domain("news"), domain("東京ニュース速報サイト")],
    }
    lines = format_summary(result).splitlines()[1:]
    assert len({_columns(line) for line in lines}) == 1, "\n".join(lines)


def test_a_report_table_without_rows_is_its_head():
    from marketpulse.trends.report import _table

    assert _table(["brand", "n"], []) == ["brand  n", "-----  -"]
