"""The text `marketpulse evaluate` prints for the result `evaluate` returns.

`format_report` is one table's: rows read and skipped, the model and its speed, then the
metrics. `format_domains_report` is several domains': each domain's metrics, then
`format_summary`, one row per domain beside the reference it is measured from (the
training domain's test split, or the first domain), with the majority-class baseline
and the gaps. These functions only format; they compute nothing.
"""

from __future__ import annotations

from marketpulse import display
from marketpulse.metrics import format_metrics
from marketpulse.train.advice import count_phrase


def _skipped_note(skipped: dict[str, int]) -> str:
    """The note after a row count, e.g. ' (2 skipped: 1 null text, 1 null label)'; empty
    when no row was skipped."""
    total = sum(skipped.values())
    return f" ({total:,} skipped: {count_phrase(skipped)})" if total else ""


def format_report(result: dict) -> str:
    rows = result["rows"]
    head = (
        f"{rows['used']} rows from {result['data']['source']}{_skipped_note(rows['skipped'])}\n"
        f"model {result['model']}: {result['reason']}, {result['rows_per_s']} rows/s\n\n"
    )
    return head + format_metrics(result["metrics"])


def _cell(value: float | int | None, width: int, signed: bool = False) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if isinstance(value, int):
        return f"{value:>{width}d}"
    return f"{value:>+{width}.4f}" if signed else f"{value:>{width}.4f}"


def format_summary(result: dict) -> str:
    """The cross-domain table: one row per domain, the reference first when it is training."""
    ref = result["reference"]
    rows = [
        (r["domain"], r["rows"], r["accuracy"], r["macro_f1"])
        + (r["baseline_accuracy"], r["baseline_macro_f1"], r["gap_accuracy"], r["gap_macro_f1"])
        for r in result["summary"]
    ]
    if ref["kind"] == "training":
        base = ref["majority_baseline"] or {}
        rows.insert(
            0,
            ("(training)", ref["rows"], ref["accuracy"], ref["macro_f1"])
            + (base.get("accuracy"), base.get("macro_f1"), None, None),
        )
        note = f"gap = domain minus training ({ref['source']})"
    else:
        note = f"gap = domain minus {ref['name']!r} (the model records no training test metrics)"
    width = max(12, *(display.width(r[0]) for r in rows))  # a CJK name: 2 columns a character
    heads = ("rows", "accuracy", "macro-F1", "base acc", "base F1", "gap acc", "gap F1")
    lines = [note, display.ljust("domain", width) + " " + " ".join(f"{h:>9}" for h in heads)]
    for name, *values in rows:
        cells = [_cell(v, 9, signed=i >= 5) for i, v in enumerate(values)]
        lines.append(display.ljust(name, width) + " " + " ".join(cells))
    return "\n".join(lines)


def format_domains_report(result: dict) -> str:
    """Each domain's metrics table, then the summary (base = majority-class baseline)."""
    parts = [f"model {result['model']}: {result['reason']}"]
    for domain in result["domains"]:
        rows = domain["rows"]
        parts.append(
            f"== {domain['name']}: {rows['used']} rows from {domain['data']['source']}"
            f"{_skipped_note(rows['skipped'])}, {domain['rows_per_s']} rows/s\n\n"
            + format_metrics(domain["metrics"])
        )
    parts.append(format_summary(result))
    return "\n\n".join(parts)
