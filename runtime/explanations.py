"""`explain_table(ExplainConfig) -> ExplainStats`: per-word weights for table rows, stored.

The rows (`--where`, `--limit`) are read on one read-only session, explained by
`marketpulse.inference.explain` (leave-one-word-out occlusion on a bundle graph) and
written to the `explanations` table beside the scores (in `--results-db` when given,
the source file attached read-only; else in the source file), one row per word weighed.
Rows whose text is NULL or blank (marketpulse.text) are skipped, as `score` skips them,
and counted per reason as `score` counts them (`ExplainStats.skipped`):

    explanations(id VARCHAR, model_version, label, word, position, weight, explained_at,
                 source, variant, source_db)

`id` is the source id as DuckDB casts it to text (`CAST(id AS VARCHAR)`), so tables
with any id type share the table; join it back with `e.id = CAST(p.id AS VARCHAR)`.
A TIMESTAMPTZ id is rendered in UTC (`2026-05-28 20:56:40+00`) whatever the machine's or
session's time zone (`id_text_sql`), so runs under any TZ store, and replace, one id per
row; join it back with the session's TimeZone set to 'UTC'.
`source` is the table as named (`runs.source` spells it the same way), `source_db` the
source file's resolved path (one results file may hold the explanations of several
source files), `variant` the graph that was explained. `label` is the label the weights explain (the predicted one);
`position` is the word's 0-based index in the text. Only the words that were deleted in
turn are stored (`Explanation.occluded`: the first 96 the model sees); the rest weigh 0
and get no row. Words that are personal data are stored as their placeholder
(`<EMAIL>`, marketpulse.privacy), never as written. A rerun replaces the rows of the
ids it explains for this source table and file and model version; rows from before
`source` was recorded (NULL there) are kept as they are. An `explanations` table from before gets
the columns added (NULL in its rows) and its `id` turned to VARCHAR.

The graph: `variant` names one; by default each row is explained by the graph that
scored it for this model version (`runs.variant` of its row in the results table, via
`run_id`), so the explanation is of the label the row has, and rows without a recorded
score by the CPU preference (int8 where the bundle has a passing one). A CUDA graph
(fp16) that scored a row is replaced by fp32 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from marketpulse import variants as registry
from marketpulse.bundle import load_bundle
from marketpulse.errors import MarketpulseError, first_line
from marketpulse.inference.explain import Explanation, explain
from marketpulse.inference.predictor import cuda_provider_available
from marketpulse.results_schema import EXPLANATION_COLUMNS, EXPLANATIONS, RUNS, SCORES
from marketpulse.runtime import results
from marketpulse.runtime.database import Database
from marketpulse.runtime.results import utcnow
from marketpulse.runtime.source import Source, check_source, low_memory, reading
from marketpulse.sql import DEFAULT_STORAGE_VERSION, quote_ident, quote_table
from marketpulse.text import blank_sql

DEFAULT_LIMIT = 20  # rows explained per call (the CLI's --limit default)
SCORED = None  # ExplainConfig.variant: the graph that scored each row


@dataclass(frozen=True)
class ExplainConfig:
    db: Path
    table: str
    id_col: str
    text_col: str
    bundle: Path
    where: str | None = None
    limit: int = DEFAULT_LIMIT
    device: str = "cpu"
    memory_limit: str = "512MB"
    lock_timeout: float = 60.0
    # None: per row, the graph that scored it (runs.variant), else the CPU preference
    variant: str | None = SCORED
    # where the rows' scores are looked up (as `score` wrote them); None: in `db`
    results_db: Path | None = None
    results_table: str = SCORES


@dataclass
class ExplainStats:
    rows: int
    words: int  # words weighed (deleted in turn) and stored
    model_version: str
    table: str = EXPLANATIONS
    variants: dict[str, int] = field(default_factory=dict)  # rows explained per graph
    # rows passed over for a blank text (`_count_skipped`), per reason as `score` counts them
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)  # null_text, empty_text
    # rows whose scores by this model were not found in the results table: explained by
    # the device's default graph, which may not be the one that scored them
    unscored: int = 0
    results_table: str = SCORES

    def summary(self, db) -> str:
        graphs = ", ".join(f"{n:,} by {v}" for v, n in sorted(self.variants.items()))
        graphs = f"; {graphs}" if graphs else ""
        unscored = (
            f"; {self.unscored:,} not scored by this model in {self.results_table}, so "
            "explained by the default graph (pass --results-table, or --variant)"
            if self.unscored
            else ""
        )
        reasons = ", ".join(f"{n:,} {r}" for r, n in sorted(self.skipped_reasons.items()) if n)
        reasons = f" ({reasons})" if reasons else ""
        return (
            f"explained {self.rows:,} row{'s' * (self.rows != 1)} "
            f"({self.words:,} word{'s' * (self.words != 1)} weighed{graphs}), "
            f"skipped {self.skipped:,} blank{reasons} -> "
            f"{self.table} in {db} (model {self.model_version}){unscored}"
        )


def masked_words(e: Explanation) -> list[str]:
    """The explanation's words, each one inside personal data replaced by its placeholder."""
    from marketpulse import privacy

    spans = privacy.find(e.text)
    out = []
    for w in e.words:
        span = privacy.masked_span(spans, w.start, w.end)
        out.append(w.text if span is None else span.placeholder)
    return out


