"""Refuse, before training, labels that a trained model could not be saved or scored with.

`require_trainable` refuses labels that the runtime could not write: each label gets a
probability column (`results_schema.probability_column`), and two labels that differ only
in case or in characters outside a-z, 0-9 and _ (punctuation, non-Latin letters) would
share one. It refuses labels that all start with `LABEL_` too: a checkpoint reads them as
transformers' placeholder names (`checkpoint.are_placeholder_labels`), so the run could not
be saved. It also asks for at least two classes, each with enough rows to land in every
split. Each error names a fix: a --query or --label-names that works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from marketpulse.checkpoint import are_placeholder_labels
from marketpulse.errors import MarketpulseError
from marketpulse.results_schema import probability_column
from marketpulse.train.advice import count_phrase, query_flag, sql_name
from marketpulse.train.labels import literal

if TYPE_CHECKING:
    from marketpulse.train.data import DataSource, LabeledRows


def _and(items: list[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _rename_query(names: list[str], source: DataSource, others: str = "") -> str:
    """`--query` naming each of `names` class_0, class_1, ... in a CASE, for the user to put
    the real names in; `others` is what the other labels become (`ELSE`), if any."""
    label = sql_name(source.label_col)
    whens = " ".join(f"WHEN {literal(n)} THEN 'class_{i}'" for i, n in enumerate(names))
    other = f" ELSE {others}" if others else ""
    case = f"CASE {label} {whens}{other} END"
    return query_flag(f"SELECT {sql_name(source.text_col)}, {case} AS {label} FROM ...")


def require_named_labels(rows: LabeledRows, source: DataSource) -> None:
    """Labels a checkpoint can keep: not all `LABEL_...`, which `load_checkpoint` reads as
    transformers' placeholder names, refusing the model only once it has been trained."""
    names = rows.label_names
    if not are_placeholder_labels(names):
        return
    if rows.integer_labels and source.label_names:  # the names came from --label-names
        example = ",".join(f"class_{i}" for i in range(len(names)))
        fix = f"pass --label-names with the classes' names, e.g. --label-names {example}"
    else:
        query = _rename_query(names, source)
        fix = f"name the classes with --query, e.g. {query}, with your names for them"
    raise MarketpulseError(
        f"labels in column {source.label_col!r} all start with LABEL_ "
        f"({_and([repr(n) for n in names])}), which a checkpoint reads as transformers' "
        f"placeholder names (no names), so the trained model could not be saved; {fix}"
    )


def require_distinct_columns(rows: LabeledRows, source: DataSource) -> None:
    """Every label its own probability column, as `marketpulse score` requires.

    The runtime names a label's column `results_schema.probability_column(label)` and
    refuses a model whose labels share one; training such a model would waste the run."""
    columns: dict[str, list[str]] = {}
    for name in rows.label_names:
        columns.setdefault(probability_column(name), []).append(name)
    shared = {col: names for col, names in columns.items() if len(names) > 1}
    if not shared:
        return
    which = "; ".join(
        f"{_and([repr(n) for n in names])} become {col}" for col, names in shared.items()
    )
    column = source.label_col
    # labels that differ in more than case (`看涨`, `看跌`; `neg!`, `neg?`) stay apart
    # under lower(): only new names for them can keep their columns apart
    apart = [n for names in shared.values() if len({n.lower() for n in names}) > 1 for n in names]
    by_label_names = rows.integer_labels and source.label_names  # names from --label-names
    if apart:
        ascii_only = "column names keep only a-z, 0-9 and _, so "
        if by_label_names:
            example = ",".join(f"class_{i}" for i in range(len(rows.label_names)))
            fix = f"{ascii_only}pass --label-names with ASCII names, e.g. --label-names {example}"
        else:
            label = sql_name(column)
            others = ""  # the rest as they are, or lower-cased when some differ only in case
            if len(apart) < len(rows.label_names):
                case_only = any(len({n.lower() for n in ns}) == 1 for ns in shared.values())
                others = f"lower({label})" if case_only else label
            query = _rename_query(apart, source, others)
            fix = f"{ascii_only}give them ASCII names with --query, e.g. {query}, or rename them"
    elif by_label_names:
        fix = "pass --label-names whose names differ in a letter or digit, not only in case"
    else:
        text, label = sql_name(source.text_col), sql_name(column)
        query = query_flag(f"SELECT {text}, lower({label}) AS {label} FROM ...")
        fix = f"map them to one spelling with --query, e.g. {query}, or rename them"
    raise MarketpulseError(
        f"labels in column {column!r} collide once sanitized into probability column names "
        f"({which}), which `marketpulse score` refuses; {fix}"
    )


def require_trainable(rows: LabeledRows, source: DataSource, min_per_class: int) -> None:
    """Labels the runtime can write (`require_distinct_columns`); at least two classes,
    each with enough rows to land in every split; not all `LABEL_...`
    (`require_named_labels`)."""
    require_named_labels(rows, source)
    require_distinct_columns(rows, source)
    skipped = sum(rows.skipped.values())
    # duplicates are skipped too (drop_duplicates), and are not "unusable": name each kind
    note = f" after skipping {skipped} rows ({count_phrase(rows.skipped)})" if skipped else ""
    present = {name: n for name, n in rows.counts.items() if n > 0}
    if not present and not rows.skipped.get("conflicting_label"):
        raise MarketpulseError(
            f"no usable rows in {source.describe()} (skipped {count_phrase(rows.skipped)}); "
            "pass a source with non-empty text and labels"
        )
    if len(present) < 2:
        found = ", ".join(f"{k!r}" for k in present) or "none"
        # texts repeated with conflicting labels were dropped: their labels are the fix
        fix = (
            "give each repeated text one label, or pass a different --label-col"
            if rows.skipped.get("conflicting_label")
            else "pass a different --label-col"
        )
        raise MarketpulseError(
            f"column {source.label_col!r} has {len(present)} distinct label(s) (found: {found})"
            f"{note}; training needs at least two classes, {fix}"
        )
    column = source.label_col
    for name, n in rows.counts.items():
        if n >= min_per_class:
            continue
        if n and name in rows.literals:  # filtering the rows out works for any label
            where = f"{sql_name(column)} <> {rows.literals[name]}"
            fix = "add rows or leave that label out with --query, e.g. " + query_flag(
                f"SELECT ... WHERE {where}"
            )
        elif not rows.named_by_position:  # a name only --label-names gave: leave it out
            fix = "add rows with that label or leave it out of --label-names"
        else:  # --label-names names integers by position: a name cannot just be left out
            value = source.label_names.index(name) if source.label_names else name
            fix = (
                f"add rows with {sql_name(column)} = {value}, or pass --label-names with one "
                f"name per value {column!r} holds"
            )
        raise MarketpulseError(
            f"label {name!r} has only {n} usable rows{note}; each class needs at least "
            f"{min_per_class} to appear in train, validation and test; {fix}"
        )
