"""Score labeled tables with a trained model and report the training metrics.

The model is either a `marketpulse train` checkpoint (scored with PyTorch through
`predict.predict_logits`) or an exported bundle (a directory with manifest.json,
scored with the shared ONNX `Predictor`, so no torch is needed for that path).
Integer labels in the table are named by `--label-names` (0 -> the first name ...),
unless they match its names as written; a model whose labels are integers' own names
("1", "2", "3": train without --label-names) knows each integer by its value, and one
whose labels include some of the table's ("1" of "1", "2", "unsure") knows those as
written; `--label-map` renames a table's labels (integers included) onto the model's.
Otherwise integers are read as positions in the model's own label order, which is right
only if the table was labeled in that order, so a stderr line says so and the result
records it (`integer_labels`, also set when --label-names named them by position). A
value that no position names (negative, or past the last) is an error naming the fix
that works: `--label-map` with every value.

`evaluate` scores one table. `evaluate_domains` scores several named tables (domains)
with the model loaded once, and sets each beside the training domain: the checkpoint's
own test metrics (metrics.json `test`), or what a bundle's manifest kept of them
(`checks.pytorch`: macro-F1 on the test split, no accuracy). A model that records
neither is compared with the first domain, and the report says so.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from marketpulse.bundle import MANIFEST, read_manifest
from marketpulse.checkpoint import CONFIG, METRICS, Checkpoint, load_checkpoint
from marketpulse.errors import MarketpulseError
from marketpulse.metrics import classification_metrics, format_metrics, labels_are
from marketpulse.sources import Flags
from marketpulse.train.data import (
    DataSource,
    LabeledRows,
    UnnamedValue,
    count_phrase,
    load_labeled,
    query_flag,
    sql_name,
)

_INTEGER = re.compile(r"^-?[0-9]+$")
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# A --domain SOURCE starting with one of these is SQL; anything else is a file path.
_SQL_START = re.compile(r"^\s*\(?\s*(select|with|from|values)\s", re.IGNORECASE)
_FILE_SUFFIXES = (".gz", ".csv", ".tsv", ".txt", ".parquet", ".pq")
_DOMAIN_EXAMPLE = '--domain reviews=reviews.csv or --domain "reviews=SELECT text, label FROM t"'
# A --domain's file or SELECT comes from --domain, so its errors name that flag.
_DOMAIN_FLAGS = Flags(table="--domain", query="--domain", input="--domain")


@dataclasses.dataclass(frozen=True)
class Domain:
    """One labeled source in a cross-domain report, under a short name."""

    name: str
    source: DataSource
    label_map: tuple[tuple[str, str], ...] = ()
    flags: Flags = Flags()  # the flags that name `source`, for error messages


def parse_domain(spec: str, *, db: str | None, text_col: str, label_col: str) -> Domain:
    """`NAME=SOURCE` -> Domain; SOURCE is a SQL SELECT (on `db`, or in memory) or a file."""
    name, sep, where = spec.partition("=")
    name, where = name.strip(), where.strip()
    if not sep or not where or not _DOMAIN_NAME.match(name):
        raise MarketpulseError(
            f"--domain {spec[:80]!r} is not NAME=SOURCE (NAME: letters, digits, _ . -; SOURCE: "
            f"a CSV/TSV/Parquet path or a SELECT); pass e.g. {_DOMAIN_EXAMPLE}"
        )
    if _SQL_START.match(where):
        source = DataSource(db=db, query=where, text_col=text_col, label_col=label_col)
    else:
        source = DataSource(input=where, text_col=text_col, label_col=label_col)
    return Domain(name, source, flags=_DOMAIN_FLAGS)


def default_name(source: DataSource) -> str:
    """The name a --table/--query/--input source goes by: table name, file stem, or query."""
    if source.table:
        return source.table
    if source.input:
        name = Path(source.input).name
        for suffix in _FILE_SUFFIXES:
            name = name.removesuffix(suffix)
        return name if _DOMAIN_NAME.match(name) else "input"
    return "query"


def parse_label_map(values: Sequence[str]) -> dict[str | None, dict[str, str]]:
    """`["positive=bullish,negative=bearish", "news:up=bullish"]` -> {None: {...}, "news": {...}}.

    A map without a `DOMAIN:` prefix applies to every domain; a prefixed one to that
    domain only, overriding the shared map where both name a label.
    """
    maps: dict[str | None, dict[str, str]] = {}
    for value in values:
        domain, body = None, value
        head = value.partition("=")[0]
        if ":" in head:
            domain, body = (part.strip() for part in value.split(":", 1))
        pairs = [item.partition("=") for item in body.split(",")]
        if not body.strip() or any(
            not a.strip() or not sep or not b.strip() for a, sep, b in pairs
        ):
            raise MarketpulseError(
                f"--label-map {value!r} is not [DOMAIN:]FROM=TO,...; pass e.g. "
                "--label-map positive=bullish,negative=bearish"
            )
        target = maps.setdefault(domain, {})
        for a, _, b in pairs:
            target[a.strip()] = b.strip()
    return maps


def build_domains(
    first: DataSource | None,
    first_name: str | None,
    specs: Sequence[str],
    label_maps: Sequence[str],
    *,
    db: str | None,
    text_col: str,
    label_col: str,
) -> list[Domain]:
    """The domains of one report: `first` (the --table/--query/--input source), then --domain."""
    domains = [Domain(first_name or default_name(first), first)] if first else []
    domains += [parse_domain(s, db=db, text_col=text_col, label_col=label_col) for s in specs]
    names = [d.name for d in domains]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MarketpulseError(
            f"domain name {repeated[0]!r} is used twice; give each --domain (and --name) its own"
        )
    maps = parse_label_map(label_maps)
    unknown = sorted(set(maps) - {None, *names})
    if unknown:
        raise MarketpulseError(
            f"--label-map names domain {unknown[0]!r} but the domains are {', '.join(names)}; "
            "fix the DOMAIN: prefix or drop it to map every domain"
        )
    return [
        dataclasses.replace(
            d, label_map=tuple({**maps.get(None, {}), **maps.get(d.name, {})}.items())
        )
        for d in domains
    ]


def _open_model(model: str | Path, variant: str | None):
    """(directory, is_bundle, labels, checkpoint or None), checked before any data is read."""
    model_dir = Path(model)
    if not model_dir.is_dir():
        raise MarketpulseError(
            f"model directory {model_dir} not found; pass --model with an existing directory"
        )
    is_bundle = (model_dir / MANIFEST).is_file()
    if not is_bundle and not (model_dir / CONFIG).is_file():
        raise MarketpulseError(
            f"{model_dir} is neither a checkpoint ({CONFIG}) nor a bundle ({MANIFEST}); "
            "pass --model with a `marketpulse train` or `marketpulse export` output directory"
        )
    if variant and not is_bundle:
        raise MarketpulseError(
            f"--variant applies to exported bundles but {model_dir} is a checkpoint; "
            "drop --variant or pass --model with a bundle directory"
        )
    if is_bundle:
        return model_dir, True, list(read_manifest(model_dir)["labels"]), None
    checkpoint = load_checkpoint(model_dir)
    return model_dir, False, list(checkpoint.labels), checkpoint


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


def _position_note(labels: list[str], domain: str | None, flagged: str | None) -> str:
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


def _load_rows(
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


class _Scorer:
    """The model, loaded once, scoring any number of text lists into (n, labels) scores."""

    def __init__(self, model_dir, checkpoint: Checkpoint | None, *, variant, device, max_length):
        if checkpoint is None:
            from marketpulse.bundle import load_bundle
            from marketpulse.inference.predictor import Predictor

            bundle = load_bundle(model_dir)
            self._predictor = Predictor(bundle, variant=variant, device=device)
            self.labels = bundle.labels
            self.info = {
                "kind": "bundle",
                "model_version": bundle.version,
                "variant": self._predictor.variant,
                "provider": self._predictor.provider,
                "reason": self._predictor.describe(),
                "max_length": bundle.max_length,
            }
            return
        from marketpulse.train.predict import load_model, resolve_device

        self._device, _, reason = resolve_device(device, precision="fp32")
        self._model, self._tokenizer = load_model(checkpoint, self._device)
        self._max_length = max_length or checkpoint.max_length
        self.labels = list(checkpoint.labels)
        self.info = {
            "kind": "checkpoint",
            "device": self._device,
            "reason": f"PyTorch on {self._device}: {reason}",
            "max_length": self._max_length,
        }

    def __call__(self, texts: list[str], batch_size: int):
        if self.info["kind"] == "bundle":
            return self._predictor.predict_proba(list(texts))
        from marketpulse.train.predict import predict_logits

        return predict_logits(
            self._model,
            self._tokenizer,
            texts,
            max_length=self._max_length,
            batch_size=batch_size,
            device=self._device,
            progress=True,
        )


def _score(scorer: _Scorer, source: DataSource, rows: LabeledRows, batch_size: int) -> dict:
    started = time.perf_counter()
    scores = scorer(rows.texts, batch_size)
    elapsed = time.perf_counter() - started
    y_pred = [scorer.labels[i] for i in scores.argmax(axis=1)]
    return {
        "data": {"source": source.describe(), "fingerprint": rows.fingerprint()},
        "rows": {"read": rows.rows_read, "used": len(rows.texts), "skipped": rows.skipped},
        "predict_time_s": round(elapsed, 2),
        "rows_per_s": round(len(rows.texts) / max(elapsed, 1e-9), 1),
        "metrics": classification_metrics(rows.labels, y_pred, scorer.labels),
    }


def evaluate(
    model: str | Path,
    source: DataSource,
    *,
    label_map: dict[str, str] | None = None,
    variant: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    max_length: int | None = None,
) -> dict:
    """Return {"model", "data", "rows", "metrics", "integer_labels", ...} for `model` on
    `source`'s rows; `integer_labels` is how integer labels were named by position
    ({"named_by", "names": {"0": ...}}), or None."""
    model_dir, _, labels, checkpoint = _open_model(model, variant)
    rows, positions = _load_rows(source, labels, label_map or {})
    if positions and positions["named_by"] != "--label-names":
        print(_position_note(labels, None, None), file=sys.stderr)
    scorer = _Scorer(model_dir, checkpoint, variant=variant, device=device, max_length=max_length)
    scored = _score(scorer, source, rows, batch_size)
    return {"model": str(model_dir), **scorer.info, **scored, "integer_labels": positions}


def _reference(kind: str, name: str, source: str, figures: dict) -> dict:
    """What gaps are measured from; `figures` is a metrics dict (accuracy may be absent)."""
    return {
        "kind": kind,
        "name": name,
        "source": source,
        "rows": figures.get("n"),
        "accuracy": figures.get("accuracy"),
        "macro_f1": figures["macro_f1"],
        "majority_baseline": figures.get("majority_baseline"),
    }


def _training_reference(model_dir: Path, checkpoint: Checkpoint | None) -> dict | None:
    """The training domain's test figures as the model recorded them, or None."""
    if checkpoint is None:
        checks = read_manifest(model_dir).get("checks") or {}
        pytorch = checks.get("pytorch") or {}  # export records rows and macro-F1 only
        if "macro_f1" not in pytorch:
            return None
        texts = checks.get("texts", "its test split")
        source = f"{MANIFEST} checks: the checkpoint on {texts}"
        return _reference("training", "training", source, {**pytorch, "n": pytorch.get("rows")})
    test = (checkpoint.metrics or {}).get("test")
    if not test:
        return None
    return _reference("training", "training", f"{METRICS} test split", test)