def _check_explanations(con) -> dict[str, str] | None:
    """The existing explanations table's {column: type} (None: none yet); refuse one
    that is not marketpulse's, before any inference runs."""
    kind = results.table_kind(con, EXPLANATIONS)
    if kind not in (None, "BASE TABLE"):
        raise MarketpulseError(
            f"{EXPLANATIONS!r} in {_path(con)} is a {kind.lower()}, not the table explain "
            "writes to; rename or drop it"
        )
    have = results._columns(con, quote_ident(EXPLANATIONS))
    first = ("id", "model_version", "label", "word", "position", "weight", "explained_at")
    if have is not None and not set(first) <= set(have):
        missing = ", ".join(c for c in first if c not in have)
        raise MarketpulseError(
            f"table {EXPLANATIONS!r} in {_path(con)} is not marketpulse's explanations "
            f"table (lacks {missing}); rename or drop it"
        )
    return have


def _path(con) -> str:
    row = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return row[0] if row and row[0] else "the database"


def _prepare_explanations(con, have: dict[str, str] | None) -> None:
    """Create the table, or bring one from before up to date (columns added, NULL in
    its rows; `id` turned to VARCHAR so ids of any type fit)."""
    table = quote_ident(EXPLANATIONS)
    if have is None:
        cols = ", ".join(f"{quote_ident(c)} {t}" for c, t in EXPLANATION_COLUMNS.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")
        return
    if have["id"] != "VARCHAR":
        con.execute(f"ALTER TABLE {table} ALTER id TYPE VARCHAR")
    for col, sql_type in EXPLANATION_COLUMNS.items():
        if col not in have:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(col)} {sql_type}")


_TIMESTAMPTZ = ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ")


def id_text_sql(expr: str, id_type: str) -> str:
    """SQL for the stored text of an id: `CAST(expr AS VARCHAR)`, except that a TIMESTAMPTZ
    is rendered as that cast renders it under TimeZone 'UTC' (`... 20:56:40+00`), not in
    the session's zone (which DuckDB takes from the machine's TZ). The session itself is
    left alone: `--where` reads times in it, as `score` does."""
    if id_type.upper() not in _TIMESTAMPTZ:
        return f"CAST({expr} AS VARCHAR)"
    # timezone('UTC', x) is the UTC wall clock as a TIMESTAMP: its text plus '+00' is the
    # UTC rendering, BC dates and 5-digit years included; infinities render alike anywhere
    return (
        f"CASE WHEN isfinite({expr}) THEN CAST(timezone('UTC', {expr}) AS VARCHAR) || '+00' "
        f"ELSE CAST({expr} AS VARCHAR) END"
    )


def _scored_variants(
    cfg: ExplainConfig, raw_ids: list, id_type: str, version: str
) -> dict[str, tuple[str, float | None]]:
    """{id as text: (the variant that scored it for `version`, the run's rescore margin,
    None where not recorded)} for the ids with a score recorded by a run over this table
    (scores.run_id -> runs.variant, runs.rescore_margin)."""
    results_db = Path(cfg.results_db) if cfg.results_db else Path(cfg.db)
    if not raw_ids or not results_db.is_file():
        return {}
    db = Database(results_db, None, cfg.memory_limit, cfg.lock_timeout, DEFAULT_STORAGE_VERSION)
    with db.read() as con:
        scores = results._columns(con, quote_table(cfg.results_table))
        runs = results._columns(con, quote_ident(RUNS))
        if not scores or not runs or "run_id" not in scores or scores.get("id") != id_type:
            return {}  # nothing recorded, or another table's scores (ids of another type)
        results_col = "r.results_db" if "results_db" in runs else "NULL"
        margin_col = "r.rescore_margin" if "rescore_margin" in runs else "NULL"
        rows = con.execute(
            f"SELECT {id_text_sql('s.id', id_type)}, r.variant, {margin_col}, r.source, "
            f"r.source_db, {results_col} "
            f"FROM {quote_table(cfg.results_table)} AS s JOIN {quote_ident(RUNS)} AS r "
            "ON r.run_id = s.run_id WHERE s.model_version = ? AND s.id IN (SELECT unnest(?))",
            [version, raw_ids],
        ).fetchall()
    source_db, here = str(Path(cfg.db).resolve()), str(results_db.resolve())
    return {
        row_id: (variant, margin)
        for row_id, variant, margin, *run_row in rows
        if variant and results.scored_this_source(tuple(run_row), cfg.table, source_db, here)
    }


