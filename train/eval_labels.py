"""Match a table's labels to a model's, before any row is scored.

Integer labels in the table are named by `--label-names` (0 -> the first name ...),
unless they match its names as written; a model whose labels are integers' own names
("1", "2", "3": train without --label-names) knows each integer by its value, and one
whose labels include some of the table's ("1" of "1", "2", "unsure") knows those as
written; `--label-map` renames a table's labels (integers included) onto the model's.
Otherwise integers are read as positions in the model's own label order, which is right
only if the table was labeled in that order, so a stderr line says so (`position_note`)
and the result records it (`integer_labels`, also set when --label-names named them by
position). A value that no position names (negative, or past the last) is an error
naming the fix that works: `--label-map` with every value.

`load_rows` reads a source this way for `evaluate` and `evaluate_domains`; a label the
model lacks is an error naming both fixes, mapping and filtering.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from marketpulse.errors import MarketpulseError
from marketpulse.metrics import labels_are
from marketpulse.sources import Flags
from marketpulse.train.advice import count_phrase, query_flag, sql_name
from marketpulse.train.data import DataSource, LabeledRows, load_labeled
from marketpulse.train.labels import UnnamedValue

_INTEGER = re.compile(r"^-?[0-9]+$")


def _integer_names(labels: list[str]) -> bool:
    """Labels such as "1", "2", "3" or "-1", "0", "1": how train names integer labels
    without --label-names (str of each value)."""
    return all(_INTEGER.match(y) and str(int(y)) == y for y in labels)


def _unknown_label(label: str, column: str, labels: list[str]) -> MarketpulseError:
    return MarketpulseError(
        f"label {label!r} in column {column!r} is not one of the model's labels "
        f"({', '.join(labels)}); map it with --label-map {label}=LABEL, or leave "
        "those rows out of the source"
    )


def _not_the_models(
    unknown: list[str], rows: LabeledRows, column: str, labels: list[str]
) -> MarketpulseError:
    """Labels (named by --label-names) the model lacks, with both fixes: map or filter."""
    values = [rows.literals[y] for y in unknown]  # every label read has its literal
    name = sql_name(column)
    where = f"{name} NOT IN ({', '.join(values)})" if len(values) > 1 else f"{name} <> {values[0]}"
    return MarketpulseError(
        f"{labels_are(unknown, f' in column {column!r}')} not among the model's labels "
        f"({', '.join(labels)}); map them onto the model's with --label-map "
        f"{unknown[0]}=LABEL, or leave those rows out with a filtering --query, e.g. "
        + query_flag(f"SELECT ... WHERE {where}")
    )


def _order_phrase(labels: Sequence[str]) -> str:
    """`["bearish", "bullish"]` -> "0=bearish, 1=bullish"."""
    return ", ".join(f"{i}={name}" for i, name in enumerate(labels))


def _unnamed(
    values: list[int],
    column: str,
    labels: list[str],
    names: Sequence[str] | None,
    domain: str | None,
) -> MarketpulseError:
    """Integer label `values` that positions cannot all name, with only the fixes that work.

    Positions are --label-names' (`names`) or, without it, the model's label order. A
    --label-map naming every value by its value always works (it replaces --label-names).
    More --label-names work only for values 0.. that the model has labels enough for:
    no name reaches a negative value, and each name must be one of the model's labels."""
    bad = [v for v in values if not 0 <= v < len(names or labels)]
    prefix = f"{domain}:" if domain else ""
    pairs = ",".join(f"{v}=LABEL" for v in values[:6]) + (",..." if len(values) > 6 else "")
    by_map = f"name every value with --label-map {prefix}{pairs}"
    if names is None:
        how = (
            "with no --label-names, integer labels are read as positions in the model's "
            f"label order ({_order_phrase(labels)})"
        )
        fix = by_map
    else:
        how = (
            f"--label-names names the values 0..{len(names) - 1} by position "
            f"({_order_phrase(names)})"
        )
        fix = f"drop --label-names and {by_map}"
        if values[0] >= 0 and values[-1] < len(labels):
            fix = f"pass one name per value 0..{values[-1]} with --label-names, or {fix}"
    return MarketpulseError(f"label value {bad[0]} in column {column!r} has no name: {how}; {fix}")


def _by_position(rows: LabeledRows, labels: list[str], label_map: dict[str, str]) -> bool:
    """Whether integer labels (no --label-names given) are read as the model's positions.

    Not when the model's labels are integers' own names (it knows 2 as "2", whatever its
    position), when --label-map names some of them (it names them by value), nor when
    some are the model's labels as written ("1" of labels "1", "2", "unsure"): a table's
    labels that match the model's are those labels, and any others are unknown labels."""
    return (
        bool(rows.texts)
        and rows.integer_labels
        and not _integer_names(labels)
        and not set(rows.labels) & set(label_map)
        and not set(rows.labels) & set(labels)
    )