def _gap(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def evaluate_domains(
    model: str | Path,
    domains: Sequence[Domain],
    *,
    variant: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    max_length: int | None = None,
) -> dict:
    """Score every domain with one loaded model; per-domain metrics, baselines and gaps.

    Every table is read before the model loads, so a bad source fails in seconds.
    Gaps are domain minus reference (negative: worse than on the training domain).
    """
    if not domains:
        raise MarketpulseError("no domains to evaluate; pass --input/--table/--query or --domain")
    model_dir, _, labels, checkpoint = _open_model(model, variant)
    loaded = []
    for domain in domains:
        # a --domain source has no --label-names: its integers are named by --label-map
        flagged = domain.name if domain.flags == _DOMAIN_FLAGS else None
        try:
            rows, positions = _load_rows(
                domain.source, labels, dict(domain.label_map), domain.flags, flagged
            )
        except MarketpulseError as exc:
            raise MarketpulseError(f"domain {domain.name!r}: {exc}") from exc
        loaded.append((domain, rows, positions))
    for domain, _, positions in loaded:  # every table read: say how before the model loads
        if positions and positions["named_by"] != "--label-names":
            flagged = domain.name if domain.flags == _DOMAIN_FLAGS else None
            print(_position_note(labels, domain.name, flagged), file=sys.stderr)
    scorer = _Scorer(model_dir, checkpoint, variant=variant, device=device, max_length=max_length)
    results = [
        {"name": d.name, **_score(scorer, d.source, rows, batch_size), "integer_labels": positions}
        for d, rows, positions in loaded
    ]
    reference = _training_reference(model_dir, checkpoint)
    if reference is None:
        source = "first domain: the model records no training test metrics"
        reference = _reference("first_domain", results[0]["name"], source, results[0]["metrics"])
    for result in results:
        m = result["metrics"]
        result["gap"] = {
            "accuracy": _gap(m["accuracy"], reference["accuracy"]),
            "macro_f1": _gap(m["macro_f1"], reference["macro_f1"]),
        }
    summary = [
        {
            "domain": r["name"],
            "rows": r["metrics"]["n"],
            "accuracy": r["metrics"]["accuracy"],
            "macro_f1": r["metrics"]["macro_f1"],
            "baseline_accuracy": r["metrics"]["majority_baseline"]["accuracy"],
            "baseline_macro_f1": r["metrics"]["majority_baseline"]["macro_f1"],
            "gap_accuracy": r["gap"]["accuracy"],
            "gap_macro_f1": r["gap"]["macro_f1"],
        }
        for r in results
    ]
    return {
        "model": str(model_dir),
        **scorer.info,
        "reference": reference,
        "domains": results,
        "summary": summary,
    }


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
    width = max(12, *(len(r[0]) for r in rows))
    heads = ("rows", "accuracy", "macro-F1", "base acc", "base F1", "gap acc", "gap F1")
    lines = [note, f"{'domain':<{width}} " + " ".join(f"{h:>9}" for h in heads)]
    for name, *values in rows:
        cells = [_cell(v, 9, signed=i >= 5) for i, v in enumerate(values)]
        lines.append(f"{name:<{width}} " + " ".join(cells))
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
