"""`make shift-eval`: how often `is_shift` fires on no change, and how often it finds a shock.

    python -m marketpulse.tools.shift_eval [--data ../shared/data] [--seeds 3] [--out FILE]

The demo's mechanism, many times over: real Amazon review snippets (their human ratings
bucketed at +/-0.5, as the demo's labels) are dealt out to many SIMULATED series x weeks
with a known label mix per series, each week's volume drawn at random. The labels are the
scores: they are written with the runtime's own results writer and the trend table is
built by `marketpulse.trends.run`, so what is measured is the product's SQL.

Series kinds, all in one database per seed:

- steady:   a fixed mix per series (one of the demo's brand mixes); sampling noise only
- wobble:   steady, plus real week-to-week movement (net index sd 0.10 between weeks)
- permuted: the demo's drifting brand (+/-0.01 a week each side, so +/-0.02 of index),
            its weeks shuffled: a real series' levels with no time order left
- one_label: steady, at a mix of almost one label (`ONE_LABEL_MIXES`: 99% positive, 96%
            neutral or 96% negative): a side expected a few times a week or less, a count
            the t p-value alone misread (one post of it gave |z| ~ 7; trends/queries.py)
- shock:    steady, plus one week whose net index moves by `delta` (either sign), as the
            demo's planted Contoso week does (there by about -0.8)

False alarms are flagged buckets per 1,000 bucket checks (buckets with a z_score) of the
four kinds without a shock; detection is the share of planted shock weeks flagged. The
previous rule (abs(z) >= 2 with z = (index - trailing mean) / max(trailing sd, bucket SE))
is recomputed from the same table for comparison.

Exit status 1 when the default alpha misses its nominal rate by a wide margin: on any
no-shock kind above 2 x alpha + 3 binomial standard errors, or on all of them below
alpha / 4 (a threshold that no longer means a rate). The table does not depend on the
machine (seeded); the tool prints the CPU it ran on beside it.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import click
import duckdb
import numpy as np
import pyarrow as pa

from marketpulse import cpu
from marketpulse.errors import MarketpulseError
from marketpulse.results_schema import SCORES, probability_columns
from marketpulse.runtime import results
from marketpulse.tools.demo_data import LABELS, SHARED_COPY, StreamSpec, read_snippets
from marketpulse.tools.options import data_option

NULL_KINDS = ("steady", "wobble", "permuted", "one_label")
# (positive, neutral, negative) mixes of the one_label kind: brands whose posts are almost
# all one label, so that the other side is a count of 0-2 a week (a reviewer's finding:
# the t p-value alone flagged 4.7% of such weeks at alpha 0.01)
ONE_LABEL_MIXES = ((0.99, 0.0, 0.01), (0.02, 0.96, 0.02), (0.01, 0.03, 0.96))
ALPHAS = (0.001, 0.01, 0.05)
START = date(2026, 6, 1)  # a Monday, as the demo's stream
MODEL = "human-labels"


@dataclass(frozen=True)
class EvalConfig:
    snippets: Path
    seeds: int = 3
    weeks: int = 20
    series: int = 300  # per no-shock kind and seed
    shock_series: int = 100  # per shock size and seed
    deltas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.6, 0.8)
    windows: tuple[int, ...] = (4, 8)
    alpha: float = 0.01  # the default of `marketpulse trends --alpha`
    volume: tuple[int, int] = (20, 200)  # mean posts a week per series, log-uniform
    wobble_sd: float = 0.10


def shocked(mix: tuple[float, float, float], delta: float) -> tuple[float, float, float]:
    """Move label mass so that the net index (pos - neg) moves by `delta`: first between
    the two poles (2 points of index per unit), then from neutral (1 point)."""
    pos, neu, neg = mix
    take = abs(delta)
    src, dst = (neg, pos) if delta > 0 else (pos, neg)
    m1 = min(src, take / 2)
    m2 = min(neu, take - 2 * m1)
    src, dst, neu = src - m1, dst + m1 + m2, neu - m2
    return (dst, neu, src) if delta > 0 else (src, neu, dst)


def _series_plan(cfg: EvalConfig, rng: np.random.Generator):
    """(name, kind, delta, shock_week, mixes[weeks x 3], mean volume) per series."""
    base = StreamSpec().base_mix
    plan = []
    kinds = [(k, 0.0) for k in NULL_KINDS for _ in range(cfg.series)]
    kinds += [("shock", d) for d in cfg.deltas for _ in range(cfg.shock_series)]
    for i, (kind, delta) in enumerate(kinds):
        mix = np.tile(base[i % len(base)], (cfg.weeks, 1)).astype(float)
        week = None
        if kind == "one_label":
            mix = np.tile(ONE_LABEL_MIXES[i % len(ONE_LABEL_MIXES)], (cfg.weeks, 1))
        elif kind == "wobble":
            move = rng.normal(0, cfg.wobble_sd / 2, cfg.weeks)
            move = np.clip(move, -mix[:, 0], mix[:, 2])  # shares stay >= 0
            mix[:, 0] += move
            mix[:, 2] -= move
        elif kind == "permuted":
            step = StreamSpec().drift_per_week * rng.choice((-1, 1)) * np.arange(cfg.weeks)
            step = np.clip(step, -mix[:, 0], mix[:, 2])
            mix[:, 0] += step
            mix[:, 2] -= step
            mix = mix[rng.permutation(cfg.weeks)]
        elif kind == "shock":
            week = int(rng.integers(max(cfg.windows), cfg.weeks))
            delta = float(delta * rng.choice((-1, 1)))
            mix[week] = shocked(tuple(mix[week]), delta)
        lo, hi = np.log(cfg.volume[0]), np.log(cfg.volume[1])
        plan.append((f"s{i:05d}", kind, delta, week, mix, float(np.exp(rng.uniform(lo, hi)))))
    return plan


def build_db(path: Path, cfg: EvalConfig, pool: dict[str, list[str]], seed: int) -> None:
    """posts(id, series, posted_at, snippet_id), series_truth, and the results tables."""
    rng = np.random.default_rng(seed)
    plan = _series_plan(cfg, rng)
    # counts[series, week, label] in LABELS order (negative, neutral, positive)
    counts = np.stack(
        [
            rng.multinomial(rng.poisson(mean_volume, cfg.weeks), mix[:, ::-1] / mix.sum(1)[:, None])
            for _, _, _, _, mix, mean_volume in plan
        ]
    )
    flat = counts.reshape(-1)
    s_of, w_of, l_of = (
        np.repeat(np.broadcast_to(a, counts.shape).reshape(-1), flat)
        for a in np.ix_(np.arange(len(plan)), np.arange(cfg.weeks), np.arange(len(LABELS)))
    )
    # a random real snippet of the drawn label for every post
    sizes = np.array([len(pool[lab]) for lab in LABELS])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    every = np.array([sid for lab in LABELS for sid in pool[lab]])
    picks = offsets[l_of] + (rng.random(len(l_of)) * sizes[l_of]).astype(np.int64)
    seconds = rng.integers(0, 7 * 24 * 3600, len(l_of))
    posted = np.datetime64(START, "us") + (w_of * 7 * 24 * 3600 + seconds) * np.timedelta64(1, "s")
    posts = pa.table(
        {
            "id": pa.array(np.arange(1, len(l_of) + 1), pa.int64()),
            "series": pa.array(np.array([p[0] for p in plan])[s_of]),
            "posted_at": pa.array(posted),
            "snippet_id": pa.array(every[picks]),
        }
    )
    truth = [
        (name, kind, abs(delta), START + timedelta(weeks=week) if week is not None else None)
        for name, kind, delta, week, _, _ in plan
    ]
    con = duckdb.connect(str(path))
    try:
        con.register("posts_arrow", posts)
        con.execute("CREATE TABLE posts AS SELECT * FROM posts_arrow")
        con.execute(
            "CREATE TABLE series_truth (series VARCHAR, kind VARCHAR, delta DOUBLE, "
            "shock_bucket DATE)"
        )
        con.executemany("INSERT INTO series_truth VALUES (?, ?, ?, ?)", truth)
        _write_scores(con, posts["id"], np.array(LABELS)[l_of])
    finally:
        con.close()


def _write_scores(con, ids, labels: np.ndarray) -> None:
    """The human labels as one model version's scores, through the runtime's writer."""
    results.prepare(con, SCORES, "BIGINT", list(LABELS))
    model = SimpleNamespace(version=MODEL, labels=list(LABELS), manifest={"labels": list(LABELS)})
    results.register_model(con, model)
    run_id = f"shift-eval-{len(labels)}"
    results.start_run(
        con,
        {"run_id": run_id, "model_version": MODEL, "status": "running", "rows_scored": 0}
        | {"rows_skipped": 0, "rows_failed": 0, "rows_truncated": 0},
    )
    columns = {
        "id": ids,
        "model_version": pa.array(np.full(len(labels), MODEL)),
        "label": pa.array(labels),
        "confidence": pa.array(np.ones(len(labels))),
    }
    for lab, col in zip(LABELS, probability_columns(list(LABELS)), strict=True):
        columns[col] = pa.array((labels == lab).astype(float))
    counts = {"scored": len(labels), "skipped": 0, "failed": 0, "truncated": 0}
    results.write_chunk(con, SCORES, pa.table(columns), run_id, counts)
    results.finish_run(con, run_id, "completed", 0.0)


def measure(path: Path, window: int, alpha: float) -> dict[str, list[int]]:
    """Run the product's trends on `path`; count checks and flags per kind / shock size.

    Returns {key: [checks, flagged at each ALPHAS..., is_shift, previous rule]}, keys
    being the no-shock kinds and 'shock <delta>' (checks = planted weeks).
    """
    from marketpulse.trends import TrendsConfig, run

    table = f"trend_w{window}"
    run(
        TrendsConfig(
            db=path,
            source="posts",
            id_col="id",
            time_col="posted_at",
            by=("series",),
            grain="week",
            window=window,
            alpha=alpha,
            trend_table=table,
            horizon=0,  # forecasts play no part in is_shift
        )
    )
    flags = ", ".join(f"count(*) FILTER (WHERE p_value <= {a!r})" for a in ALPHAS)
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(
            f"""
            WITH t AS (
                SELECT *,
                       -- the rule before calibration, recomputed for comparison
                       (net_index - trailing_mean) / nullif(greatest(
                           stddev_samp(net_index) OVER w,
                           sqrt(((n_positive + n_negative) / volume - net_index ** 2) / volume)
                       ), 0) AS z_prev,
                       count(net_index) OVER w AS n_prev
                FROM {table}
                WINDOW w AS (PARTITION BY series ORDER BY bucket
                             ROWS BETWEEN {window} PRECEDING AND 1 PRECEDING)
            )
            SELECT CASE WHEN s.kind = 'shock' THEN 'shock ' || s.delta ELSE s.kind END,
                   count(*), {flags}, count(*) FILTER (WHERE is_shift),
                   count(*) FILTER (WHERE n_prev >= 3 AND abs(z_prev) >= 2)
            FROM t JOIN series_truth AS s USING (series)
            WHERE t.z_score IS NOT NULL
              AND (s.kind <> 'shock' OR t.bucket = s.shock_bucket)
            GROUP BY ALL
            """
        ).fetchall()
    finally:
        con.close()
    return {r[0]: list(r[1:]) for r in rows}


def evaluate(cfg: EvalConfig, log=lambda msg: None) -> dict:
    snippets = read_snippets(cfg.snippets)
    pool = {lab: [s.snippet_id for s in snippets if s.label == lab] for lab in LABELS}
    totals: dict[int, dict[str, np.ndarray]] = {w: {} for w in cfg.windows}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shift_eval_") as tmp:
        for seed in range(cfg.seeds):
            db = Path(tmp) / f"seed{seed}.duckdb"
            build_db(db, cfg, pool, seed)
            for w in cfg.windows:
                for key, counts in measure(db, w, cfg.alpha).items():
                    totals[w][key] = totals[w].get(key, 0) + np.array(counts)
            db.unlink()
            log(f"{time.perf_counter() - t0:6.1f}s  seed {seed + 1}/{cfg.seeds} done")
    report = {"config": {**asdict(cfg), "snippets": str(cfg.snippets)}, "windows": {}}
    for w, by_key in totals.items():
        rules = [f"p <= {a:g}" for a in ALPHAS] + ["is_shift", "previous abs(z) >= 2"]
        entry = {"checks": {}, "false_alarms_per_1000": {}, "detection": {}}
        for kind in NULL_KINDS:
            c = by_key[kind]
            entry["checks"][kind] = int(c[0])
            entry["false_alarms_per_1000"][kind] = {
                r: round(1000 * float(x) / c[0], 2) for r, x in zip(rules, c[1:], strict=True)
            }
        for d in cfg.deltas:
            c = by_key[f"shock {d}"]
            entry["detection"][f"{d:g}"] = {
                r: round(float(x) / c[0], 3) for r, x in zip(rules, c[1:], strict=True)
            } | {"planted": int(c[0])}
        report["windows"][str(w)] = entry
    report["verdict"] = _verdict(report, cfg)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    return report


def _verdict(report: dict, cfg: EvalConfig) -> list[str]:
    """Problems with the default alpha's false-alarm rate; empty when it holds."""
    problems = []
    a = cfg.alpha
    for w, entry in report["windows"].items():
        rates = {}
        for kind in NULL_KINDS:
            n = entry["checks"][kind]
            rate = entry["false_alarms_per_1000"][kind]["is_shift"] / 1000
            rates[kind] = rate
            ceiling = 2 * a + 3 * (a * (1 - a) / n) ** 0.5
            if rate > ceiling:
                problems.append(
                    f"window {w}, {kind}: {1000 * rate:.1f} false alarms per 1,000 checks, "
                    f"above {1000 * ceiling:.1f} (2 x alpha + 3 SE)"
                )
        if max(rates.values()) < a / 4:
            problems.append(
                f"window {w}: at most {1000 * max(rates.values()):.1f} false alarms per 1,000 "
                f"checks, below alpha / 4 = {250 * a:.1f}: the threshold no longer means a rate"
            )
    return problems