def _graph_for(variant: str | None, device: str, bundle) -> str | None:
    """The graph to explain a row scored by `variant` with (None: the device preference)."""
    if variant is None or variant not in registry.VARIANTS:
        return None
    # --device auto without a CUDA provider runs on the CPU as well
    on_cpu = device == "cpu" or (device == "auto" and not cuda_provider_available())
    if on_cpu and registry.get(variant).device == "cuda":
        variant = registry.REFERENCE  # fp16 runs on CUDA only; fp32 is what it approximates
    try:
        bundle.variant_path(variant)
    except MarketpulseError:
        return None
    return variant


def _count_skipped(con, source: Source, limit: int) -> dict[str, int]:
    """{null_text: n, empty_text: n}: the rows the filter keeps that explain passed over
    for a blank text on its way to the `limit` rows it explains (the first in id order
    with text), so that a table whose first rows are blank says why fewer, or later, ids
    were explained. Blank rows past the last row explained were not reached and are not
    counted; when fewer than `limit` rows have text, every blank row is."""
    ident, text = quote_ident(source.id_col), quote_ident(source.text_col)
    picked = (
        f"SELECT s.{ident} AS id FROM {source.table_sql} AS s WHERE {source.where_sql} "
        f"AND NOT {blank_sql('s.' + text)} ORDER BY s.{ident} LIMIT ?"
    )
    # the last id compared inside DuckDB, in the column's own order (collation, ENUM); a
    # derived table, not a CTE, whose name could hide a source table of the same name
    nulls, blanks = con.execute(
        f"SELECT count(*) FILTER (WHERE s.{text} IS NULL), count(s.{text}) "
        f"FROM {source.table_sql} AS s, "
        f"(SELECT count(*) AS n, max(id) AS last FROM ({picked}) AS q) AS p "
        f"WHERE {source.where_sql} AND (s.{text} IS NULL OR {blank_sql('s.' + text)}) "
        f"AND (p.n < ? OR s.{ident} < p.last)",
        [*source.where_params, int(limit), *source.where_params, int(limit)],
    ).fetchone()
    return {"null_text": int(nulls), "empty_text": int(blanks)}