def _name_by_position(
    rows: LabeledRows, labels: list[str], column: str, domain: str | None
) -> LabeledRows:
    """Integer labels (as read, named by their digits) named by the model's label order.

    Only when no --label-names was given: the user named nothing, so a value that is no
    position in the model's labels is an error that says the names were the model's."""
    values = sorted({int(y) for y in rows.labels})
    if not all(0 <= v < len(labels) for v in values):
        raise _unnamed(values, column, labels, None, domain)
    named = sorted((text, labels[int(y)]) for text, y in zip(rows.texts, rows.labels, strict=True))
    return dataclasses.replace(
        rows,
        texts=[text for text, _ in named],
        labels=[label for _, label in named],
        literals={labels[int(y)]: literal for y, literal in rows.literals.items()},
    )


def position_note(labels: list[str], domain: str | None, flagged: str | None) -> str:
    """The stderr line saying integer labels were read as the model's label order;
    `domain` names the source in a several-domain report, `flagged` a --domain one."""
    where = f"domain {domain!r}: " if domain else ""
    fix = f"--label-map {flagged}:0=LABEL,..." if flagged else "--label-names"
    return (
        f"evaluate: {where}integer labels read as the model's label order "
        f"{_order_phrase(labels)}; pass {fix} to name them"
    )


def _no_contradiction(source: DataSource, label_map: dict[str, str]) -> None:
    """--label-names and --label-map both name an integer label, differently: refuse (the
    integers are named first, so the map would be silently ignored)."""
    names = source.label_names
    for value, name in label_map.items():
        if value.isdigit() and int(value) < len(names) and names[int(value)] != name:
            raise MarketpulseError(
                f"--label-names names {source.label_col} value {value} {names[int(value)]!r} "
                f"but --label-map {value}={name} maps it to {name!r}; pass only one of them"
            )


def load_rows(
    source: DataSource,
    labels: list[str],
    label_map: dict[str, str],
    flags: Flags | None = None,
    domain: str | None = None,
) -> tuple[LabeledRows, dict | None]:
    """Read the rows with label names the model knows, mapped through `label_map`, and
    how integer labels were named by position (None when they were not).

    `domain` names a --domain source, which --label-names does not describe. Every label
    is checked against the model's here, before any row is scored."""
    if source.label_names is not None:  # the user's --label-names: train's advice fits
        _no_contradiction(source, label_map)
        try:
            rows = load_labeled(source, flags)
        except UnnamedValue as exc:  # but evaluate has --label-map too: say what works here
            names = source.label_names
            raise _unnamed(exc.values, source.label_col, labels, names, domain) from exc
        # digits that match names as text were not read by position: nothing to record
        named_by = "--label-names" if rows.named_by_position else None
        positions = list(source.label_names)
    else:
        rows = load_labeled(source, flags)  # the table's own labels; integers as digits
        named_by, positions = None, labels
        if _by_position(rows, labels, label_map):  # a note says so
            rows = _name_by_position(rows, labels, source.label_col, domain)
            named_by = "the model's label order"
    if not rows.texts:
        raise MarketpulseError(
            f"no usable rows in {source.describe()} (skipped {count_phrase(rows.skipped)}); "
            "pass a table with non-empty text and labels"
        )
    if set(rows.labels) & set(label_map):  # a shared map may name none of this table's
        rows.labels = [label_map.get(y, y) for y in rows.labels]
        unknown = sorted(set(rows.labels) - set(labels))
        if unknown:
            raise MarketpulseError(
                f"{labels_are(unknown)} not among the model's labels "
                f"({', '.join(labels)}) after --label-map; map them with --label-map "
                f"{unknown[0]}=LABEL onto those names"
            )
    else:
        # never silently another class: an integer the model does not know by value, or
        # labels (or --label-names names) the model lacks, with both fixes: map or filter
        unknown = sorted(set(rows.labels) - set(labels))
        if unknown and source.label_names is None and _integer_names(labels):
            raise _unknown_label(unknown[0], source.label_col, labels)
        if unknown:
            raise _not_the_models(unknown, rows, source.label_col, labels)
    rows.label_names = list(labels)
    if named_by is None:
        return rows, None
    names = {str(i): name for i, name in enumerate(positions)}
    return rows, {"named_by": named_by, "names": names}