def format_table(report: dict) -> str:
    cfg = report["config"]
    deltas = [f"{d:g}" for d in cfg["deltas"]]
    head = ["window", "rule", *NULL_KINDS, *(f"d={d}" for d in deltas)]
    rows = []
    for w, entry in report["windows"].items():
        for rule in [f"p <= {a:g}" for a in ALPHAS] + ["previous abs(z) >= 2"]:
            label = rule + (" (default)" if rule == f"p <= {cfg['alpha']:g}" else "")
            fa = [f"{entry['false_alarms_per_1000'][k][rule]:.1f}" for k in NULL_KINDS]
            det = [f"{entry['detection'][d][rule]:.0%}" for d in deltas]
            rows.append([w, label, *fa, *det])
    checks = report["windows"][next(iter(report["windows"]))]["checks"]
    planted = report["windows"][next(iter(report["windows"]))]["detection"][deltas[0]]["planted"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(" --- " for _ in head) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        f"{' / '.join(NULL_KINDS)}: false alarms per 1,000 bucket checks "
        f"({', '.join(f'{k} {checks[k]:,}' for k in NULL_KINDS)} checks at window "
        f"{next(iter(report['windows']))}); d=: share of {planted} planted one-week shocks "
        "of that net-index size flagged",
    ]
    return "\n".join(lines)


