"""Drivers: the words and phrases behind each flagged shift, in a `trend_drivers` table.

`write_drivers(con, ...)` reads a trend table built by `queries.trend_table_sql`, the
source table's text and the `latest_<scores>` view, and (re)creates one table with a row
per driver of every bucket where `is_shift` is true:

    <by columns>, bucket, direction, rank, term, z, share_of_shift DOUBLE, n_bucket,
    n_trailing, n_direction, examples VARCHAR[], example_ids <id type>[]

How a driver is found, all inside DuckDB (regexp_extract_all, list lambdas, GROUP BY):

- Texts are lower-cased and split into tokens of letters/digits (with inner apostrophes:
  "don't") or $tickers. Unigrams drop a small built-in stopword list, negations and
  one-character tokens; bigrams are adjacent tokens in the original text where neither is
  a stopword, so "not working" and "class action" survive but "the recall" does not.
- Personal data never makes a term, nor a piece of one (the report prints the terms, the
  table keeps them). Every text read, of the whole history too, that may hold any (an @, a
  digit, a dot before a letter: every kind `marketpulse.privacy.find` looks for needs one)
  goes through RE2 patterns (`personal_patterns`: e-mails, URLs, host names with
  presidio's top-level domains, @handles, IBANs, runs of 6 or more digits with separators)
  that caught all privacy.find catches on its labeled set (tests/data/pii_set.jsonl) and
  more: dates, long decimals, ids. Each span becomes `<>`, punctuation to the tokenizer,
  so it is no term and no bigram spans it; a placeholder such as `<EMAIL>` would have left
  the word "email". privacy.find itself (~0.3 ms a text in Python, one thread) runs after
  the terms are chosen, as a check: for each bucket's top `top_words` terms, on the
  bucket's distinct texts that hold the term and may hold personal data, at most FIND_CAP
  (50) of them, the shift's most confident first (the examples), then a fixed
  pseudo-random order. A term that privacy.find takes out of any of them (the term is
  among the text's terms read through the patterns, not once privacy.find's spans are
  marked too) is dropped and the next candidate takes its place (of 2 x `top_words` kept
  in rank order; past them a bucket has fewer drivers). Cost: at most `top_words` x
  FIND_CAP texts a flagged bucket (and as many again for each replaced term), whatever its
  size: run over every candidate text of the flagged buckets it took ~0.3 ms a text (a
  flagged week of 50,000 texts with digits and URLs: 71 s, against 1.2 s now). The
  trade-off: a term is checked on a sample once more than FIND_CAP of its texts may hold
  personal data, so a piece privacy.find alone finds (none on the labeled sets) in only
  a few of a common term's thousands of texts is missed; such a term owes its counts to
  its other texts. A piece repeated in the term's texts, as a shock week's pasted contact
  details are, is in the sample and the term dropped.
- A term counts once per text (`n_*` are numbers of texts), so one post repeating a word
  cannot make it a driver, and the counts read as "posts mentioning it".
- Terms found in fewer than `min_count` texts of the group's whole history are dropped.
- The flagged bucket's texts (all labels) are compared with the texts of the `window`
  buckets before it in the same group by the weighted log-odds ratio with an informative
  Dirichlet prior (Monroe, Colaresi & Quinn 2008, "Fightin' Words", eq. 22):
      delta = log((y_i+a_w)/(n_i+a0-y_i-a_w)) - log((y_j+a_w)/(n_j+a0-y_j-a_w))
      z = delta / sqrt(1/(y_i+a_w) + 1/(y_j+a_w))
  with a_w = a0 * (texts of the group containing w) / (sum of that over the vocabulary)
  and a0 = PRIOR_WEIGHT * (n_i + n_j): the prior weighs as much as the two samples, so a
  group's z does not shrink merely because its history is long.
- A driver must be over-represented (z >= `min_z`, default 1: the z of thousands of terms
  is a ranking, not a test, so the floor only keeps out terms the bucket barely favours),
  lean the shift's way (more of the bucket's texts containing it carry a label of the
  shift's side, `negative` for a falling index, than the opposite one), and its texts must
  account for at least `min_share` (default 0.10) of the shift, `share_of_shift`:
      D = I - T, the shift: the bucket's net index I against the trend table's
          `trailing_mean` T (the mean index of the window's non-empty buckets before it);
      C = v * (x - T) / V, what the v texts containing the term, of net index x, account
          for, V being the bucket's `volume` (the count its net index divides by);
      share_of_shift = C / D.
  I - T is the sum over the bucket's texts of (score - T) / V (score +1, 0 or -1), so C
  adds up exactly over any partition of the bucket's texts and the shares of a partition
  sum to 1. A text holds several terms, so the shares of a bucket's driver rows overlap
  and need not sum to 1. A share can exceed 1 (texts more negative than the fall, offset
  by others) or be negative (texts that held the index up); every text of the shift's side
  counts toward it, ordinary complaints too, and z is what keeps steady topics out.
  Measured against the baseline, a neutral topic new in a negative week (45 neutral texts
  and 1 negative beside 40 negative "screen cracked" ones; index 0 before, -0.353 then) is
  the most over-represented term but accounts for 1/41 of the fall: left out; a second
  cause whose texts are half negative (40 "battery drains" posts, 20 of them negative,
  beside 40 negative "screen cracked" ones) accounts for a third of it: kept. A shift made
  by texts that stopped coming (a promotion's positive posts dying down) has no text to
  show: its steady complaints account for most of the move but are not over-represented,
  so it gets no driver rows; nor does a bucket without a trailing mean or with D = 0
  (neither has a z to be flagged by). Random complaints with no common topic (the demo's
  planted week, 80 posts) get none either: no term's texts reach a tenth of the move.
  Scoring all texts but keeping only terms of the shift's side reads
  better than either alternative: comparing only the shift-labelled texts with all earlier
  texts ranks generic sentiment words ("terrible") first in every shift, and comparing
  shift-labelled texts with earlier shift-labelled texts finds nothing when a shift is a
  rise in ordinary complaints. A concurrent topic of the other side (a promotion during a
  negative week) is over-represented too, but it does not explain the shift, so it is left
  out.
- Drivers rank by z; terms of equal z (the same counts) by share_of_shift, then by name.
- A unigram found only inside one kept bigram ("class" in "class action": same counts) is
  dropped in favour of the phrase.
- `examples` holds the `top_examples` distinct texts of the bucket that contain the term
  and carry the shift's label, the most confident first; `example_ids` holds their source
  ids in the same order. Arrays keep the table one row per driver, printable as is; for
  one row per example: `SELECT ..., unnest(examples) FROM trend_drivers`.

The table is rebuilt on each call (CREATE OR REPLACE), like the trend table it explains,
so a rerun replaces its rows. Identifiers go through `marketpulse.sql`; labels, stopwords,
the token pattern and thresholds are bound parameters.
Working columns inside the query all start with `_`, as no `--by` column may, so a group
column (`n`, `y_i`, ...) can never stand in for one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import duckdb

from marketpulse.errors import MarketpulseError
from marketpulse.sql import quote_ident, quote_table, require_columns, table_columns
from marketpulse.trends.queries import GRAINS, bucket_sql, steps_sql

DRIVER_COLUMNS = (
    "bucket",
    "direction",
    "rank",
    "term",
    "z",
    "share_of_shift",
    "n_bucket",
    "n_trailing",
    "n_direction",
    "examples",
    "example_ids",
)
# The least share of the shift a driver's texts must account for (share_of_shift).
MIN_SHARE = 0.10
# Weight of the prior relative to the compared texts (a0 = PRIOR_WEIGHT * (n_i + n_j)).
PRIOR_WEIGHT = 1.0
# $tickers, runs of letters/digits with inner apostrophes (don't, it's), or punctuation,
# which is matched only so that no bigram spans it ("raised, customer" is not a phrase).
TOKEN_PATTERN = r"\$\p{L}+|[\p{L}\p{N}]+(?:'\p{L}+)*|[^\s\p{L}\p{N}'$-]+"
WORD_PATTERN = r"^[\p{L}\p{N}$]"
# Kept inside bigrams ("not working", "no refund") but never drivers on their own.
NEGATIONS = ("not", "no", "nor", "never", "don't", "doesn't", "didn't", "isn't", "wasn't",
             "won't", "can't", "cannot", "couldn't", "wouldn't", "aren't", "haven't")  # fmt: skip
STOPWORDS = tuple(
    """a about above after again against all also am an and another any are as at be
    because been before being below between both but by can could did do does doing down
    during each even few for from further get got had has have having he her here hers
    herself him himself his how i i'd i'll i'm i've if in into is it it's its itself just
    let's me may might more most much must my myself now of off on once one only or other
    ought our ours ourselves out over own per really same she should so some such than
    that that's the their theirs them themselves then there there's these they they're
    this those though through to too under until up us very via was we we're were what
    when where which while who whom why will with would you you're your yours yourself
    yourselves""".split()
)
# Personal data (see the docstring): the RE2 patterns of `personal_patterns`, one per kind
# below, go over every text that may hold any (an @, a digit or a dot before a letter,
# which every kind privacy.find looks for needs); privacy.find checks the chosen terms on
# such texts. Each span becomes MARK, punctuation to TOKEN_PATTERN.
MAYBE_PERSONAL = r"[@\p{Nd}]|\.\p{L}"
PERSONAL_KINDS = ("EMAIL", "URL", "HOST", "HANDLE", "IBAN", "NUMBER")
MARK = "<>"
NO_MATCH = r"\b\B"  # the patterns bound when no bucket is flagged (no text is read)
# privacy.find is run after the terms are chosen, on at most FIND_CAP texts of each kept
# term (see the module's docstring); the query's working tables, dropped when it is done
FIND_CAP = 50
_FLAGGED = "_marketpulse_driver_flags"
_DOCS = "_marketpulse_driver_docs"
_CANDIDATES = "_marketpulse_driver_candidates"
_DROPPED = "_marketpulse_driver_dropped"
_TEMP_TABLES = (_DROPPED, _CANDIDATES, _DOCS, _FLAGGED)


def write_drivers(
    con: duckdb.DuckDBPyConnection,
    *,
    trend_table: str,
    source: str,
    id_col: str,
    time_col: str,
    text_col: str,
    by: tuple[str, ...],
    grain: str,
    window: int,
    view: str,
    positive: str | Sequence[str],
    negative: str | Sequence[str],
    top_words: int = 10,
    top_examples: int = 3,
    min_count: int = 3,
    min_z: float = 1.0,
    min_share: float = MIN_SHARE,
    drivers_table: str = "trend_drivers",
) -> int:
    """(Re)create `drivers_table` with the drivers of every flagged bucket; return its rows.

    `trend_table` must have been built from the same source, grouping, grain, window and
    sides (`positive`, `negative`: its `is_shift`, `z_score`, `bucket`, `net_index`,
    `trailing_mean` and `volume` are read); `view` is the latest-scores view.
    """
    _check(con, trend_table, source, id_col, time_col, text_col, by, grain, window, view)
    for n, name in ((top_words, "top_words"), (top_examples, "top_examples")):
        if n < 1:
            raise MarketpulseError(f"{name} is {n}; pass 1 or more")
    sql = drivers_sql(
        drivers_table=drivers_table,
        trend_table=trend_table,
        source=source,
        id_col=id_col,
        time_col=time_col,
        text_col=text_col,
        by=by,
        grain=grain,
        window=window,
        view=view,
    )
    params = {
        # a side may be several labels (`very positive` too): lists, each label a str
        "pos": [positive] if isinstance(positive, str) else list(positive),
        "neg": [negative] if isinstance(negative, str) else list(negative),
        "pattern": TOKEN_PATTERN,
        "word": WORD_PATTERN,
        "stop": list(STOPWORDS),
        "negations": list(NEGATIONS),
        "min_count": min_count,
        "prior_weight": PRIOR_WEIGHT,
        "min_z": min_z,
        "min_share": min_share,
        "top_words": top_words,
        "top_examples": top_examples,
    }
    [(flagged,)] = con.execute(
        f"SELECT count(*) FROM {quote_ident(trend_table)} WHERE is_shift"
    ).fetchall()
    # presidio (seconds to load) only when the query will read texts: without a flagged
    # bucket it reads none, and the patterns are never applied
    patterns = personal_patterns() if flagged else (NO_MATCH,) * len(PERSONAL_KINDS)
    params["maybe_personal"] = MAYBE_PERSONAL
    params.update({f"personal_{k}": pattern for k, pattern in enumerate(patterns)})

    def run(name: str) -> None:
        con.execute(sql[name], _bind(sql[name], params))

    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {_DROPPED} (_flag BIGINT, term VARCHAR)")
        for name in ("flags", "docs", "candidates"):
            run(name)
        if flagged:
            _check_found(con, params, top_words)
        run("table")
    finally:
        for table in _TEMP_TABLES:
            con.execute(f"DROP TABLE IF EXISTS {table}")
    return con.execute(f"SELECT count(*) FROM {quote_ident(drivers_table)}").fetchone()[0]


def _bind(sql: str, params: dict) -> dict:
    """The `params` that `sql` names ($name): DuckDB refuses unused named parameters."""
    return {k: v for k, v in params.items() if re.search(rf"\${k}\b", sql)}


def _check_found(con: duckdb.DuckDBPyConnection, params: dict, top_words: int) -> None:
    """Fill the working table of dropped terms, (flag, term): the candidates that
    `privacy.find` takes out of a text that holds them: each bucket's top `top_words` candidates not yet dropped are checked, in
    rounds, until the top holds no unchecked term (a dropped term's place goes to the next
    candidate, checked in the next round). A term's texts checked: the bucket's distinct
    texts that hold it and may hold personal data, at most FIND_CAP, its examples (the
    shift's label, the most confident) first, the rest in a fixed pseudo-random order."""
    checked: set = set()
    while True:
        top = con.execute(
            f"""SELECT _flag, term FROM {_CANDIDATES} AS c
            WHERE NOT EXISTS (SELECT 1 FROM {_DROPPED} AS x WHERE x._flag = c._flag AND x.term = c.term)
            QUALIFY row_number() OVER (PARTITION BY _flag ORDER BY _cand) <= $top_words""",
            {"top_words": top_words},
        ).fetchall()
        new = [pair for pair in top if pair not in checked]
        if not new:
            return
        checked.update(new)
        f, t = zip(*new, strict=True)
        rows = con.execute(
            f"""SELECT c._flag, c.term, d._text
            FROM (SELECT unnest($f) AS _flag, unnest($t) AS term) AS c
            JOIN {_FLAGGED} AS fl ON fl._flag = c._flag
            JOIN {_DOCS} AS d ON d._flag = c._flag AND list_contains(d._terms, c.term)
            WHERE regexp_matches(d._text, $maybe_personal)
            QUALIFY row_number() OVER (
                PARTITION BY c._flag, c.term
                ORDER BY list_contains(fl._dir_labels, d._label) DESC,
                         CASE WHEN list_contains(fl._dir_labels, d._label)
                              THEN d._confidence END DESC NULLS LAST,
                         hash(d._text), d._id) <= $cap""",
            {"f": list(f), "t": list(t), "maybe_personal": MAYBE_PERSONAL, "cap": FIND_CAP},
        ).fetchall()
        texts = sorted({text for _, _, text in rows})
        marked = {text: m for text in texts if (m := mark_personal(text)) != text}
        if not marked:
            continue
        # the terms of the marked texts, read as the query reads every text (the patterns)
        words = f"(SELECT unnest($t) AS _text, {_replace_personal('unnest($m)')} AS _words)"
        query = f"SELECT _text, _terms FROM {_terms_of(words)}"
        bound = _bind(query, {**params, "t": list(marked), "m": list(marked.values())})
        left = dict(con.execute(query, bound).fetchall())
        dropped = {(f, t) for f, t, text in rows if text in left and t not in left[text]}
        if dropped:
            con.executemany(f"INSERT INTO {_DROPPED} VALUES (?, ?)", sorted(dropped))


def mark_personal(text: str | None) -> str | None:
    """`text` with each span `privacy.find` finds replaced by MARK, which the tokenizer
    reads as punctuation: no term, and no bigram spans it (the placeholders of
    `privacy.mask`, `<EMAIL>`, would leave the word "email" behind)."""
    from marketpulse.privacy import find

    if not text:
        return text
    out, last = [], 0
    for span in find(text):
        out += [text[last : span.start], MARK]
        last = span.end
    return "".join([*out, text[last:]])


def personal_patterns() -> tuple[str, ...]:
    """The RE2 patterns the query replaces by MARK in every text it reads, one per
    PERSONAL_KINDS and in that order: a wider net than `privacy.find` (see the module's
    docstring). Without presidio, raises the MarketpulseError that says how to install
    it: the host-name pattern takes the top-level domains of presidio's URL pattern."""
    from marketpulse.privacy import find

    find("")  # presidio's recognizers, or the install hint
    from presidio_analyzer.predefined_recognizers import UrlRecognizer

    tlds = re.findall(r"\(\?:([a-z0-9-]+)\)", UrlRecognizer.BASE_URL_REGEX)
    if len(tlds) < 100:  # presidio rewrote its pattern: stop rather than miss host names
        raise MarketpulseError(
            f"presidio's URL pattern lists {len(tlds)} top-level domains where "
            "trends/drivers.py looks for them; update personal_patterns()"
        )
    w = r"[\p{L}\p{N}_]"
    return (
        # e-mail: first, or the URL pattern would leave its local part (j.doe@<>)
        rf"[\p{{L}}\p{{N}}_!#$%&'*+/=?^`{{|}}~.-]*@{w}+(?:-+{w}+)*(?:\.{w}+(?:-+{w}+)*)+",
        r"(?i)(?:https?://|www\d{0,3}\.)\S+",
        # a host name ending in a top-level domain presidio knows, at the end of a word
        # ("fell.Analysts" is no "fell.an") or before a path
        rf"(?i)\b[a-z0-9][a-z0-9.-]*\.(?:{'|'.join(tlds)})(?:\b|/)\S*",
        r"@[A-Za-z0-9_]{1,15}",
        r"\b[A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,3})?\b",
        # phone and card numbers: 6 or more digits, separators between; dates, long
        # decimals and ids too (2025-03-18, 0.396875)
        r"[+(]?\p{Nd}(?:[\s().\-/]{0,3}\p{Nd}){5,}",
    )


def _check(con, trend_table, source, id_col, time_col, text_col, by, grain, window, view):
    if grain not in GRAINS:
        raise MarketpulseError(f"grain {grain!r} is not supported; pass one of {GRAINS}")
    if window < 1:
        raise MarketpulseError(f"window {window} is too short; pass 1 or more")
    require_columns(con, source, {"--id-col": id_col, "--time-col": time_col})
    require_columns(con, source, {"--text-col": text_col})
    for col in by:
        require_columns(con, source, {"--by": col})
    have = table_columns(con, trend_table)
    need = (*by, "bucket", "volume", "net_index", "trailing_mean", "z_score", "is_shift")
    missing = [c for c in need if c not in have]
    if missing:
        raise MarketpulseError(
            f"trend table {trend_table!r} lacks {', '.join(missing)}; rebuild it with "
            "`marketpulse trends` using the same --by"
        )
    lacking = {"id", "label", "confidence"} - set(table_columns(con, view))
    if lacking:
        raise MarketpulseError(
            f"{view!r} lacks {', '.join(sorted(lacking))}, so it is not a latest-scores view; "
            "pass the view `marketpulse trends` made (latest_<scores table>)"
        )
    for col in by:
        if col.lower() in DRIVER_COLUMNS or col.startswith("_"):  # names ignore case
            raise MarketpulseError(
                f"--by column {col!r} clashes with a drivers column; rename it in a view "
                "and pass that view as --source"
            )


def _terms_of(rows: str) -> str:
    """A subquery: the rows of `rows` plus `_terms`, the distinct terms of their `_words`
    (the text with its personal data marked out).

    Stopwords and punctuation become NULL tokens first, so no bigram spans them.
    """
    return f"""(
    SELECT *, list_distinct(list_concat(
               list_filter(_t, lambda w: length(w) > 1 AND NOT list_contains($negations, w)),
               list_filter(list_transform(range(1, len(_t)), lambda i: _t[i] || ' ' || _t[i + 1]),
                           lambda b: b IS NOT NULL))) AS _terms
    FROM (
        SELECT *, list_transform(
                   regexp_extract_all(replace(lower(_words), '’', ''''), $pattern),
                   lambda w: CASE WHEN regexp_matches(w, $word) AND NOT list_contains($stop, w)
                                  THEN w END) AS _t
        FROM {rows}
    )
)"""


def _replace_personal(text: str) -> str:
    """SQL: `text` with each match of the bound patterns $personal_<k> replaced by MARK."""
    for k in range(len(PERSONAL_KINDS)):
        text = f"regexp_replace({text}, $personal_{k}, '{MARK}', 'g')"
    return text


def drivers_sql(
    *,
    drivers_table: str,
    trend_table: str,
    source: str,
    id_col: str,
    time_col: str,
    text_col: str,
    by: tuple[str, ...],
    grain: str,
    window: int,
    view: str,
) -> dict[str, str]:
    """The statements `write_drivers` runs, in order: "flags", "docs", "candidates" (working
    tables), then "table", the drivers table; named parameters as `write_drivers` binds
    (`$dropped_*`: the (flag, term) pairs privacy.find took out, see `_check_found`)."""
    groups = [quote_ident(c) for c in by]

    def same_group(a: str, b: str) -> str:
        return "".join(f" AND {a}.{g} IS NOT DISTINCT FROM {b}.{g}" for g in groups)

    def cols(alias: str) -> str:
        return "".join(f"{alias}.{g}, " for g in groups)

    def key(alias: str) -> str:
        return f"{cols(alias)}{alias}.bucket"

    g_list = "".join(f"{g}, " for g in groups)
    flag_key = f"{g_list}bucket"
    # The same bucket as queries.trend_table_sql gives each row.
    bucket = bucket_sql(grain, f"src.{quote_ident(time_col)}")
    g_exists = f"WHERE true{same_group('f', 'src')}"
    return {
        "flags": f"""
CREATE OR REPLACE TEMP TABLE {_FLAGGED} AS
SELECT *, row_number() OVER () AS _flag FROM (
    SELECT {g_list}bucket,
           CASE WHEN z_score < 0 THEN 'negative' ELSE 'positive' END AS direction,
           CASE WHEN z_score < 0 THEN $neg ELSE $pos END AS _dir_labels,
           -- the shift D = I - T, as the trend table measured it: the bucket's net index
           -- against the mean of the window's (non-empty) buckets before it. NULL without
           -- a trailing mean or at D = 0 (neither has a z to be flagged by; a share of
           -- D = 0 would be infinite), so such a bucket gets no drivers.
           nullif(net_index - trailing_mean, 0) AS _shift,
           trailing_mean AS _trailing_mean,
           volume AS _volume
    FROM {quote_ident(trend_table)}
    WHERE is_shift
)
""",
        "docs": f"""
CREATE OR REPLACE TEMP TABLE {_DOCS} AS
WITH flags AS (SELECT * FROM {_FLAGGED}),
scored_texts AS (
    -- scored texts of the groups that have a flagged bucket
    SELECT {cols("src")}{bucket} AS bucket,
           src.{quote_ident(id_col)} AS _id, src.{quote_ident(text_col)} AS _text,
           ls.label AS _label, ls.confidence AS _confidence
    FROM {quote_table(source)} AS src
    JOIN {quote_ident(view)} AS ls ON ls.id = src.{quote_ident(id_col)}
    WHERE ls.label IS NOT NULL AND src.{quote_ident(time_col)} IS NOT NULL
      AND src.{quote_ident(text_col)} IS NOT NULL
      AND EXISTS (SELECT 1 FROM flags AS f {g_exists})
),
docs AS (
    -- _words, what the terms are counted from: the RE2 patterns over every text that may
    -- hold personal data (privacy.find comes after the terms are chosen: _check_found)
    SELECT s.*, f._flag,
           CASE WHEN regexp_matches(s._text, $maybe_personal)
                THEN {_replace_personal("s._text")}
                ELSE s._text END AS _words
    FROM scored_texts AS s
    LEFT JOIN flags AS f ON f.bucket = s.bucket{same_group("f", "s")}
)
SELECT * EXCLUDE (_t) FROM {_terms_of("docs")}
""",
        "candidates": f"""
CREATE OR REPLACE TEMP TABLE {_CANDIDATES} AS
WITH flags AS (SELECT * FROM {_FLAGGED}),
window_buckets AS (
    -- the window's buckets before each flagged one, as equi-join keys
    SELECT {g_list}bucket,
           CAST(bucket - {steps_sql(grain, f"unnest(range(1, {int(window) + 1}))")} AS DATE) AS _before
    FROM flags
),
cell AS MATERIALIZED (
    -- texts per group x bucket x term, and how many carry each direction's label
    SELECT {g_list}bucket, term, count(*) AS _n,
           count(*) FILTER (WHERE list_contains($pos, _label)) AS _n_pos,
           count(*) FILTER (WHERE list_contains($neg, _label)) AS _n_neg
    FROM (SELECT {g_list}bucket, _label, unnest(_terms) AS term FROM {_DOCS})
    GROUP BY ALL
),
vocab AS (
    SELECT {g_list}term, sum(_n) AS _c
    FROM cell
    GROUP BY ALL
    HAVING sum(_n) >= $min_count
),
vocab_total AS (
    SELECT {g_list}sum(_c) AS _c_total FROM vocab GROUP BY ALL
),
inside AS (
    SELECT {cols("f")}f.bucket, f._flag, f.direction, c.term, c._n AS _y_i,
           CASE WHEN f.direction = 'negative' THEN c._n_neg ELSE c._n_pos END AS _n_dir,
           CASE WHEN f.direction = 'negative' THEN c._n_pos ELSE c._n_neg END AS _n_opp,
           -- C / D: the term's v texts, of net index x = (_n_pos - _n_neg) / v, account
           -- for C = v * (x - T) / V of the shift D (V = the bucket's volume)
           CAST((c._n_pos - c._n_neg - c._n * f._trailing_mean) / f._volume / f._shift
                AS DOUBLE) AS share_of_shift,
           sum(c._n) OVER (PARTITION BY {key("f")}) AS _n_i
    FROM flags AS f
    JOIN cell AS c ON c.bucket = f.bucket{same_group("c", "f")}
    JOIN vocab AS v ON v.term = c.term{same_group("v", "c")}
),
before AS (
    SELECT {cols("t")}t.bucket, c.term, sum(c._n) AS _y_j
    FROM window_buckets AS t
    JOIN cell AS c ON c.bucket = t._before{same_group("c", "t")}
    JOIN vocab AS v ON v.term = c.term{same_group("v", "c")}
    GROUP BY ALL
),
before_total AS (
    SELECT {flag_key}, sum(_y_j) AS _n_j FROM before GROUP BY ALL
),
prior AS (
    SELECT i.*, coalesce(b._y_j, 0) AS _y_j, coalesce(bt._n_j, 0) AS _n_j,
           $prior_weight * (i._n_i + coalesce(bt._n_j, 0)) AS _a0,
           $prior_weight * (i._n_i + coalesce(bt._n_j, 0)) * v._c / vt._c_total AS _a_w
    FROM inside AS i
    LEFT JOIN before AS b ON b.bucket = i.bucket AND b.term = i.term{same_group("b", "i")}
    LEFT JOIN before_total AS bt ON bt.bucket = i.bucket{same_group("bt", "i")}
    JOIN vocab AS v ON v.term = i.term{same_group("v", "i")}
    JOIN vocab_total AS vt ON true{same_group("vt", "i")}
),
scored AS (
    -- Monroe, Colaresi & Quinn (2008), eq. 22
    SELECT *,
           (ln((_y_i + _a_w) / nullif(_n_i + _a0 - _y_i - _a_w, 0))
            - ln((_y_j + _a_w) / nullif(_n_j + _a0 - _y_j - _a_w, 0)))
           / sqrt(1 / (_y_i + _a_w) + 1 / (_y_j + _a_w)) AS z
    FROM prior
),
kept AS (
    -- Over-represented (z), leaning the shift's way (_n_dir > _n_opp), and accounting for
    -- at least $min_share of the move from the trailing mean (share_of_shift, above).
    SELECT * FROM scored
    WHERE z >= $min_z AND _n_dir > _n_opp AND share_of_shift >= $min_share
),
phrased AS (
    -- a unigram seen only inside a kept bigram reads better as that bigram
    SELECT * FROM kept AS u
    WHERE NOT EXISTS (
        SELECT 1 FROM kept AS b
        WHERE b.bucket = u.bucket{same_group("b", "u")}
          AND contains(b.term, ' ') AND NOT contains(u.term, ' ')
          AND list_contains(string_split(b.term, ' '), u.term)
          AND b._y_i = u._y_i AND b._y_j = u._y_j
    )
),
ranked AS (
    -- candidates in rank order (_cand): the top $top_words of them not dropped by
    -- privacy.find are the drivers; twice as many are kept for the dropped ones' places
    SELECT *, row_number() OVER (
               PARTITION BY {flag_key} ORDER BY z DESC, share_of_shift DESC, term) AS _cand
    FROM phrased
    QUALIFY _cand <= 2 * $top_words
)
SELECT * FROM ranked
""",
        "table": f"""
CREATE OR REPLACE TABLE {quote_ident(drivers_table)} AS
WITH flags AS (SELECT * FROM {_FLAGGED}),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY _flag ORDER BY _cand) AS rank
    FROM {_CANDIDATES} AS c
    WHERE NOT EXISTS (SELECT 1 FROM {_DROPPED} AS x WHERE x._flag = c._flag AND x.term = c.term)
    QUALIFY rank <= $top_words
),
candidates AS (
    -- texts of the flagged buckets that carry the shift's label
    SELECT d.*
    FROM {_DOCS} AS d
    JOIN flags AS f ON f._flag = d._flag AND list_contains(f._dir_labels, d._label)
),
example_texts AS (
    -- one row per distinct text: the demo and real feeds repeat texts
    SELECT {cols("r")}r.bucket, r.term, c._text, c._id, c._confidence
    FROM ranked AS r
    JOIN (
        SELECT {g_list}bucket, _text, _id, _confidence, unnest(_terms) AS term
        FROM candidates
    ) AS c ON c.bucket = r.bucket AND c.term = r.term{same_group("c", "r")}
    QUALIFY row_number() OVER (
        PARTITION BY {key("r")}, r.term, c._text ORDER BY c._confidence DESC, c._id) = 1
),
examples AS (
    SELECT {flag_key}, term,
           list(_text ORDER BY _confidence DESC, _id) AS examples,
           list(_id ORDER BY _confidence DESC, _id) AS example_ids
    FROM (
        SELECT * FROM example_texts
        QUALIFY row_number() OVER (
            PARTITION BY {flag_key}, term ORDER BY _confidence DESC, _id) <= $top_examples
    )
    GROUP BY ALL
)
SELECT {cols("r")}r.bucket, r.direction, CAST(r.rank AS INTEGER) AS rank, r.term,
       r.z, r.share_of_shift, CAST(r._y_i AS BIGINT) AS n_bucket,
       CAST(r._y_j AS BIGINT) AS n_trailing, CAST(r._n_dir AS BIGINT) AS n_direction,
       e.examples, e.example_ids
FROM ranked AS r
LEFT JOIN examples AS e ON e.bucket = r.bucket AND e.term = r.term{same_group("e", "r")}
ORDER BY {cols("r")}r.bucket, r.rank
""",
    }
