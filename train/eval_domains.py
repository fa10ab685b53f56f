"""The domains of an evaluate report: labeled sources under short names, each with its map.

`build_domains` makes the --table/--query/--input source (named by --name, else by
`default_name`) and every `--domain NAME=SOURCE` (`parse_domain`: SOURCE is a SQL SELECT
or a file path) into `Domain`s, and gives each the label map that `--label-map
[DOMAIN:]FROM=TO,...` sets for it (`parse_label_map`). A spec that does not parse is an
error showing the form to pass. Nothing is read here: `evaluate` reads the sources.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from marketpulse.errors import MarketpulseError
from marketpulse.sources import Flags
from marketpulse.train.data import DataSource

_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# A --domain SOURCE starting with one of these is SQL; anything else is a file path.
_SQL_START = re.compile(r"^\s*\(?\s*(select|with|from|values)\s", re.IGNORECASE)
_FILE_SUFFIXES = (".gz", ".csv", ".tsv", ".txt", ".parquet", ".pq")
_DOMAIN_EXAMPLE = '--domain reviews=reviews.csv or --domain "reviews=SELECT text, label FROM t"'
# A --domain's file or SELECT comes from --domain, so its errors name that flag.
DOMAIN_FLAGS = Flags(table="--domain", query="--domain", input="--domain")


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
    return Domain(name, source, flags=DOMAIN_FLAGS)


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