def machine() -> str:
    return cpu.describe()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@data_option("Shared data folder holding amazon_review_snippets/ground_truth.tsv.")
@click.option(
    "--snippets",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The snippets file itself (e.g. the demo's artifacts/cache copy); overrides --data.",
)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--series",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Series per no-shock kind and seed.",
)
@click.option(
    "--shock-series",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Series per shock size and seed.",
)
@click.option("--weeks", type=click.IntRange(min=10), default=20, show_default=True)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    default=0.01,
    show_default=True,
    help="The alpha whose false-alarm rate decides the exit status.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="artifacts/shift_eval.json",
    show_default=True,
)
def main(data, snippets, seeds, series, shock_series, weeks, alpha, out):
    """Measure shift detection: false alarms per 1,000 checks and detection by shock size.

    Example: python -m marketpulse.tools.shift_eval --seeds 3 --out artifacts/shift_eval.json
    """
    path = snippets or Path(data) / SHARED_COPY
    if not Path(path).is_file():
        raise click.ClickException(
            f"snippets file {path} not found; pass --data with the shared data folder or "
            "--snippets with the file (make demo caches it in artifacts/cache/)"
        )
    cfg = EvalConfig(
        snippets=Path(path),
        seeds=seeds,
        weeks=weeks,
        series=series,
        shock_series=shock_series,
        alpha=alpha,
    )
    try:
        report = evaluate(cfg, log=lambda msg: click.echo(msg, err=True))
    except MarketpulseError as exc:
        raise click.ClickException(str(exc)) from exc
    report["machine"] = machine()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    click.echo(format_table(report))
    click.echo(f"\nmachine: {report['machine']}; wall {report['wall_s']:.0f}s; wrote {out}")
    if report["verdict"]:
        click.echo("FAIL: " + "; ".join(report["verdict"]), err=True)
        raise SystemExit(1)
    click.echo(f"OK: false alarms at alpha {alpha:g} within the rule (see --help of the module)")


if __name__ == "__main__":
    main()
