"""SQL that turns scores into trends; every statement here runs inside DuckDB.

Two objects are built, both queryable from any SQL client:

- `latest_<scores>` (a VIEW): one row per id, the score of the newest model version
  that scored it (newest by `models.registered_at`), so a re-score never double counts.
- `trend_<source>_<grain>` (a TABLE, rebuilt on each run): one row per group x time
  bucket, every bucket from the first to the last one present, empty ones included.
  <source> is the table's name, after its schema when that is not main (`table_name`).

Buckets are cut at UTC: `bucket_sql` expects the connection's TimeZone to be 'UTC'
(the stage sets it), so a TIMESTAMPTZ or an ISO text with an offset lands in the bucket
of its UTC instant on every machine.

This module only builds SQL text. Identifiers pass through `marketpulse.sql`; label
values travel as bound parameters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from marketpulse.errors import MarketpulseError
from marketpulse.results_schema import MODELS, sanitize
from marketpulse.sql import ascii_fold, quote_ident, quote_table, spell_table, split_table

GRAINS = ("day", "week", "month")
MAX_WINDOW = 104  # the p-value SQL grows with the window (one branch per degree of freedom)
# Non-empty trailing buckets a z-score needs: with 2, t has 1 degree of freedom and a flag
# at alpha 0.01 would need |z| >= 64, so a shorter window could never flag anything.
MIN_HISTORY = 3

# Columns the trend table adds; a --by column with one of these names would collide.
TREND_COLUMNS = (
    "bucket",
    "volume",
    "net_index",
    "index_rolling",
    "index_change",
    "trailing_mean",
    "z_score",
    "p_value",
    "is_shift",
    "forecast_next",
    "forecast_low",
    "forecast_high",
)
# Columns of the forecast and backtest tables (`forecast_tables.write_forecasts`), after
# the --by columns: with forecasts, a --by column with one of these names collides too.
FORECAST_COLUMNS = ("bucket", "step", "model", "forecast", "lo_80", "hi_80", "lo_95", "hi_95")
BACKTEST_COLUMNS = ("model", "step", "mae", "mase", "coverage_80", "coverage_95", "points",
                    "coverage_points", "chosen")  # fmt: skip

# The trailing spread is floored at this fraction of the trailing buckets' sampling standard
# error at their pooled label shares: it guards against a spread of ~0 by chance (identical
# trailing buckets). Measured with tools/shift_eval.py: 0.5 detects as much as 0.2 did at
# the default window with fewer false alarms; 1.0 loses detection (README).
SPREAD_FLOOR = 0.5

# A side (positive or negative) expected fewer than this many times in a bucket (volume x
# its pooled trailing share) is a count too small for the t p-value's normal approximation:
# one negative post among 20, against none in 160 trailing posts, reads z = -6.8 (p 0.0003)
# though a brand with 1% negative posts has one in 18% of its weeks. There p_value is also
# the exact tail of the side's count (`trend_table_sql`). 5 is the usual rule of thumb.
RARE_EXPECTED = 5
# That tail is summed exactly over at most this many counts (lgamma terms): where a count
# and its complement are both larger (a busy bucket's common side: 5,000 positive posts of
# 10,000 were 5,000 terms in every row) it is the small tail's first this many terms from
# the count outwards, plus a bound on the rest (`beta_binomial_tail_sql`): never below the
# exact tail, and within 1e-6 of it where the beta-binomial's sd is under ~150 (n = 15,000
# at a 10% share and a trailing window of 1,500 posts: sd 122); x1.0-1.15 above it for
# tails of 0.001-0.1 at an sd of 1,700 (10 million posts a bucket). The normal
# approximation used before was x0.51 at an exact tail of 0.001 in that skewed case.
EXACT_TERMS = 500


def latest_view_name(scores_table: str, database: Database | None = None) -> str:
    """`latest_<scores>`: the table's name alone in the main schema (`scores`:
    latest_scores), after its schema elsewhere (`s1.scores`: latest_s1_scores), so the
    scores of two schemas never share one view."""
    parts = source_parts(scores_table, database)
    if len(parts) == 2 and ascii_fold(parts[0]) == "main":
        parts = parts[1:]
    return "latest_" + "_".join(name_part(p) for p in parts)


def name_part(part: str) -> str:
    """One part of a table name trends derives from a table's (`<kind>_<source>_<grain>`,
    `latest_<scores>`): A-Z lower-cased, any other letter or digit kept (`投稿`, `Börse`:
    every such name is quoted), anything else `_`. An ASCII name gives what `sanitize`
    gives (`My Posts`: my_posts), so those tables keep their names; label columns
    (`n_<label>`) still go through `sanitize`."""
    return re.sub(r"\W", "_", ascii_fold(part))


def is_plain_name(name: str) -> bool:
    """A table name trends can create: letters, digits and underscores, no schema."""
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name))


@dataclass(frozen=True)
class Database:
    """The --db file as DuckDB names it on the run's connection: its catalog name
    (`current_database()`, the file's stem) and its schemas (`duckdb_schemas()`), what a
    source's name resolves against (`source_parts`)."""

    name: str
    schemas: tuple[str, ...] = ()

    @classmethod
    def of(cls, con) -> Database:
        """The current database of `con` and its schemas, read from DuckDB's catalog."""
        rows = con.execute(
            "SELECT current_database(), list(schema_name ORDER BY schema_name) "
            "FROM duckdb_schemas() WHERE database_name = current_database()"
        ).fetchone()
        return cls(rows[0], tuple(rows[1] or ()))

    def has_schema(self, name: str) -> bool:
        return ascii_fold(name) in {ascii_fold(s) for s in self.schemas}


def source_parts(source: str, database: Database | None = None) -> list[str]:
    """`source` as [schema, table], or [catalog, schema, table] when it names a catalog
    other than `database` (the --db file's): `posts` and `main.posts` are [main, posts].
    Derived names and the trend tables' record of their source (`source_note`) use it.

    A name of two parts is read as DuckDB binds it: `x.posts` is schema x's table when
    the database has a schema x (DuckDB refuses the name when x is its own name too),
    else, when x is the database's own name (`market.posts` in market.duckdb), table posts
    of its main schema, the same table as `posts`. `database` comes from DuckDB's catalog
    (`Database.of`); without it a two-part name is schema.table."""
    parts = split_table(source)
    if database is not None and ascii_fold(parts[0]) == ascii_fold(database.name):
        if len(parts) == 3:
            parts = parts[1:]
        elif len(parts) == 2 and not database.has_schema(parts[0]):
            parts = ["main", parts[1]]
    return ["main", *parts] if len(parts) == 1 else parts


def table_name(kind: str, source: str, grain: str, database: Database | None = None) -> str:
    """`<kind>_<source>_<grain>`: the names of every table trends writes for a source
    (kind: trend, trend_drivers, forecast, forecast_backtest). A source in the main schema
    gives its table name alone (`posts`, `main.posts`: trend_posts_week); in another schema
    the schema comes first (`s1.posts`: trend_s1_posts_week), so that `s2.posts` does not
    write over it. `main.s1_posts` still gives the same name: `source_note` tells them
    apart."""
    parts = source_parts(source, database)
    if len(parts) == 2 and ascii_fold(parts[0]) == "main":
        parts = parts[1:]
    return f"{kind}_{'_'.join(name_part(p) for p in parts)}_{grain}"


def trend_table_name(source: str, grain: str, database: Database | None = None) -> str:
    return table_name("trend", source, grain, database)


# The comment every table trends writes carries: which source it was computed from.
SOURCE_NOTE = "marketpulse trends of "


def source_note(source: str, database: Database | None = None) -> str:
    """The comment of the tables built from `source` (`COMMENT ON TABLE`)."""
    return SOURCE_NOTE + spell_table(source_parts(source, database))


def same_source(note: str | None, source: str, database: Database | None = None) -> bool | None:
    """Whether a table's comment `note` names `source` as DuckDB resolves names (letter
    case of A-Z ignored, `main` implied); None when the comment is not a `source_note`
    (a table of an older marketpulse, or commented by hand)."""
    if not note or not note.startswith(SOURCE_NOTE):
        return None
    try:
        noted = source_parts(note[len(SOURCE_NOTE) :], database)
    except MarketpulseError:
        return None
    return [ascii_fold(p) for p in noted] == [ascii_fold(p) for p in source_parts(source, database)]


# The tables that depend on a trend table, named after it.
DEPENDENT_KINDS = ("forecast", "forecast_backtest", "trend_drivers")


def dependent_tables(trend_table: str) -> dict[str, str]:
    """{kind: table} of the tables explaining `trend_table`: `<kind>_<rest>`, where rest is
    the trend table's name without its `trend_` prefix. The default trend_posts_week gives
    forecast_posts_week, forecast_backtest_posts_week and trend_drivers_posts_week, and a
    second --trend-table gets its own set instead of overwriting the first one's."""
    rest = trend_table[len("trend_") :] if trend_table.lower().startswith("trend_") else ""
    return {kind: f"{kind}_{rest or trend_table}" for kind in DEPENDENT_KINDS}


def bucket_sql(grain: str, column_sql: str) -> str:
    """The bucket (a DATE) of a date/timestamp expression: start of its UTC day/week/month.

    Everything goes through TIMESTAMPTZ, read with the connection's TimeZone set to 'UTC':
    a TIMESTAMPTZ keeps its instant, ISO text with an offset ('...T12:00+14:00') is read
    at its instant (a plain cast to TIMESTAMP would drop the offset), and a DATE, a
    TIMESTAMP or text without an offset is taken as UTC wall-clock time, unchanged.
    """
    if grain not in GRAINS:
        raise ValueError(f"grain must be one of {GRAINS}")
    utc = f"CAST(CAST({column_sql} AS TIMESTAMPTZ) AS TIMESTAMP)"
    return f"CAST(date_trunc('{grain}', {utc}) AS DATE)"


def steps_sql(grain: str, n_sql: str) -> str:
    """An INTERVAL of `n_sql` buckets of `grain` (to_days / to_weeks / to_months)."""
    if grain not in GRAINS:
        raise ValueError(f"grain must be one of {GRAINS}")
    return f"to_{grain}s({n_sql})"


def latest_scores_sql(
    view: str, scores_table: str, models_table: str = MODELS, temporary: bool = False
) -> str:
    """The newest model version's score per id; ties broken by scored_at, then version.

    `temporary`: a view of this connection only (the tables are in an attached file that
    other clients of the database would not have)."""
    return f"""
CREATE OR REPLACE {"TEMP " if temporary else ""}VIEW {quote_ident(view)} AS
SELECT s.*, m.registered_at AS model_registered_at
FROM {quote_table(scores_table)} AS s
LEFT JOIN {quote_table(models_table)} AS m ON m.model_version = s.model_version
QUALIFY row_number() OVER (
    PARTITION BY s.id
    ORDER BY m.registered_at DESC NULLS LAST, s.scored_at DESC NULLS LAST, s.model_version DESC
) = 1
"""


def t_p_value_sql(t: str, df: str, dfs: range) -> str:
    """SQL for the two-sided p-value P(|T| >= |t|) of Student's t with integer `df` in `dfs`.

    DuckDB has no t distribution, so this is the closed form for integer degrees of
    freedom (Abramowitz & Stegun 26.7.3-4), a polynomial in cos^2(theta), theta =
    atan(|t| / sqrt(df)), written out per df. NULL when t is NULL or df is outside `dfs`.
    """
    a = f"abs({t})"
    branches = []
    for k in dfs:
        c2 = f"({k} / ({k} + {a} * {a}))"
        sin = f"({a} / sqrt({k} + {a} * {a}))"
        if k % 2 == 0:  # sin * sum_j (1*3*..*(2j-1)) / (2*4*..*2j) * cos^2j
            coefs = [
                math.prod((2 * i - 1) / (2 * i) for i in range(1, j + 1)) for j in range(k // 2)
            ]
            inside = f"{sin} * {_horner(coefs, c2)}"
        else:  # 2/pi * (theta + sin * cos * sum_j (2*4*..*2j) / (3*5*..*(2j+1)) * cos^2j)
            coefs = [
                math.prod(2 * i / (2 * i + 1) for i in range(1, j + 1)) for j in range((k - 1) // 2)
            ]
            series = f" + {sin} * sqrt({c2}) * {_horner(coefs, c2)}" if coefs else ""
            inside = f"2 / pi() * (atan({a} / sqrt({k})){series})"
        branches.append(f"WHEN {k} THEN {inside}")
    # greatest() skips NULLs, so the guard keeps a missing t NULL rather than 0
    return (
        f"CASE WHEN {t} IS NOT NULL AND {df} BETWEEN {dfs.start} AND {dfs.stop - 1} "
        f"THEN greatest(1 - CASE {df} {' '.join(branches)} END, 0) END"
    )


def beta_binomial_tail_sql(k: str, n: str, a: str, b: str, log_norm: str | None = None) -> str:
    """SQL for P(K >= k) of K ~ beta-binomial(n, a, b): how often at least k of n rows
    are of a kind whose rate is uncertain as Beta(a, b). With a and b a window's count
    of the kind and of the other rows plus the prior's, it is the chance of k or more in
    the next n rows, the rate's own uncertainty included. `k`, `n`, `a`, `b` are SQL
    expressions (a, b > 0); P(K <= k) is `beta_binomial_tail_sql(n - k, n, b, a)`, the
    other kind's.

    DuckDB has no incomplete beta function, so the probabilities are summed from lgamma,
    over the shorter of the tail and its complement where that is at most EXACT_TERMS
    counts. Where both are longer (k and n - k both over EXACT_TERMS), the tail on the far
    side of the mean from k is the small one, and its first EXACT_TERMS counts from k
    (k, k + 1, ... above the mean; k - 1, k - 2, ... below it) hold nearly all of it, the
    terms falling away from the mode: above the mean, P(K >= k) is that sum plus a bound
    on the rest (`_beta_binomial_rest_sql`), below it 1 - the sum of P(K <= k - 1)'s
    first terms. Both are at least the exact tail (a p-value too large, never too small)
    and equal to it, to 1e-6, wherever the distribution's sd is small against
    EXACT_TERMS (under ~150); where it is not (n of millions), the bound is loose by
    about the normal tail's (sd / distance)^2 (x1.05-1.15 for tails of 0.01-0.1 at an
    sd of 1,700). No row builds a list of more than EXACT_TERMS terms.

    `log_norm`, where given, names `beta_binomial_log_norm_sql(n, a, b)` computed once per
    row (a column): written out, its five lgamma calls would run for every term."""
    k, n, a, b = (f"({x})" for x in (k, n, a, b))
    norm = f"({log_norm})" if log_norm else beta_binomial_log_norm_sql(n, a, b)

    def pmf(j: str) -> str:
        j = f"({j})"
        return (
            f"exp({norm} - lgamma({j} + 1) - lgamma({n} - {j} + 1)"
            f" + lgamma({j} + {a}) + lgamma({n} - {j} + {b}))"
        )

    def total(first: str, last: str) -> str:
        return f"list_sum(list_transform(range({first}, {last} + 1), lambda _j: {pmf('_j')}))"

    # in DOUBLE: a product of DECIMAL counts (`sum(...) + 0.5`) can overflow DECIMAL(38)
    mean = f"CAST({n} AS DOUBLE) * {a} / ({a} + {b})"
    last = f"{k} + {EXACT_TERMS - 1}"
    return (
        f"CASE WHEN {k} <= 0 THEN 1.0 WHEN {k} > {n} THEN 0.0 "
        f"WHEN {n} - {k} + 1 <= least({k}, {EXACT_TERMS}) THEN least({total(k, n)}, 1) "
        f"WHEN {k} <= {EXACT_TERMS} THEN greatest(1 - {total('0', f'{k} - 1')}, 0) "
        f"WHEN {k} - 1 >= {mean} THEN least({total(k, last)}"
        f" + {_beta_binomial_rest_sql(f'{k} + {EXACT_TERMS}', n, a, b, pmf)}, 1) "
        f"ELSE greatest(1 - {total(f'{k} - {EXACT_TERMS}', f'{k} - 1')}, 0) END"
    )


def _beta_binomial_rest_sql(first: str, n: str, a: str, b: str, pmf) -> str:
    """SQL for an upper bound on P(K >= first), K ~ beta-binomial(n, a, b), from one term
    (`first` <= n + 1; `pmf(j)`: the SQL of P(K = j)). The ratio of consecutive terms,
    P(K = j + 1) / P(K = j) = (n - j) / (n - j - 1 + b) x (j + a) / (j + 1), is a product
    of two factors each monotone in j, so for j in [first, n - 1] it is at most r, the
    product of each factor's larger end; the rest is at most P(K = first) / (1 - r), a
    geometric series. Where r >= 1 (a rising end, a or b under 1), the bound is 1."""
    first = f"({first})"
    j, last = f"CAST({first} AS DOUBLE)", f"(CAST({n} AS DOUBLE) - 1)"

    def ratio(i: str) -> tuple[str, str]:
        return f"({n} - {i}) / ({n} - {i} - 1 + {b})", f"({i} + {a}) / ({i} + 1)"

    (f_first, g_first), (f_last, g_last) = ratio(j), ratio(last)
    r = f"(greatest({f_first}, {f_last}) * greatest({g_first}, {g_last}))"
    return (
        f"CASE WHEN {first} > {n} THEN 0.0 WHEN {first} = {n} THEN {pmf(n)} "
        f"WHEN {r} < 1 THEN {pmf(first)} / (1 - {r}) ELSE 1.0 END"
    )


def beta_binomial_log_norm_sql(n: str, a: str, b: str) -> str:
    """The terms of the beta-binomial's log pmf that do not depend on the count:
    lgamma(n + 1) + lgamma(a + b) - lgamma(a) - lgamma(b) - lgamma(n + a + b). Symmetric
    in a and b, so a kind's tails both ways share it."""
    n, a, b = (f"({x})" for x in (n, a, b))
    return (
        f"(lgamma({n} + 1) - lgamma({n} + {a} + {b})"
        f" + lgamma({a} + {b}) - lgamma({a}) - lgamma({b}))"
    )


def _horner(coefs: list[float], x: str) -> str:
    expr = repr(coefs[-1])
    for c in reversed(coefs[:-1]):
        expr = f"{c!r} + {x} * ({expr})"
    return f"({expr})"


def trend_table_sql(
    *,
    table: str,
    view: str,
    source: str,
    id_col: str,
    time_col: str,
    by: tuple[str, ...],
    grain: str,
    window: int,
    labels: list[str],
    alpha: float,
) -> str:
    """CREATE OR REPLACE TABLE for the trend of `source` joined with the latest scores.

    Parameters, in order: one label per `labels` entry (the n_<label> counts), then the
    list of positive labels and the list of negative labels (a side counts all of its own).

    z_score = (net_index - trailing_mean) / sqrt(V), with V = the trailing variance of
    net_index (floored at SPREAD_FLOOR^2 x s2 x mean(1/volume) of the trailing buckets,
    s2 below) x (1 + 1/n) + the extra sampling variance of this bucket
    over a trailing one. Under "no shift" this bucket is drawn at the trailing rate, so
    its sampling variance is the per-row variance at the trailing window's pooled label
    shares (half a row of each kind added), s2 = (p_pos + p_neg) - (p_pos - p_neg)^2, over
    its volume; the extra is
    s2 x (1/volume - mean(1/volume) of the trailing buckets), never below 0. The bucket's
    own shares would give a one-post bucket (every row one label) a variance of 0.
    p_value is the two-sided t p-value of z_score with n - 1 degrees of freedom; where a
    side is expected fewer than RARE_EXPECTED times in the bucket (volume x its pooled
    share), it is the larger of that and the exact two-sided p-value of the side's count
    that moved (`exact_test` below), so that is_shift = p_value <= alpha keeps its rate.
    The forecast_* columns are NULL here; `forecast_tables.write_forecasts` fills them.
    """
    if grain not in GRAINS:
        raise ValueError(f"grain must be one of {GRAINS}")
    if not MIN_HISTORY <= window <= MAX_WINDOW:
        raise ValueError(f"window must be {MIN_HISTORY} to {MAX_WINDOW}")
    step = f"INTERVAL 1 {grain.upper()}"
    groups = [quote_ident(c) for c in by]
    g_sel = "".join(f"src.{g} AS {g}, " for g in groups)
    g_list = "".join(f"{g}, " for g in groups)
    g_grid = "".join(f"grid.{g}, " for g in groups)
    g_join = "".join(f" AND c.{g} IS NOT DISTINCT FROM grid.{g}" for g in groups)
    part = f"PARTITION BY {', '.join(groups)} " if groups else ""
    counts = "".join(
        f"count(*) FILTER (WHERE label = ?) AS {quote_ident('n_' + sanitize(lab))}, "
        for lab in labels
    )
    filled_counts = "".join(
        f"coalesce(c.{n}, 0) AS {n}, "
        for n in (quote_ident("n_" + sanitize(lab)) for lab in labels)
    )
    shares = "".join(
        f"{quote_ident('n_' + sanitize(lab))} / nullif(volume, 0) "
        f"AS {quote_ident('share_' + sanitize(lab))}, "
        for lab in labels
    )
    w_roll = f"({part}ORDER BY bucket ROWS BETWEEN {window - 1} PRECEDING AND CURRENT ROW)"
    w_trail = f"({part}ORDER BY bucket ROWS BETWEEN {window} PRECEDING AND 1 PRECEDING)"
    w_prev = f"({part}ORDER BY bucket)"
    # the exact tails of `exact_test`: a side's count in the bucket against its trailing rate
    side = {
        s: (f"_{s}", "volume", f"_trail_n_{s} + 0.5", f"_trail_volume - _trail_n_{s} + 1.0")
        for s in ("pos", "neg")
    }

    norms = ", ".join(f"{beta_binomial_log_norm_sql(*side[s][1:])} AS _log_norm_{s}" for s in side)

    def more(s: str) -> str:  # P(K >= this bucket's count)
        return beta_binomial_tail_sql(*side[s], log_norm=f"_log_norm_{s}")

    def fewer(s: str) -> str:  # P(K <= count) = P(the other rows >= volume - count)
        k, n, a, b = side[s]
        return beta_binomial_tail_sql(f"{n} - {k}", n, b, a, log_norm=f"_log_norm_{s}")

    neg_more, pos_fewer, pos_more, neg_fewer = more("neg"), fewer("pos"), more("pos"), fewer("neg")
    return f"""
CREATE OR REPLACE TABLE {quote_ident(table)} AS
WITH joined AS (
    SELECT {g_sel}
           {bucket_sql(grain, f"src.{quote_ident(time_col)}")}
               AS bucket,
           ls.label
    FROM {quote_table(source)} AS src
    JOIN {quote_ident(view)} AS ls ON ls.id = src.{quote_ident(id_col)}
    WHERE ls.label IS NOT NULL AND src.{quote_ident(time_col)} IS NOT NULL
),
counts AS (
    SELECT {g_list}bucket, count(*) AS volume, {counts}
           count(*) FILTER (WHERE list_contains(CAST(? AS VARCHAR[]), label)) AS _pos,
           count(*) FILTER (WHERE list_contains(CAST(? AS VARCHAR[]), label)) AS _neg
    FROM joined
    GROUP BY ALL
),
buckets AS (
    SELECT CAST(unnest(range(CAST(min(bucket) AS TIMESTAMP),
                             CAST(max(bucket) AS TIMESTAMP) + {step}, {step})) AS DATE) AS bucket
    FROM counts
),
grid AS (
    SELECT {g_list}buckets.bucket
    FROM (SELECT DISTINCT {g_list}1 AS _one FROM counts) AS g CROSS JOIN buckets
),
filled AS (
    SELECT {g_grid}grid.bucket,
           coalesce(c.volume, 0) AS volume, {filled_counts}
           coalesce(c._pos, 0) AS _pos, coalesce(c._neg, 0) AS _neg
    FROM grid LEFT JOIN counts AS c ON c.bucket = grid.bucket{g_join}
),
indexed AS (
    SELECT *, {shares}
           (_pos - _neg) / nullif(volume, 0) AS net_index,
           1.0 / nullif(volume, 0) AS _inv_volume
    FROM filled
),
windowed AS (
    SELECT *,
           avg(net_index) OVER {w_roll} AS index_rolling,
           net_index - lag(net_index) OVER {w_prev} AS index_change,
           avg(net_index) OVER {w_trail} AS trailing_mean,
           var_samp(net_index) OVER {w_trail} AS _trail_var,
           count(net_index) OVER {w_trail} AS _trail_n,
           sum(_pos) OVER {w_trail} AS _trail_n_pos,
           sum(_neg) OVER {w_trail} AS _trail_n_neg,
           sum(volume) OVER {w_trail} AS _trail_volume,
           avg(_inv_volume) OVER {w_trail} AS _trail_inv_volume
    FROM indexed
),
shares AS (
    -- pooled shares with half a row of each kind (+1, -1, 0) added (Jeffreys):
    -- a window without a single positive row does not make one impossible
    SELECT *,
           (_trail_n_pos + 0.5) / (_trail_volume + 1.5) AS _trail_pos,
           (_trail_n_neg + 0.5) / (_trail_volume + 1.5) AS _trail_neg
    FROM windowed
),
pooled AS (
    -- per-row variance of the score (+1, 0, -1) at the trailing window's pooled shares
    SELECT *, _trail_pos + _trail_neg - (_trail_pos - _trail_neg) ** 2 AS _trail_row_var
    FROM shares
),
scored AS (
    SELECT *,
           CASE WHEN _trail_n >= {MIN_HISTORY} THEN
               -- prediction error over its standard error: the trailing spread (with the
               -- mean's own error) plus the extra sampling error of a thinner bucket, at
               -- the trailing rate (the null), not at this bucket's own shares
               (net_index - trailing_mean) / nullif(sqrt(
                   greatest(_trail_var, {SPREAD_FLOOR**2!r} * _trail_row_var * _trail_inv_volume)
                   * (1 + 1.0 / _trail_n)
                   + greatest(_trail_row_var * (_inv_volume - _trail_inv_volume), 0)), 0)
           END AS z_score
    FROM pooled
),
t_test AS (
    SELECT *, {t_p_value_sql("z_score", "_trail_n - 1", range(MIN_HISTORY - 1, window))} AS _p_t,
           {norms}
    FROM scored
),
exact_test AS (
    -- A side expected fewer than {RARE_EXPECTED} times in the bucket is a count too small for
    -- the t approximation (at a brand with 1% negative posts, one negative among 20 reads
    -- z = -6.8), so there the count of the side that moved must be surprising too: its
    -- exact tail under the trailing rate, the predictive beta-binomial of the pooled counts
    -- (the marginal of the shares above: a = the side's rows + 1/2, b = the other rows + 1,
    -- half a row for each of the two other kinds). A fall is more negative rows or fewer
    -- positive ones (a rise the mirror); the smaller tail, doubled since the data chose the
    -- direction, is a two-sided p-value like the t one, and p_value is the larger of the
    -- two: is_shift = p_value <= alpha still, and it needs both. Both sides' tails, the
    -- common one's too: with 1 for a side that is not rare, a fall of the positives at a
    -- brand without negatives (P(negatives >= 0) = 1) could never be flagged. The rare
    -- side's tail is a short sum (its count, + 1 terms), the common side's is the
    -- small tail's first {EXACT_TERMS} terms plus a bound on the rest where the shorter sum
    -- would exceed {EXACT_TERMS} terms (`beta_binomial_tail_sql`).
    SELECT *,
           CASE WHEN _p_t IS NOT NULL
                     AND volume * least(_trail_pos, _trail_neg) < {RARE_EXPECTED} THEN
               least(1, 2 * CASE WHEN z_score < 0
                   THEN least({neg_more}, {pos_fewer})
                   ELSE least({pos_more}, {neg_fewer}) END)
           END AS _p_exact
    FROM t_test
)
SELECT {g_list}bucket, volume, {", ".join(quote_ident("n_" + sanitize(lab)) for lab in labels)},
       {", ".join(quote_ident("share_" + sanitize(lab)) for lab in labels)},
       net_index, index_rolling, index_change, trailing_mean, z_score,
       greatest(_p_t, _p_exact) AS p_value,  -- greatest() skips the NULL _p_exact
       coalesce(p_value <= {float(alpha)!r}, false) AS is_shift,
       -- documented columns even without forecasts (--horizon 0), so queries keep working
       CAST(NULL AS DOUBLE) AS forecast_next,
       CAST(NULL AS DOUBLE) AS forecast_low,
       CAST(NULL AS DOUBLE) AS forecast_high
FROM exact_test
ORDER BY {g_list}bucket
"""