def explain_table(cfg: ExplainConfig, on_row=None) -> ExplainStats:
    """Explain up to `cfg.limit` rows; `on_row(id, explanation, words)` sees each one."""
    import duckdb

    from marketpulse import privacy
    from marketpulse.inference.predictor import Predictor

    if cfg.limit < 1:
        raise MarketpulseError(f"--limit must be at least 1, got {cfg.limit}")
    if cfg.variant is not None:
        registry.get(cfg.variant)  # an unknown name: say so before anything runs
    if cfg.results_db is not None and not Path(cfg.results_db).is_file():
        raise MarketpulseError(
            f"--results-db {cfg.results_db} not found; pass the file `marketpulse score "
            "--results-db` wrote the scores to (leave it out when they are in --db)"
        )
    privacy.find("")  # the masking extra is missing: say so before any inference runs
    bundle = load_bundle(Path(cfg.bundle))
    # explanations go beside the scores: into --results-db when given (the source
    # attached read-only, as score reads it), else into --db
    results_db = Path(cfg.results_db) if cfg.results_db else None
    db = Database(
        Path(cfg.db), results_db, cfg.memory_limit, cfg.lock_timeout, DEFAULT_STORAGE_VERSION
    )
    db.prepare()
    with db.read() as con, low_memory(con, cfg.memory_limit):
        source = check_source(con, cfg.table, cfg.id_col, cfg.text_col, cfg.where, db.attached)
        have = _check_explanations(con)
        ident, text = quote_ident(source.id_col), quote_ident(source.text_col)
        with reading(cfg.table, cfg.where):
            rows = con.execute(
                f"SELECT s.{ident}, {id_text_sql('s.' + ident, source.id_type)}, s.{text} "
                f"FROM {source.table_sql} AS s WHERE {source.where_sql} "
                f"AND NOT {blank_sql('s.' + text)} ORDER BY s.{ident} LIMIT ?",
                [*source.where_params, int(cfg.limit)],
            ).fetchall()
            skipped = _count_skipped(con, source, cfg.limit)
    ids = [r[1] for r in rows]
    if cfg.variant is None:
        try:
            scored = _scored_variants(cfg, [r[0] for r in rows], source.id_type, bundle.version)
        except duckdb.Error as exc:  # a results table of another shape
            raise MarketpulseError(
                f"cannot read which graph scored the rows from {cfg.results_table!r} "
                f"({first_line(exc)[:200]}); pass --variant to name the graph"
            ) from exc
        # each row with the graph, and the rescore margin, of the run that scored it
        runs = [scored.get(i, (None, None)) for i in ids]
        plans = [(_graph_for(v, cfg.device, bundle), m) for v, m in runs]
        unscored = sum(1 for v, _ in runs if v is None)
    else:
        plans, unscored = [(cfg.variant, None)] * len(ids), 0
    explanations: list[Explanation | None] = [None] * len(ids)
    graphs: list[str | None] = [graph for graph, _ in plans]
    used: dict[str, int] = {}
    for plan in dict.fromkeys(plans):  # one Predictor per graph and margin, first-use order
        index = [i for i, p in enumerate(plans) if p == plan]
        graph, margin = plan
        predictor = Predictor(bundle, variant=graph, device=cfg.device, rescore_margin=margin)
        for i, e in zip(index, explain(predictor, [rows[i][2] for i in index]), strict=True):
            explanations[i] = e
        used[predictor.variant] = used.get(predictor.variant, 0) + len(index)
        for i in index:
            graphs[i] = predictor.variant
    records: list[tuple] = []
    now, source_db = utcnow(), str(Path(cfg.db).resolve())
    for row_id, e, graph in zip(ids, explanations, graphs, strict=True):
        words = masked_words(e)
        if on_row is not None:
            on_row(row_id, e, words)
        # the occluded words only: the rest were not weighed (weight 0 by definition)
        records += [
            (
                row_id,
                bundle.version,
                e.label,
                word,
                w.position,
                w.weight,
                now,
                cfg.table,
                graph,
                source_db,
            )  # fmt: skip
            for word, w in zip(words[: e.occluded], e.words[: e.occluded], strict=True)
        ]
    zoned = source.id_type.upper() in _TIMESTAMPTZ
    _write(db, have, records, ids, bundle.version, cfg.table, source_db, zoned)
    return ExplainStats(
        rows=len(ids),
        words=len(records),
        model_version=bundle.version,
        variants=used,
        skipped=sum(skipped.values()),
        skipped_reasons=skipped,
        unscored=unscored,
        results_table=cfg.results_table,
    )


def _write(
    db: Database,
    have,
    records: list[tuple],
    ids: list[str],
    version: str,
    table: str,
    source_db: str,
    zoned: bool = False,
):
    """Replace this source's rows for `ids` and `version` by `records`, in one transaction:
    its table in its file (rows without a file, from before it was recorded, were written
    into the source file itself, so they count as that file's). `zoned`: the ids are
    TIMESTAMPTZ, so a row stored by an earlier version in another time zone
    (`...05:56:40+09`) is the same id as its UTC text, and replaced too."""
    import pyarrow as pa

    types = {"position": pa.int32(), "weight": pa.float64(), "explained_at": pa.timestamp("us")}
    columns = list(zip(*records, strict=True)) if records else [()] * len(EXPLANATION_COLUMNS)
    chunk = pa.table(
        {
            c: pa.array(values, types.get(c, pa.string()))
            for c, values in zip(EXPLANATION_COLUMNS, columns, strict=True)
        }
    )
    with db.write() as con:
        _prepare_explanations(con, have)
        name = quote_ident(EXPLANATIONS)
        con.execute("BEGIN TRANSACTION")
        if ids:
            # the table as DuckDB resolves its name (`posts`, `POSTS` and `main.posts` are
            # one; `"Market Posts"` is Market Posts): its spellings recorded here
            recorded = con.execute(
                f"SELECT DISTINCT source FROM {name} WHERE model_version = ? "
                "AND source IS NOT NULL AND coalesce(source_db, ?) = ?",
                [version, source_db, source_db],
            ).fetchall()
            key = results.table_key(table)
            spellings = [s for (s,) in recorded if results.table_key(s) == key]
            same_id = "id IN (SELECT unnest(?))"
            if zoned:  # the same instant, whatever zone its text was written in
                same_id = (
                    f"({same_id} OR TRY_CAST(id AS TIMESTAMPTZ) IN "
                    "(SELECT TRY_CAST(unnest(?) AS TIMESTAMPTZ)))"
                )
            con.execute(
                f"DELETE FROM {name} WHERE model_version = ? AND {same_id} "
                "AND source IN (SELECT unnest(?)) AND coalesce(source_db, ?) = ?",
                [version, ids, *([ids] if zoned else []), spellings, source_db, source_db],
            )
        con.register("_marketpulse_explanations", chunk)
        try:
            con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _marketpulse_explanations")
        finally:
            con.unregister("_marketpulse_explanations")
        con.execute("COMMIT")
